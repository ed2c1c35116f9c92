"""End-to-end training speed of MemoryPPO with a sparse external memory, small against large.

Usage: OMP_NUM_THREADS=1 python scripts/bench_large_memory.py [--rounds 5] [--timesteps 2048]
           [--memory-units 1024 65536] [--cores dnc ntm] [--profile N]

Each configuration is one ``MemoryPPO("DNCPolicy" | "NTMPolicy", BinaryCopy-v0)`` with
``sparse_top_k=8``, W=16 and the default separate critic core; a round times ``learn(timesteps)``
(rollout and training together, after a warm-up ``learn`` that builds the kernels) for each
configuration in turn, so noise from other processes hits them alike. The report is the median
steps/s of each, their spread, and the ratio of each memory size's median to the smallest's.
``--profile N`` runs cProfile over one ``learn`` at N slots instead, and prints the top entries.
"""

import argparse
import cProfile
import pstats
import statistics
import time
from typing import Any

import torch
from stable_baselines3.common.env_util import make_vec_env

import sb3_memory.envs  # noqa: F401  (registers the tasks)
from sb3_memory import MemoryPPO

ENV_ID = "sb3_memory/BinaryCopy-v0"


def make_model(core: str, memory_units: int, top_k: int, n_envs: int, n_steps: int, seed: int = 0) -> MemoryPPO:
    env = make_vec_env(ENV_ID, n_envs=n_envs, seed=seed)
    policy_kwargs: dict[str, Any] = dict(memory_units=memory_units, memory_unit_size=16, sparse_top_k=top_k, controller_dim=64)
    return MemoryPPO(
        f"{core.upper()}Policy",
        env,
        n_steps=n_steps,
        batch_size=n_steps * n_envs // 4,
        n_epochs=2,
        sequence_length=32,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device="cpu",
    )


def steps_per_second(model: MemoryPPO, timesteps: int) -> float:
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    return timesteps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", nargs="+", default=["dnc"], choices=["dnc", "ntm"])
    parser.add_argument("--memory-units", nargs="+", type=int, default=[1024, 65536])
    parser.add_argument("--sparse-top-k", type=int, default=8)
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--timesteps", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=int, help="cProfile one learn() of the first core at this many slots")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.profile is not None:
        model = make_model(args.cores[0], args.profile, args.sparse_top_k, args.n_envs, args.n_steps)
        model.learn(args.n_steps * args.n_envs)  # builds the kernels
        profiler = cProfile.Profile()
        profiler.enable()
        model.learn(args.timesteps, reset_num_timesteps=False)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return

    configs = [(core, n) for core in args.cores for n in args.memory_units]
    models = {config: make_model(*config[:2], args.sparse_top_k, args.n_envs, args.n_steps) for config in configs}
    for model in models.values():
        model.learn(args.n_steps * args.n_envs)  # warm-up: kernels built, first pages mapped
    rates: dict[tuple[str, int], list[float]] = {config: [] for config in configs}
    for round_index in range(args.rounds):
        order = configs if round_index % 2 == 0 else configs[::-1]
        for config in order:
            rates[config].append(steps_per_second(models[config], args.timesteps))
        print(f"round {round_index + 1}: " + ", ".join(f"{c} N={n} {rates[(c, n)][-1]:.1f}" for c, n in configs))

    print(f"\nsteps/s over learn({args.timesteps}), {args.rounds} rounds, K={args.sparse_top_k}, {args.n_envs} envs")
    for core in args.cores:
        smallest = min(args.memory_units)
        base = statistics.median(rates[(core, smallest)])
        for n in args.memory_units:
            values = rates[(core, n)]
            median = statistics.median(values)
            print(
                f"{core} N={n:>6}: median {median:7.1f} (min {min(values):.1f}, max {max(values):.1f}); "
                f"ratio to N={smallest}: 1/{base / median:.1f}"
            )


if __name__ == "__main__":
    main()

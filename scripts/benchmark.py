"""Training throughput of MemoryPPO against sb3-contrib's RecurrentPPO, on the zoo configs.

For each env, every model is built by rl-zoo3's own ExperimentManager from ``sb3_memory/zoo_configs/``:
``memory_ppo.yml`` with the NTM and DNC policies, and ``ppo_lstm.yml`` (RecurrentPPO). Same env,
n_envs, n_steps, batch_size and epochs; the memory rows run with the default settings (the
native kernels) and, with ``--reference``, also with ``backend='reference'`` (the step-by-step
PyTorch path). Each run is ``model.learn(--steps)`` without evaluations; the algorithms alternate
round by round in one process with one torch thread, so machine noise hits them alike. Reported:
median steps/second over rounds, each ratio to RecurrentPPO, the split between rollout collection
and training, and the native kernels' one-time compilation (first use on a machine, measured in
a fresh process with an empty cache) as a share of each config's full budget.

``--separate-critic`` gives every agent a critic core of its own, both libraries' default (the task
configs share one core between actor and critic): the cost a user of the defaults pays.

Usage: python scripts/benchmark.py [--envs ENV ...] [--steps 16384] [--rounds 3] [--reference] [--separate-critic]
"""

import argparse
import contextlib
import functools
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable

import torch
import yaml
from rl_zoo3.exp_manager import ExperimentManager

import sb3_memory.zoo  # noqa: F401  (registers memory_ppo, the envs and CartPoleNoVel-v1)
from sb3_memory.zoo import _evaluate_policy_kwargs
from sb3_memory.zoo_configs import config_path

ENVS = [
    "CartPoleNoVel-v1",
    "sb3_memory/Copy-v0",
    "sb3_memory/RepeatAfterDelay-v0",
    "sb3_memory/AssociativeRecall-v0",
    "sb3_memory/PassiveTMaze-v0",
]
BASELINE = "RecurrentPPO"


def variants(reference: bool, separate_critic: bool = False) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """name -> (zoo algorithm, config file, policy_kwargs overrides or a policy name)"""
    # Both libraries' defaults: a critic core (LSTM) of its own, as rl-zoo3's tuned CartPoleNoVel entries have.
    baseline_critic = dict(shared_lstm=False, enable_critic_lstm=True) if separate_critic else {}
    memory_critic = dict(critic_memory="separate") if separate_critic else {}
    table = {BASELINE: ("ppo_lstm", "ppo_lstm.yml", baseline_critic)}
    for suffix, backend in [("", {})] + ([(" (reference)", {"backend": "reference"})] if reference else []):
        extra = {**memory_critic, **backend}
        table[f"MemoryPPO-NTM{suffix}"] = ("memory_ppo", "memory_ppo.yml", {"policy": "NTMPolicy", **extra})
        table[f"MemoryPPO-DNC{suffix}"] = ("memory_ppo", "memory_ppo.yml", {"policy": "DNCPolicy", **extra})
    return table


def config_entry(config: str, env_id: str) -> dict[str, Any]:
    return yaml.safe_load(config_path(config).read_text())[env_id]


def make_model(algo: str, config: str, env_id: str, overrides: dict[str, Any], log_folder: str) -> Any:
    """The model exactly as ``sb3_memory.zoo train`` builds it from the config (no callbacks)."""
    overrides = dict(overrides)
    hyperparams: dict[str, Any] = {}
    if "policy" in overrides:
        hyperparams["policy"] = overrides.pop("policy")
    if overrides:
        policy_kwargs = _evaluate_policy_kwargs(config_entry(config, env_id).get("policy_kwargs"))
        hyperparams["policy_kwargs"] = {**policy_kwargs, **overrides}
    manager = ExperimentManager(
        argparse.Namespace(), algo, env_id, log_folder, config=str(config_path(config)),
        hyperparams=hyperparams, seed=0, verbose=0, eval_freq=-1, save_freq=-1,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # rl-zoo3 prints every hyperparameter
        model, _ = manager.setup_experiment()
    return model


def run(make: Callable[[], Any], steps: int) -> dict[str, float]:
    model = make()
    timings: dict[str, float] = defaultdict(float)

    def timed(name: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            timings[name] += time.perf_counter() - start
            return result

        return wrapper

    model.collect_rollouts = timed("rollout", model.collect_rollouts)
    model.train = timed("train", model.train)
    start = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - start
    model.get_env().close()
    return dict(steps_per_second=model.num_timesteps / wall, rollout=timings["rollout"] / wall, train=timings["train"] / wall)


def cold_compile_seconds() -> float:
    """Wall time of the native kernels' first build, in a fresh process with an empty cache."""
    with tempfile.TemporaryDirectory() as cache:
        code = (
            "import time; t = time.perf_counter(); from sb3_memory.memory import native; "
            "native.load_library(); print(time.perf_counter() - t)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "SB3_MEMORY_CACHE": cache},
            capture_output=True,
            text=True,
            check=True,
        )
        return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=ENVS, choices=ENVS)
    parser.add_argument("--steps", type=int, default=16384, help="steps per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also run the memory agents on the reference path")
    parser.add_argument(
        "--separate-critic",
        action="store_true",
        help="every agent with a critic core of its own (both libraries' default) instead of the configs' critics",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    compile_seconds = cold_compile_seconds()
    table = variants(args.reference, args.separate_critic)
    lines = [
        ("critic cores of their own; " if args.separate_critic else "")
        + f"{args.steps} steps per run, {args.rounds} alternating rounds, 1 thread, medians; "
        f"native kernels' first build on this machine: {compile_seconds:.1f} s",
        "",
        "| env | algorithm | steps/s | x RecurrentPPO | x RecurrentPPO, first build included over the config's budget "
        "| rollout / train |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as logs:
        for env_id in args.envs:
            results: dict[str, list[dict[str, float]]] = defaultdict(list)
            for round_index in range(args.rounds):
                for name, (algo, config, overrides) in table.items():
                    results[name].append(run(functools.partial(make_model, algo, config, env_id, overrides, logs), args.steps))
                    print(
                        f"{env_id} round {round_index + 1} {name}: {results[name][-1]['steps_per_second']:.0f} steps/s",
                        flush=True,
                    )

            def median(name: str, key: str, results: dict[str, list[dict[str, float]]] = results) -> float:
                return statistics.median(r[key] for r in results[name])

            base = median(BASELINE, "steps_per_second")
            budget = float(config_entry("memory_ppo.yml", env_id)["n_timesteps"])
            for name in table:
                speed = median(name, "steps_per_second")
                native_row = name != BASELINE and "reference" not in name
                first_use = budget / (budget / speed + compile_seconds) / base if native_row else speed / base
                lines.append(
                    f"| {env_id} | {name} | {speed:.0f} | {speed / base:.2f} | {first_use:.2f} | "
                    f"{median(name, 'rollout'):.0%} / {median(name, 'train'):.0%} |"
                )
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

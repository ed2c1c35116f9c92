"""Throughput of MemoryPPO against sb3-contrib's RecurrentPPO on CartPoleNoVel-v1.

All runs use rl-zoo3's tuned ``ppo_lstm`` hyperparameters for CartPoleNoVel-v1 (8 envs,
n_steps 32, batch 256, 20 epochs, VecNormalize, 64-unit recurrent controller, pi/vf [64]) and
the same number of steps; the algorithms alternate round by round in one process with one
torch thread, so machine noise hits them alike. Reported: median steps/second over rounds,
the time split between rollout collection and training, the rollout buffer's bytes per
transition (every array it holds), and each ratio to RecurrentPPO.

Usage: python scripts/benchmark.py [--steps 16384] [--rounds 3] [--compile] [--only NAME ...]
"""

import argparse
import statistics
import time
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import rl_zoo3.import_envs  # noqa: F401  (registers CartPoleNoVel-v1)
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from sb3_memory import MemoryPPO

ENV_ID = "CartPoleNoVel-v1"
PPO_KWARGS = dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0)
SHARED_POLICY_KWARGS = dict(ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[64], vf=[64]))


def algorithms(compile_step: bool) -> dict[str, Callable[[Any], Any]]:
    def memory_ppo(policy: str, **core: Any) -> Callable[[Any], Any]:
        return lambda env: MemoryPPO(
            policy, env, **PPO_KWARGS, seed=0, policy_kwargs=dict(**SHARED_POLICY_KWARGS, controller_dim=64, **core)
        )

    makers = {
        "RecurrentPPO": lambda env: RecurrentPPO(
            "MlpLstmPolicy",
            env,
            **PPO_KWARGS,
            seed=0,
            policy_kwargs=dict(**SHARED_POLICY_KWARGS, lstm_hidden_size=64, enable_critic_lstm=True),
        ),
    }
    for suffix, extra in [("", {})] + ([("+compile", dict(compile_step=True))] if compile_step else []):
        makers[f"MemoryPPO-LSTM{suffix}"] = memory_ppo("LSTMPolicy", **extra)
        makers[f"MemoryPPO-NTM{suffix}"] = memory_ppo("NTMPolicy", memory_units=32, memory_unit_size=16, **extra)
        makers[f"MemoryPPO-DNC{suffix}"] = memory_ppo(
            "DNCPolicy", memory_units=32, memory_unit_size=16, num_read_heads=2, **extra
        )
    return makers


def buffer_bytes_per_transition(buffer: Any) -> float:
    """Every NumPy array and tensor the rollout buffer holds, per stored transition."""
    total = 0
    for value in vars(buffer).values():
        for item in value.values() if isinstance(value, dict) else [value]:
            if isinstance(item, np.ndarray):
                total += item.nbytes
            elif isinstance(item, torch.Tensor):
                total += item.element_size() * item.nelement()
    return total / (buffer.buffer_size * buffer.n_envs)


def run(make_model: Callable[[Any], Any], steps: int) -> dict[str, float]:
    env = VecNormalize(make_vec_env(ENV_ID, n_envs=8, seed=0))
    model = make_model(env)
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
    env.close()
    return dict(
        steps_per_second=model.num_timesteps / wall,
        rollout_share=timings["rollout"] / wall,
        train_share=timings["train"] / wall,
        bytes_per_transition=buffer_bytes_per_transition(model.rollout_buffer),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compile", action="store_true", help="also run the cores with compile_step=True (compile time included)"
    )
    parser.add_argument("--only", nargs="*", help="subset of the algorithm names")
    args = parser.parse_args()
    torch.set_num_threads(1)
    makers = algorithms(args.compile)
    names = [name for name in makers if not args.only or name in args.only or name == "RecurrentPPO"]
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    for round_index in range(args.rounds):
        for name in names:
            results[name].append(run(makers[name], args.steps))
            print(f"round {round_index + 1} {name}: {results[name][-1]['steps_per_second']:.0f} steps/s", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    base_speed, base_bytes = median("RecurrentPPO", "steps_per_second"), median("RecurrentPPO", "bytes_per_transition")
    print(f"\n{ENV_ID}, {args.steps} steps x {args.rounds} rounds, 1 thread, medians")
    print("| algorithm | steps/s | x RecurrentPPO | rollout | train | buffer bytes/transition | x RecurrentPPO |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        speed, nbytes = median(name, "steps_per_second"), median(name, "bytes_per_transition")
        print(
            f"| {name} | {speed:.0f} | {speed / base_speed:.2f} | {median(name, 'rollout_share'):.0%} | "
            f"{median(name, 'train_share'):.0%} | {nbytes:.0f} | {nbytes / base_bytes:.2f} |"
        )


if __name__ == "__main__":
    main()

"""MemoryDQN against SB3's DQN (with and without frame stacking) on the passive T-maze.

Every agent gets the same budget, environments, learning rate, target updates, exploration schedule,
n-step return and transitions per gradient step (MemoryDQN: ``batch_size`` sequences of
``train_length`` trained steps; DQN: ``batch_size * train_length`` transitions). Each run is scored
by the mean return of 100 deterministic episodes of its final model (optimal 1, a memoryless policy
0.5 in expectation); wall time and steps/s are per run, one torch thread. Results go to a JSON file
per run (resumable) and a Markdown table.

Usage (``scripts/off_policy.py`` runs :func:`main`):
    python scripts/off_policy.py --seeds 0 1 2 --out runs/off_policy --table docs/results/off_policy_tmaze.md
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

from sb3_memory import MemoryDQN
from sb3_memory.experiments.compare import t_interval, welch_p_value

ENV = "sb3_memory/PassiveTMaze-v0"
COMMON: dict[str, Any] = dict(
    learning_rate=5e-4, buffer_size=50_000, learning_starts=2000, train_freq=4, gradient_steps=1,
    target_update_interval=2000, exploration_fraction=0.3, exploration_final_eps=0.05, gamma=0.99, n_steps=3,
)  # fmt: skip
SEQUENCES, TRAIN_LENGTH, BURN_IN = 32, 8, 4
CORE = dict(memory_units=16, memory_unit_size=8, controller_dim=32)
#: name -> (memory policy or None for DQN, frames stacked)
AGENTS: dict[str, tuple[Any, int]] = {
    "MemoryDQN-NTM": ("NTMPolicy", 1),
    "MemoryDQN-DNC": ("DNCPolicy", 1),
    "MemoryDQN-LSTM": ("LSTMPolicy", 1),
    "DQN": (None, 1),
    "DQN, 4 frames stacked": (None, 4),
}


def make_env(seed: int, corridor_length: int, n_envs: int, frames: int) -> VecEnv:
    env = make_vec_env(ENV, n_envs=n_envs, seed=seed, env_kwargs=dict(corridor_length=corridor_length))
    return VecFrameStack(env, frames) if frames > 1 else env


def run_one(agent: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    path = args.out / f"{agent.replace(' ', '_').replace(',', '')}_L{args.corridor_length}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    policy, frames = AGENTS[agent]
    env = make_env(seed, args.corridor_length, 8, frames)
    if policy is None:
        model: Any = DQN("MlpPolicy", env, batch_size=SEQUENCES * TRAIN_LENGTH, seed=seed, **COMMON)
    else:
        core = CORE if policy != "LSTMPolicy" else dict(controller_dim=CORE["controller_dim"])
        model = MemoryDQN(
            policy, env, batch_size=SEQUENCES, burn_in=BURN_IN, train_length=TRAIN_LENGTH, seed=seed,
            policy_kwargs=core, **COMMON,
        )  # fmt: skip
    start = time.perf_counter()
    model.learn(args.steps)
    wall = time.perf_counter() - start
    eval_env = make_env(seed + 1000, args.corridor_length, 1, frames)
    score, _ = evaluate_policy(model, eval_env, n_eval_episodes=100, deterministic=True)
    assert isinstance(score, float)
    result = dict(agent=agent, seed=seed, steps=args.steps, score=score, wall_seconds=wall)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    print(f"{agent} seed {seed}: {score:.2f} in {wall:.0f} s", flush=True)
    return result


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# MemoryDQN on the passive T-maze",
        "",
        f"Made by `python scripts/off_policy.py {' '.join(sys.argv[1:])}`.",
        f"{ENV}, corridor_length={args.corridor_length}, {args.steps} steps, 8 envs; score: mean return of 100 "
        "deterministic episodes of the final model (optimal 1, memoryless 0.5 in expectation); ± half-width of the "
        "95% t-interval over seeds; vs DQN: difference and Welch's p; solved: seeds scoring >= 0.95.",
        "",
        "| agent | seeds | score | per seed | vs DQN | solved | wall (s) | steps/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dqn = [r["score"] for r in results if r["agent"] == "DQN"]
    for agent in AGENTS:
        runs = [r for r in results if r["agent"] == agent]
        if not runs:
            continue
        scores = [r["score"] for r in runs]
        mean, half = t_interval(scores)
        versus = "-" if agent == "DQN" or len(dqn) < 2 else f"{mean - np.mean(dqn):+.2f} (p={welch_p_value(scores, dqn):.3f})"
        wall = float(np.median([r["wall_seconds"] for r in runs]))
        solved = sum(score >= 0.95 for score in scores)
        per_seed = ", ".join(f"{score:.2f}" for score in scores)
        lines.append(
            f"| {agent} | {len(runs)} | {mean:.2f} ± {half:.2f} | {per_seed} | {versus} | {solved}/{len(runs)} "
            f"| {wall:.0f} | {args.steps / wall:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--corridor-length", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs", "off_policy"))
    parser.add_argument("--table", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = [run_one(agent, seed, args) for agent in args.agents for seed in args.seeds]
    text = table(results, args)
    print(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)


if __name__ == "__main__":
    main()

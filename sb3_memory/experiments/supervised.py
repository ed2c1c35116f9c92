"""The memory cores trained on the tasks' optimal actions: how fast could they learn with full supervision?

Reinforcement learning tells an agent only whether its answer was right. This trains the
recipe's cores (:data:`sb3_memory.experiments.recipe.CORE_SHAPE`: a 128-unit controller,
N=32, W=16) on the same memory tasks with the answer given: cross-entropy on the task's optimal
action (:meth:`sb3_memory.envs.base.MemoryTaskEnv.optimal_action`) at every scored step, the
whole episode in one backpropagation-through-time pass, a linear read-out. It bounds what the
RL agents can show within an episode budget: where the external memory does not learn faster
than the LSTM even with the answers, no RL recipe will make it do so at that budget.

Usage (``scripts/supervised.py`` runs :func:`main`):
    python scripts/supervised.py --env sb3_memory/Copy-v0 --env-kwargs length:10 --episodes 32000
"""

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sb3_memory.envs.base import MemoryTaskEnv
from sb3_memory.envs.kwargs import env_kwarg_argument, parse_env_kwargs
from sb3_memory.experiments.copy_task import CoreWithReadout
from sb3_memory.experiments.recipe import CORE_SHAPE

POLICY_OF_CORE = {"ntm": "NTMPolicy", "dnc": "DNCPolicy", "lstm": "LSTMPolicy"}


def make_task(env_id: str, env_kwargs: Optional[dict[str, Any]] = None) -> MemoryTaskEnv:
    """The unwrapped task env (it must be one of the memory tasks: they know their optimal action)."""
    import sb3_memory.envs  # noqa: F401  (registers the tasks)

    env = gym.make(env_id, **(env_kwargs or {})).unwrapped
    if not isinstance(env, MemoryTaskEnv):
        raise TypeError(f"{env_id} is not one of the memory tasks (sb3_memory/...): it has no optimal action to learn")
    return env


def collect_episodes(
    env: MemoryTaskEnv, count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Play ``count`` episodes with the optimal action (0 where any action is as good).

    :return: observations (T, count, obs_dim) float, labels (T, count) long, and the mask of
        scored steps (T, count) bool, time-major as the cores take them
    """
    steps = env.episode_length
    observations = np.zeros((steps, count, *env.observation_space.shape), dtype=np.float32)
    labels = np.zeros((steps, count), dtype=np.int64)
    scored = np.zeros((steps, count), dtype=bool)
    for episode in range(count):
        observation, _ = env.reset(seed=int(rng.integers(2**31)))
        for t in range(steps):
            observations[t, episode] = observation
            action = env.optimal_action()
            if action is not None:
                labels[t, episode], scored[t, episode] = action, True
            observation, *_ = env.step(np.int64(0 if action is None else action))
    return torch.from_numpy(observations), torch.from_numpy(labels), torch.from_numpy(scored)


def make_model(core: str, input_dim: int, num_actions: int) -> CoreWithReadout:
    """The recipe's core of that name with a linear read-out of action logits."""
    if core not in POLICY_OF_CORE:
        raise ValueError(f"core must be one of {sorted(POLICY_OF_CORE)}, got {core!r}")
    return CoreWithReadout(core, input_dim, num_actions, **CORE_SHAPE[POLICY_OF_CORE[core]])


def accuracy(logits: torch.Tensor, labels: torch.Tensor, scored: torch.Tensor) -> float:
    """Share of scored steps whose most likely action is the label."""
    return float((logits.argmax(dim=-1) == labels)[scored].float().mean())


def train(
    core: str,
    env_id: str,
    env_kwargs: Optional[dict[str, Any]] = None,
    episodes: int = 32_000,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    max_grad_norm: float = 10.0,
    seed: int = 0,
    eval_every: int = 4_000,
    eval_episodes: int = 512,
) -> list[tuple[int, float]]:
    """
    Train one core on fresh episodes; return the curve of (episodes seen, held-out accuracy).

    :param episodes: training episodes in all (``episodes // batch_size`` Adam steps)
    :param eval_every: evaluate after every this many episodes
    """
    torch.manual_seed(seed)
    env = make_task(env_id, env_kwargs)
    num_actions = int(env.action_space.n)
    held_out = collect_episodes(env, eval_episodes, np.random.default_rng([seed, 1]))
    rng = np.random.default_rng([seed, 0])
    model = make_model(core, int(np.prod(env.observation_space.shape)), num_actions)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    curve = []
    for step in range(1, episodes // batch_size + 1):
        observations, labels, scored = collect_episodes(env, batch_size, rng)
        loss = F.cross_entropy(model(observations)[scored], labels[scored])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        seen = step * batch_size
        if seen % eval_every < batch_size:
            with torch.no_grad():
                curve.append((seen, accuracy(model(held_out[0]), held_out[1], held_out[2])))
    return curve


def episodes_to(curve: list[tuple[int, float]], level: float) -> Optional[int]:
    """Episodes seen at the first evaluation at or above ``level`` (None if never)."""
    return next((seen for seen, value in curve if value >= level), None)


def table(curves: dict[str, list[list[tuple[int, float]]]], level: float = 0.9) -> str:
    """Markdown: mean accuracy over seeds at each evaluation, and episodes to ``level`` per seed."""
    checkpoints = [seen for seen, _ in next(iter(curves.values()))[0]]
    header = "| core | " + " | ".join(f"{seen // 1000}k" for seen in checkpoints) + f" | episodes to {level:.0%} (per seed) |"
    lines = [header, "|---|" + "---|" * (len(checkpoints) + 1)]
    for core, runs in curves.items():
        means = np.mean([[value for _, value in run] for run in runs], axis=0)
        reached = [episodes_to(run, level) for run in runs]
        cells = [f"{m:.2f}" for m in means] + [", ".join("-" if r is None else f"{r // 1000}k" for r in reached)]
        lines.append(f"| {core} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, help="a memory task, e.g. sb3_memory/Copy-v0")
    parser.add_argument(
        "--env-kwargs", nargs="*", default=[], type=env_kwarg_argument, help="e.g. length:10 (values as Python literals)"
    )
    parser.add_argument("--cores", nargs="+", default=list(POLICY_OF_CORE), choices=list(POLICY_OF_CORE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=32_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-grad-norm", type=float, default=10.0)
    parser.add_argument("--eval-every", type=int, default=4_000)
    parser.add_argument("--table", type=Path, help="append the table, with this command, to a Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for core in args.cores:
        for seed in args.seeds:
            curve = train(
                core, args.env, env_kwargs, args.episodes, args.batch_size, args.lr, args.max_grad_norm, seed, args.eval_every
            )
            curves.setdefault(core, []).append(curve)
            print(f"{core} seed {seed}: " + " ".join(f"{seen}:{value:.3f}" for seen, value in curve), flush=True)
    task = f"{args.env} {env_kwargs}" if env_kwargs else args.env
    caption = (
        f"{task}: held-out accuracy at the scored steps after k training episodes, mean over seeds {args.seeds} "
        f"(batch {args.batch_size}, Adam lr {args.lr}, gradient norm clipped at {args.max_grad_norm})"
    )
    markdown = table(curves)
    print(f"\n{caption}\n\n{markdown}")
    if args.table:
        command = "python scripts/supervised.py " + shlex.join(sys.argv[1:])
        args.table.parent.mkdir(parents=True, exist_ok=True)
        with args.table.open("a") as file:
            file.write(f"\n## {task}\n\nMade by `{command}`.\n{caption}.\n\n{markdown}\n")


if __name__ == "__main__":
    main()

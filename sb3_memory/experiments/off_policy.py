"""The off-policy memory agents against SB3's (with and without frame stacking).

Three tasks: ``tmaze`` (MemoryDQN against DQN on the passive T-maze), ``repeat`` (the same agents on
RepeatAfterDelay) and ``pendulum`` (MemorySAC against SAC on PendulumNoVel-v1, Pendulum without its
angular velocity). On a task every agent gets the same budget, environments, learning rate, target
updates, exploration, n-step return and transitions per gradient step (a memory agent:
``batch_size`` sequences of ``train_length`` trained steps; SB3's and sb3-contrib's QRDQN:
``batch_size * train_length`` transitions). RecurrentPPO, the on-policy reference, runs with the
task's entry of ``zoo_configs/ppo_lstm.yml``. Each run is scored by the mean return of deterministic
episodes of its final model; wall time and steps/s are per run, one torch thread. Results go to a
JSON file per run (resumable) and a Markdown table.

Usage (``scripts/off_policy.py`` runs :func:`main`):
    python scripts/off_policy.py --seeds 0 1 2 --out runs/off_policy --table docs/results/off_policy_tmaze.md
    python scripts/off_policy.py --task repeat --steps 300000 --table docs/results/off_policy_repeat.md
    python scripts/off_policy.py --task pendulum --seeds 0 1 2 --table docs/results/off_policy_pendulum.md
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3 import DQN, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack, VecNormalize, sync_envs_normalization

from sb3_memory import MemoryDQN, MemorySAC
from sb3_memory.common.callbacks import StopTrainingOnWallClock
from sb3_memory.experiments.compare import print_table, t_interval, welch_p_value

SEQUENCES, TRAIN_LENGTH = 32, 8
DIFFICULTY_TAGS = {"corridor_length": "L", "delay": "D"}  # in result file names
WALL_CLOCK_STEP_CAP = 20  # an equal-time run stops at this many step budgets, if its time has not run out
#: Per task: env, n_envs, evaluation episodes, the score that counts as solved, what every agent
#: shares, the memory agents' burn-in and core, and the agents: name -> (memory policy or None, frames
#: stacked). An agent named "..., library defaults" keeps only the core: the algorithm's defaults;
#: "RecurrentPPO" is sb3-contrib's with its T-maze entry of zoo_configs/ppo_lstm.yml (the on-policy
#: reference; the shared settings above do not apply to it).
TASKS: dict[str, dict[str, Any]] = {
    "tmaze": dict(
        env="sb3_memory/PassiveTMaze-v0",
        env_kwargs={},  # corridor_length comes from --corridor-length
        about="optimal 1, memoryless 0.5 in expectation",
        n_envs=8,
        episodes=100,
        solved=0.95,
        burn_in=4,
        memory=MemoryDQN,
        plain=DQN,
        core=dict(memory_units=16, memory_unit_size=8, controller_dim=32),
        common=dict(
            learning_rate=5e-4,
            buffer_size=50_000,
            learning_starts=2000,
            train_freq=4,
            gradient_steps=1,
            target_update_interval=2000,
            exploration_fraction=0.3,
            exploration_final_eps=0.05,
            gamma=0.99,
            n_steps=3,
        ),
        agents={
            "MemoryDQN-NTM": ("NTMPolicy", 1),
            "MemoryDQN-DNC": ("DNCPolicy", 1),
            "MemoryDQN-LSTM": ("LSTMPolicy", 1),
            "MemoryDQN-NTM, library defaults": ("NTMPolicy", 1),
            "DQN": (None, 1),
            "DQN, 4 frames stacked": (None, 4),
            "QRDQN, 4 frames stacked": ("QRDQN", 4),
            "RecurrentPPO": ("RecurrentPPO", 1),
        },
    ),
    "pendulum": dict(
        env="PendulumNoVel-v1",
        env_kwargs={},
        about="no angular velocity in the observation",
        n_envs=1,
        episodes=10,
        solved=-300.0,
        burn_in=8,
        memory=MemorySAC,
        plain=SAC,
        core=dict(memory_units=16, memory_unit_size=16, controller_dim=64),
        common=dict(learning_rate=1e-3, buffer_size=100_000, learning_starts=1000, n_steps=1),
        agents={
            "MemorySAC-LSTM": ("LSTMPolicy", 1),
            "MemorySAC-NTM": ("NTMPolicy", 1),
            "SAC": (None, 1),
            "SAC, 4 frames stacked": (None, 4),
            "RecurrentPPO": ("RecurrentPPO", 1),
        },
    ),
}
# RepeatAfterDelay at the easy difficulty of the on-policy comparison (docs/results/easy): the
# T-maze's shared settings, three times its budget (pass --steps 300000, the on-policy agents' budget).
TASKS["repeat"] = dict(
    TASKS["tmaze"],
    env="sb3_memory/RepeatAfterDelay-v0",
    env_kwargs={},  # delay comes from --delay
    about="optimal 20, chance 2.5",
    episodes=20,
    solved=18.0,
    agents={name: agent for name, agent in TASKS["tmaze"]["agents"].items() if "library defaults" not in name},
)


def make_env(task: dict[str, Any], seed: int, env_kwargs: dict[str, Any], n_envs: int, frames: int) -> VecEnv:
    import rl_zoo3.import_envs  # noqa: F401  (PendulumNoVel-v1)

    env = make_vec_env(task["env"], n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    return VecFrameStack(env, frames) if frames > 1 else env


def env_kwargs_of(args: argparse.Namespace) -> dict[str, Any]:
    """The task's difficulty: the T-maze's corridor, RepeatAfterDelay's delay (command line)."""
    if args.task == "tmaze":
        return dict(corridor_length=args.corridor_length)
    return dict(delay=args.delay) if args.task == "repeat" else TASKS[args.task]["env_kwargs"]


def ppo_lstm_entry(env_id: str) -> dict[str, Any]:
    """``env_id``'s entry in ``zoo_configs/ppo_lstm.yml``: RecurrentPPO's tuned settings."""
    from sb3_memory.zoo_configs import config_path

    return dict(yaml.safe_load(config_path("ppo_lstm").read_text())[env_id])


def recurrent_ppo_env(task: dict[str, Any], seed: int, env_kwargs: dict[str, Any]) -> VecEnv:
    """RecurrentPPO's training env as its zoo entry asks: the entry's ``n_envs`` and, with ``normalize``,
    rl-zoo3's VecNormalize (its discount is the entry's gamma)."""
    entry = ppo_lstm_entry(task["env"])
    env = make_env(task, seed, env_kwargs, entry.get("n_envs", task["n_envs"]), 1)
    return VecNormalize(env, gamma=entry["gamma"]) if entry.get("normalize") else env


def recurrent_ppo(env_id: str, env: VecEnv, seed: int) -> Any:
    """sb3-contrib's RecurrentPPO with the hyperparameters of ``env_id``'s entry in ``zoo_configs/ppo_lstm.yml``."""
    from sb3_contrib import RecurrentPPO

    from sb3_memory.zoo import _evaluate_policy_kwargs

    entry = ppo_lstm_entry(env_id)
    for key in ("env_kwargs", "n_envs", "n_timesteps", "normalize"):
        entry.pop(key, None)
    policy_kwargs = _evaluate_policy_kwargs(entry.pop("policy_kwargs", None))
    return RecurrentPPO(entry.pop("policy"), env, seed=seed, policy_kwargs=policy_kwargs, **entry)


def evaluation_env(task: dict[str, Any], seed: int, env_kwargs: dict[str, Any], frames: int, train_env: VecEnv) -> VecEnv:
    """One env for the final model's episodes; a normalized training env lends it its (frozen) observation
    statistics, and returns are scored unnormalized."""
    env = make_env(task, seed, env_kwargs, 1, frames)
    if not isinstance(train_env, VecNormalize):
        return env
    env = VecNormalize(env, training=False, norm_obs=train_env.norm_obs, norm_reward=False)
    sync_envs_normalization(train_env, env)
    return env


def run_one(agent: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    task = TASKS[args.task]
    difficulty = "".join(f"_{DIFFICULTY_TAGS[key]}{value}" for key, value in env_kwargs_of(args).items())  # _L5, _D3
    timed = f"@{args.wall_clock:g}s-{args.clock}" if args.wall_clock else ""
    path = args.out / f"{agent.replace(' ', '_').replace(',', '')}{difficulty}{timed}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    policy, frames = task["agents"][agent]
    if policy == "RecurrentPPO":
        env = recurrent_ppo_env(task, seed, env_kwargs_of(args))
    else:
        env = make_env(task, seed, env_kwargs_of(args), task["n_envs"], frames)
    if policy == "RecurrentPPO":
        model: Any = recurrent_ppo(task["env"], env, seed)
    elif policy == "QRDQN":
        from sb3_contrib import QRDQN

        # rl-zoo3's classic-control entries take 10-25 quantiles; the default 200 made a gradient
        # step 0.8 s here (the pairwise quantile loss over a batch of 256).
        model = QRDQN(
            "MlpPolicy", env, batch_size=SEQUENCES * TRAIN_LENGTH, seed=seed,
            policy_kwargs=dict(n_quantiles=25), **task["common"],
        )  # fmt: skip
    elif policy is None:
        model = task["plain"]("MlpPolicy", env, batch_size=SEQUENCES * TRAIN_LENGTH, seed=seed, **task["common"])
    elif agent.endswith("library defaults"):
        model = task["memory"](policy, env, seed=seed, policy_kwargs=task["core"])
    else:
        core = task["core"] if policy != "LSTMPolicy" else dict(controller_dim=task["core"]["controller_dim"])
        model = task["memory"](
            policy, env, batch_size=SEQUENCES, burn_in=task["burn_in"], train_length=TRAIN_LENGTH, seed=seed,
            policy_kwargs=core, **task["common"],
        )  # fmt: skip
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.wall_clock:  # equal time: as many steps as the time allows (at most WALL_CLOCK_STEP_CAP budgets)
        model.learn(WALL_CLOCK_STEP_CAP * args.steps, callback=StopTrainingOnWallClock(args.wall_clock, args.clock))
    else:
        model.learn(args.steps)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    eval_env = evaluation_env(task, seed + 1000, env_kwargs_of(args), frames, env)
    score, _ = evaluate_policy(model, eval_env, n_eval_episodes=task["episodes"], deterministic=True)
    assert isinstance(score, float)
    result = dict(agent=agent, seed=seed, steps=model.num_timesteps, score=score, wall_seconds=wall, cpu_seconds=cpu)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    print(f"{agent} seed {seed}: {score:.2f} in {wall:.0f} s, {model.num_timesteps} steps", flush=True)
    return result


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    task = TASKS[args.task]
    plain = task["plain"].__name__
    what = ", ".join([*(f"{key}={value}" for key, value in env_kwargs_of(args).items()), task["about"]])
    timed = getattr(args, "wall_clock", None)
    budget = f"{timed:g} s of each run's own {args.clock} time (equal time)" if timed else f"{args.steps} steps"
    lines = [
        f"# {task['memory'].__name__} on {task['env']}",
        "",
        f"Made by `python scripts/off_policy.py {shlex.join(sys.argv[1:])}`.",
        f"{task['env']} ({what}), {budget}, {task['n_envs']} env(s); score: mean return of "
        f"{task['episodes']} deterministic episodes of the final model; ± half-width of the 95% t-interval over "
        f"seeds; vs {plain}: difference and Welch's p; solved: seeds scoring >= {task['solved']:g}; wall and CPU: "
        "medians of the runs' own times (CPU where it was recorded).",
        "",
        f"| agent | seeds | score | per seed | vs {plain} | solved | steps | wall (s) | CPU (s) | steps/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if any(r["agent"] == "RecurrentPPO" for r in results):
        lines.insert(
            4,
            "RecurrentPPO runs its entry of `zoo_configs/ppo_lstm.yml` as rl-zoo3 would: its n_envs and, "
            "where the entry asks, VecNormalize (scored on raw returns).",
        )
    dqn = [r["score"] for r in results if r["agent"] == plain]
    for agent in task["agents"]:
        runs = [r for r in results if r["agent"] == agent]
        if not runs:
            continue
        scores = [r["score"] for r in runs]
        mean, half = t_interval(scores)
        versus = "-" if agent == plain or len(dqn) < 2 else f"{mean - np.mean(dqn):+.2f} (p={welch_p_value(scores, dqn):.3f})"
        wall = float(np.median([r["wall_seconds"] for r in runs]))
        timed = [r["cpu_seconds"] for r in runs if "cpu_seconds" in r]
        cpu = f"{np.median(timed):.0f}" if timed else "-"
        steps = float(np.median([r.get("steps", args.steps) for r in runs]))
        rate = float(np.median([r.get("steps", args.steps) / r["wall_seconds"] for r in runs]))
        solved = sum(score >= task["solved"] for score in scores)
        per_seed = ", ".join(f"{score:.2f}" for score in scores)
        lines.append(
            f"| {agent} | {len(runs)} | {mean:.2f} ± {half:.2f} | {per_seed} | {versus} | {solved}/{len(runs)} "
            f"| {steps:.0f} | {wall:.0f} | {cpu} | {rate:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="tmaze", choices=list(TASKS))
    parser.add_argument("--agents", nargs="+", help="default: every agent of the task")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--corridor-length", type=int, default=5, help="tmaze: the corridor's length")
    parser.add_argument("--delay", type=int, default=3, help="repeat: how many steps back the agent must recall")
    parser.add_argument("--wall-clock", type=float, help="train each run for this many seconds instead (equal time)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="--wall-clock's clock (cpu: the run's own)")
    parser.add_argument("--out", type=Path, default=Path("runs", "off_policy"))
    parser.add_argument("--table", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    agents = args.agents or list(TASKS[args.task]["agents"])
    unknown = sorted(set(agents) - set(TASKS[args.task]["agents"]))
    if unknown:
        parser.error(f"no agents {unknown} on {args.task}; it has {list(TASKS[args.task]['agents'])}")
    results = [run_one(agent, seed, args) for agent in agents for seed in args.seeds]
    text = table(results, args)
    print_table(text, args.table)


if __name__ == "__main__":
    main()

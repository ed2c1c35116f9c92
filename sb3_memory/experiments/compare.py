"""Compare memory agents with RecurrentPPO and memoryless PPO on the same tasks, seeds and budgets.

Every run goes through the zoo entry point (``python -m sb3_memory.zoo train``) with the
configs in ``sb3_memory/zoo_configs/`` (shipped with the package), rl-zoo3's evaluation callback (deterministic episodes every
``--eval-freq`` steps) and the same budget for every algorithm of an env. Runs are resumable: a
finished run leaves ``result.json`` in its folder and is skipped next time (so a ``--runs`` folder
holds one budget). The script then writes a Markdown table (final return with a 95% t-interval
over seeds, steps to reach the threshold, wall time, steps/second) and a PNG of learning curves
(mean over seeds, band = min to max).

Tasks with a length (:data:`LENGTH_KNOBS`) are also scored by their final model, at the trained
difficulty and at 2x and 4x its longest length (length generalisation). ``--wall-clock S`` runs
the same algorithms for S seconds each instead of a step budget, in the same ``--runs`` folder
(named ``algo@Ss``): the report then compares each memory agent with the control and
RecurrentPPO at equal steps and at equal time.

Usage (``scripts/compare.py`` runs :func:`main`):
    python scripts/compare.py --envs CartPoleNoVel-v1 --seeds 0 1 2 --budget 50000
    python scripts/compare.py --algos memory_ppo-dnc ppo_lstm --envs sb3_memory/PassiveTMaze-v0 \\
        --env-kwargs corridor_length:10 --budget 100000
    python scripts/compare.py --algos memory_ppo-lstm ppo_lstm --envs sb3_memory/BinaryCopy-v0 --wall-clock 900
    python scripts/compare.py --report-only   # rebuild the table and figure from every finished run in --runs
    python scripts/compare.py --report-only --results docs/results/capacity_3m/runs.jsonl --runs runs/new
    python scripts/compare.py --workers 2     # two runs at a time, as tasks of a local Ray instance
    python scripts/compare.py --ray-address auto --runs /shared/runs   # on a Ray cluster

Beside its table and figure, a report keeps every run it counted in ``runs.jsonl`` (one result a
line: curves, scores, wall time), so a committed report can be rebuilt, or extended with new seeds,
after the ``--runs`` folder is gone (``--results``).

On a cluster every node runs its tasks in the same checkout path and writes to ``--runs``, which
must be a file system all nodes share; the report reads the runs back from there.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from sb3_memory.envs.kwargs import env_kwarg_argument, parse_env_kwargs
from sb3_memory.zoo_configs import config_path

# name -> (zoo algorithm, config file, extra hyperparameters passed with -params, policy_kwargs overrides;
# an override of None removes the key)
_NO_MEMORY = {"memory_units": None, "memory_unit_size": None, "num_read_heads": None}  # LSTMPolicy has no memory
_AUX = ["recall_coef:0.1", "prediction_coef:0.1"]
ALGOS: dict[str, tuple[str, str, list[str], dict[str, Any]]] = {
    "memory_ppo-ntm": ("memory_ppo", "memory_ppo.yml", ["policy:'NTMPolicy'"], {}),
    "memory_ppo-dnc": ("memory_ppo", "memory_ppo.yml", ["policy:'DNCPolicy'"], {}),
    # The control: the same framework, recipe and critic, without the external memory.
    "memory_ppo-lstm": ("memory_ppo", "memory_ppo.yml", ["policy:'LSTMPolicy'"], _NO_MEMORY),
    "memory_ppo-ntm-aux": ("memory_ppo", "memory_ppo.yml", ["policy:'NTMPolicy'", *_AUX], {}),
    "memory_ppo-dnc-aux": ("memory_ppo", "memory_ppo.yml", ["policy:'DNCPolicy'", *_AUX], {}),
    "memory_ppo-lstm-aux": ("memory_ppo", "memory_ppo.yml", ["policy:'LSTMPolicy'", *_AUX], _NO_MEMORY),
    # The value loss trains the core too (an earlier default).
    "memory_ppo-ntm-shared": ("memory_ppo", "memory_ppo.yml", ["policy:'NTMPolicy'"], {"critic_memory": "shared"}),
    # The critic has its own core (the library default; the task entries set "detached").
    "memory_ppo-ntm-separate": ("memory_ppo", "memory_ppo.yml", ["policy:'NTMPolicy'"], {"critic_memory": "separate"}),
    "memory_ppo-dnc-separate": ("memory_ppo", "memory_ppo.yml", ["policy:'DNCPolicy'"], {"critic_memory": "separate"}),
    "memory_ppo-lstm-separate": (
        "memory_ppo",
        "memory_ppo.yml",
        ["policy:'LSTMPolicy'"],
        {**_NO_MEMORY, "critic_memory": "separate"},
    ),
    "memory_a2c-dnc": ("memory_a2c", "memory_a2c.yml", ["policy:'DNCPolicy'"], {}),
    "memory_a2c-lstm": ("memory_a2c", "memory_a2c.yml", ["policy:'LSTMPolicy'"], _NO_MEMORY),
    "ppo_lstm": ("ppo_lstm", "ppo_lstm.yml", [], {}),
    "ppo": ("ppo", "ppo.yml", [], {}),
    # Sparse reads and writes (Rae et al., 2016): 1,024 slots, each step touching 8.
    "memory_ppo-ntm-sparse": (
        "memory_ppo",
        "memory_ppo.yml",
        ["policy:'NTMPolicy'"],
        {"memory_units": 1024, "sparse_top_k": 8},
    ),
    "memory_ppo-dnc-sparse": (
        "memory_ppo",
        "memory_ppo.yml",
        ["policy:'DNCPolicy'"],
        {"memory_units": 1024, "sparse_top_k": 8},
    ),
    # Sparsity alone: the task entry's 64 slots, each step touching 8 (separates K from N).
    "memory_ppo-dnc-sparse-n64": (
        "memory_ppo",
        "memory_ppo.yml",
        ["policy:'DNCPolicy'"],
        {"sparse_top_k": 8},
    ),
    # Csordás and Schmidhuber's (2019) DNC repairs, all three (on the reference path, slower).
    "memory_ppo-dnc-repairs": (
        "memory_ppo",
        "memory_ppo.yml",
        ["policy:'DNCPolicy'"],
        {"content_masks": True, "deallocate": True, "link_sharpness": True},
    ),
}
# The "vs control" column compares a memory agent with the LSTMPolicy agent of the same settings.
CONTROLS = {
    "memory_ppo-ntm": "memory_ppo-lstm",
    "memory_ppo-dnc": "memory_ppo-lstm",
    "memory_ppo-ntm-aux": "memory_ppo-lstm-aux",
    "memory_ppo-dnc-aux": "memory_ppo-lstm-aux",
    "memory_ppo-ntm-separate": "memory_ppo-lstm-separate",
    "memory_ppo-dnc-separate": "memory_ppo-lstm-separate",
    "memory_a2c-dnc": "memory_a2c-lstm",
    "memory_ppo-dnc-repairs": "memory_ppo-lstm",
    "memory_ppo-ntm-sparse": "memory_ppo-lstm",
    "memory_ppo-dnc-sparse": "memory_ppo-lstm",
    "memory_ppo-dnc-sparse-n64": "memory_ppo-lstm",
}
MEMORY_ALGOS = ("memory_ppo", "memory_a2c")
ALGO_ORDER = list(ALGOS)  # table rows, legend and colours (an algorithm keeps its colour in every figure)
BASELINE = "ppo_lstm"  # the "vs RecurrentPPO" column compares with this entry of ALGOS
# Success thresholds for "steps to reach": about 90% of the optimal return (the memory tasks' at
# the difficulty run, from their optimal_return).
THRESHOLDS = {"CartPoleNoVel-v1": 450.0, "PendulumNoVel-v1": -300.0}
MEMORY_TASKS = [
    "sb3_memory/Copy-v0",
    "sb3_memory/RepeatAfterDelay-v0",
    "sb3_memory/AssociativeRecall-v0",
    "sb3_memory/PassiveTMaze-v0",
    "sb3_memory/PassiveTMazeJunction-v0",
    "sb3_memory/BinaryCopy-v0",
    "sb3_memory/BinaryAssociativeRecall-v0",
]
# Tasks with a length: (the knob of the shortest, the knob of the longest). After training, the
# final model is scored (info["bit_accuracy"], else info["is_success"], of deterministic episodes)
# at the trained difficulty and at GENERALISATION_FACTORS times its longest length, never trained.
LENGTH_KNOBS: dict[str, tuple[Optional[str], str]] = {
    "sb3_memory/BinaryCopy-v0": ("min_length", "max_length"),
    "sb3_memory/BinaryAssociativeRecall-v0": ("min_items", "max_items"),
    "sb3_memory/PassiveTMazeJunction-v0": (None, "corridor_length"),
}
GENERALISATION_FACTORS = (2, 4)
# A run at equal wall clock may take this many times its --budget (steps/s differ up to 3x).
WALL_CLOCK_STEP_CAP = 4


def task_name(env: str, env_kwargs: Optional[list[str]] = None) -> str:
    """The env id with the difficulty it runs at, e.g. ``sb3_memory/Copy-v0 length=5``."""
    return " ".join([env, *(f"{key}={value}" for key, value in parse_env_kwargs(env_kwargs).items())])


def threshold_for(env: str, env_kwargs: Optional[list[str]] = None) -> Optional[float]:
    if env in THRESHOLDS:
        return THRESHOLDS[env]
    if env not in MEMORY_TASKS:
        return None
    import gymnasium as gym

    import sb3_memory.envs  # noqa: F401  (registers the memory tasks)

    task = gym.make(env, **parse_env_kwargs(env_kwargs))
    threshold = 0.9 * task.unwrapped.optimal_return  # type: ignore[attr-defined]
    task.close()
    return threshold


def run_label(algo: str, wall_clock: Optional[float] = None, clock: str = "wall") -> str:
    """An algorithm's name, with ``@<seconds>s`` for its runs at equal time (``@<seconds>s-cpu`` on the CPU clock)."""
    if not wall_clock:
        return algo
    return f"{algo}@{wall_clock:g}s" + ("-cpu" if clock == "cpu" else "")


def label_of(result: dict[str, Any]) -> str:
    return run_label(result["algo"], result.get("wall_clock"), result.get("clock", "wall"))


def run_dir(
    root: Path,
    algo: str,
    env: str,
    seed: int,
    env_kwargs: Optional[list[str]] = None,
    wall_clock: Optional[float] = None,
    clock: str = "wall",
) -> Path:
    task = task_name(env, env_kwargs).replace("/", "__").replace(" ", "-")
    return root / run_label(algo, wall_clock, clock) / task / f"seed_{seed}"


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (user + system), where the platform keeps it."""
    try:
        import resource
    except ImportError:  # Windows
        return math.nan
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def length_settings(env: str, env_kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """
    The difficulties a model trained on ``env`` at ``env_kwargs`` is scored at: ``"trained"`` and,
    for each factor k of :data:`GENERALISATION_FACTORS`, ``"kx"``: every episode k times the
    longest trained length (``{}`` for envs without a length knob).
    """
    if env not in LENGTH_KNOBS:
        return {}
    import gymnasium as gym

    import sb3_memory.envs  # noqa: F401  (registers the memory tasks)

    low, high = LENGTH_KNOBS[env]
    task = gym.make(env, **env_kwargs)
    longest = int(getattr(task.unwrapped, high))
    task.close()
    settings: dict[str, dict[str, Any]] = {"trained": dict(env_kwargs)}
    for factor in GENERALISATION_FACTORS:
        knobs = {high: factor * longest} if low is None else {low: factor * longest, high: factor * longest}
        settings[f"{factor}x"] = {**env_kwargs, **knobs}
    return settings


def episode_scores(model: Any, env: str, env_kwargs: dict[str, Any], n_episodes: int, seed: int = 10_000) -> list[float]:
    """
    Per-episode scores of deterministic episodes: ``info["bit_accuracy"]`` where the task gives
    one, else ``info["is_success"]``.
    """
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    import sb3_memory.envs  # noqa: F401

    scores: list[float] = []

    def collect(local_vars: dict[str, Any], _: dict[str, Any]) -> None:
        if local_vars["done"]:
            info = local_vars["info"]
            scores.append(float(info["bit_accuracy"] if "bit_accuracy" in info else info["is_success"]))

    vec_env = make_vec_env(env, n_envs=1, seed=seed, env_kwargs=env_kwargs)
    try:
        evaluate_policy(model, vec_env, n_eval_episodes=n_episodes, deterministic=True, callback=collect)
    finally:
        vec_env.close()
    return scores


def load_final_model(folder: Path, zoo_algo: str) -> Any:
    """The final model of a finished zoo run (not its best_model.zip), on one torch thread."""
    import torch
    from rl_zoo3.utils import ALGOS as ZOO_ALGOS

    from sb3_memory import zoo

    zoo.register()
    torch.set_num_threads(1)
    path = next(p for p in (folder / "zoo").glob("*/*/*.zip") if p.name != "best_model.zip")
    return ZOO_ALGOS[zoo_algo].load(path, device="cpu")


def score_final_model(folder: Path, zoo_algo: str, env: str, env_kwargs: dict[str, Any], n_episodes: int) -> dict[str, float]:
    """Mean :func:`episode_scores` of a finished zoo run's final model at each of :func:`length_settings`."""
    settings = length_settings(env, env_kwargs)
    if not settings:
        return {}
    model = load_final_model(folder, zoo_algo)
    return {name: float(np.mean(episode_scores(model, env, kwargs, n_episodes))) for name, kwargs in settings.items()}


def run_one(root: Path, algo: str, env: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one (algo, env, seed) through the zoo, unless it already finished; return its result."""
    wall_clock, clock = getattr(args, "wall_clock", None), getattr(args, "clock", "wall")
    folder = run_dir(root, algo, env, seed, args.env_kwargs, wall_clock, clock)
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    zoo_algo, config, params, policy_overrides = ALGOS[algo]
    config_file = config_path(config)
    stop = {"seconds": wall_clock, "clock": clock}
    callbacks = [{"sb3_memory.common.callbacks.StopTrainingOnWallClock": stop}] if wall_clock else []
    if policy_overrides or callbacks:
        derived_path = root / "configs" / f"{run_label(algo, wall_clock, clock)}.yml"
        config_file = derived_config(config_file, derived_path, policy_overrides, callbacks)
    command = [
        sys.executable, "-m", "sb3_memory.zoo", "train",
        "--algo", zoo_algo, "--env", env, "-conf", str(config_file),
        "--seed", str(seed), "--log-folder", str(folder / "zoo"),
        "--eval-freq", str(args.eval_freq), "--eval-episodes", str(args.eval_episodes), "--n-eval-envs", "1",
        "--save-freq", "-1", "--verbose", "0",
    ]  # fmt: skip
    if wall_clock:
        command += ["-n", str(WALL_CLOCK_STEP_CAP * (args.budget or config_budget(config_path(config), env)))]
    elif args.budget:
        command += ["-n", str(args.budget)]
    if params:
        command += ["-params", *params]
    if args.env_kwargs:
        command += ["--env-kwargs", *args.env_kwargs]
    folder.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    start, cpu_start = time.perf_counter(), children_cpu_seconds()
    with open(folder / "train.log", "w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    wall, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu_start
    if completed.returncode != 0:
        raise RuntimeError(f"{algo} on {env} (seed {seed}) failed; see {folder / 'train.log'}")
    evaluations = np.load(next((folder / "zoo").glob("*/*/evaluations.npz")))
    timesteps = evaluations["timesteps"]
    result = dict(
        algo=algo,
        env=env,
        env_kwargs=args.env_kwargs or [],
        seed=seed,
        budget=args.budget,
        timesteps=timesteps.tolist(),
        mean_returns=evaluations["results"].mean(axis=1).tolist(),
        wall_seconds=wall,
        cpu_seconds=cpu,
        steps_per_second=float(timesteps[-1]) / wall if len(timesteps) else math.nan,
        wall_clock=wall_clock,
        clock=clock,
        scores=score_final_model(folder, zoo_algo, env, parse_env_kwargs(args.env_kwargs), args.score_episodes),
    )
    result_file.write_text(json.dumps(result))
    return result


def config_budget(config_file: Path, env: str) -> int:
    """The ``n_timesteps`` of a zoo config's entry for ``env``."""
    import yaml

    return int(float(yaml.safe_load(config_file.read_text())[env]["n_timesteps"]))


def derived_config(
    config_file: Path, out_path: Path, policy_overrides: dict[str, Any], callbacks: Optional[list[Any]] = None
) -> Path:
    """
    Write a copy of a zoo config whose ``policy_kwargs`` are updated with ``policy_overrides``
    in every entry (a value of ``None`` removes the key; the rest of each entry is unchanged) and
    return its path.

    Used for the algorithm variants of ``ALGOS``: the committed configs stay as they are.

    :param callbacks: rl-zoo3 ``callback`` items appended to every entry's own
    """
    import yaml

    entries = yaml.safe_load(config_file.read_text())
    for entry in entries.values():
        if callbacks:
            own = entry.get("callback") or []
            entry["callback"] = [*(own if isinstance(own, list) else [own]), *callbacks]
        if not policy_overrides:
            continue
        policy_kwargs = entry.get("policy_kwargs", {})
        updates = {key: value for key, value in policy_overrides.items() if value is not None}
        removed = sorted(key for key, value in policy_overrides.items() if value is None)
        if isinstance(policy_kwargs, dict):
            entry["policy_kwargs"] = {k: v for k, v in {**policy_kwargs, **updates}.items() if k not in removed}
        else:  # a Python expression that rl-zoo3 evaluates
            merged = f"{{**({policy_kwargs.strip()}), **{updates!r}}}"
            entry["policy_kwargs"] = f"{{k: v for k, v in {merged}.items() if k not in {removed!r}}}" if removed else merged
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a private name, then renamed: parallel runs may derive the same config.
    partial = out_path.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.tmp")
    partial.write_text(yaml.safe_dump(entries, sort_keys=False))
    os.replace(partial, out_path)
    return out_path


def print_table(text: str, path: Optional[Path] = None) -> None:
    """Print a Markdown table, and write it to ``path`` too when one is given."""
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval."""
    from scipy import stats

    values_array = np.asarray(values, dtype=float)
    if len(values_array) < 2:
        return float(values_array.mean()), math.nan
    half = stats.t.ppf(0.975, len(values_array) - 1) * values_array.std(ddof=1) / math.sqrt(len(values_array))
    return float(values_array.mean()), float(half)


def welch_p_value(values: list[float], baseline: list[float]) -> float:
    """Two-sided p-value of Welch's t-test that the mean final returns differ (nan if undefined)."""
    from scipy import stats

    if len(values) < 2 or len(baseline) < 2 or (np.std(values) == 0 and np.std(baseline) == 0):
        return math.nan
    return float(stats.ttest_ind(values, baseline, equal_var=False).pvalue)


def steps_to_threshold(result: dict[str, Any], threshold: Optional[float]) -> Optional[int]:
    if threshold is None:
        return None
    return next((int(t) for t, r in zip(result["timesteps"], result["mean_returns"]) if r >= threshold), None)


def versus(finals: list[float], other: list[float]) -> str:
    """Difference of the means, with Welch's p-value; '-' without a comparison."""
    if not other:
        return "-"
    return f"{np.mean(finals) - np.mean(other):+.2f} (p={welch_p_value(finals, other):.3f})"


def _time_of(label: str) -> float:
    """The seconds of an equal-time label (``algo@900s`` or ``algo@900s-cpu``), 0 for a step budget."""
    return float(label.partition("@")[2].removesuffix("-cpu").rstrip("s") or 0)


def _median_seconds(runs: list[dict[str, Any]], clock: str) -> float:
    """The runs' median time on ``clock`` (``nan`` where runs did not record it)."""
    key = "cpu_seconds" if clock == "cpu" else "wall_seconds"
    return float(np.median([r.get(key, math.nan) for r in runs])) if runs else math.nan


def score_row(
    task: str,
    label: str,
    task_results: list[dict[str, Any]],
    control: Optional[str],
    baseline: Optional[str],
    last_steps: int,
) -> Optional[str]:
    """The row of the scores table for one algorithm on one task (``None`` for runs without scores)."""

    def scores_of(of: Optional[str], key: str = "trained") -> list[float]:
        return [r["scores"][key] for r in task_results if label_of(r) == of and key in (r.get("scores") or {})]

    scores = scores_of(label)
    if not scores:
        return None
    algo = label.partition("@")[0]
    score_mean, score_half = t_interval(scores)
    generalisation = " | ".join(
        f"{np.mean(scores_of(label, f'{k}x')):.3f}" if scores_of(label, f"{k}x") else "-" for k in GENERALISATION_FACTORS
    )
    # A step-budget memory agent against the control and RecurrentPPO given its time, where they ran:
    # its median wall or CPU seconds, on the clock those runs were timed by.
    at_time = []
    if "@" not in label and algo.startswith(MEMORY_ALGOS):
        own = [r for r in task_results if label_of(r) == label]
        timed_runs = {label_of(r): r.get("clock", "wall") for r in task_results if r.get("wall_clock")}

        def distance(timed_label: str) -> float:
            gap = abs(_time_of(timed_label) - _median_seconds(own, timed_runs[timed_label]))
            return math.inf if math.isnan(gap) else gap

        timed = sorted(timed_runs, key=distance)
        for other in (CONTROLS.get(algo), BASELINE):
            match = next((t for t in timed if t.partition("@")[0] == other), None)
            if match is not None:
                at_time.append(f"{match}: {versus(scores, scores_of(match))}")
    versus_baseline = "-" if algo == BASELINE else versus(scores, scores_of(baseline))
    return (
        f"| {task} | {label} | {len(scores)} | {last_steps} | {score_mean:.3f} ± {score_half:.3f} "
        f"| {versus(scores, scores_of(control))} | {versus_baseline} | {generalisation} | {'; '.join(at_time) or '-'} |"
    )


RESULTS_FILE = "runs.jsonl"  # beside each report: the runs it counted


def run_key(result: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two results the same run: algorithm, env, difficulty, seed and time budget (with its clock)."""
    return result["algo"], result["env"], tuple(result.get("env_kwargs") or []), result["seed"], label_of(result)


def read_results(paths: list[Path]) -> list[dict[str, Any]]:
    """The results kept in ``runs.jsonl`` files (written by :func:`write_report`)."""
    results = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such results file (a report's {RESULTS_FILE})")
        results += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return results


def merge_results(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results of every group, one per run (:func:`run_key`); a later group's copy of a run wins."""
    merged = {run_key(result): result for group in groups for result in group}
    return list(merged.values())


def write_report(results: list[dict[str, Any]], out: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def task_of(result: dict[str, Any]) -> str:
        return task_name(result["env"], result.get("env_kwargs"))

    def order(label: str) -> tuple[int, float]:
        return ALGO_ORDER.index(label.partition("@")[0]), _time_of(label)

    tasks = sorted({task_of(r) for r in results})
    labels = sorted({label_of(r) for r in results}, key=order)
    lines = [
        "# Memory agents against RecurrentPPO and PPO",
        "",
        f"Made by `{command}`.",
        "Final return: mean of the last evaluation (deterministic episodes) over seeds, ± half-width of the 95% "
        "t-interval. Steps to threshold: median over seeds of the first evaluation at or above it ('-' if a seed "
        "never reached it: count in brackets). Wall time and steps/s: median over seeds, one thread each, process "
        "start-up and evaluations included; CPU (s): the same runs' CPU time. "
        "vs control: difference of the mean final returns from the LSTMPolicy agent of the same algorithm and "
        "settings (the same framework without the external memory), with the p-value of Welch's t-test; "
        "vs RecurrentPPO: the same against sb3-contrib's RecurrentPPO (with 3 seeds only large differences can "
        "reach p < 0.05). An algorithm named `name@Ss` was given S seconds of training instead of a step budget "
        "(equal wall clock; `name@Ss-cpu`: S seconds of its own CPU time, fair where runs shared the machine); its "
        "comparisons are with runs of the same time. "
        "Figure: mean over seeds, band from the lowest to the highest seed (runs with a step budget only).",
        "",
        "| env | algorithm | seeds | steps | final return | vs control | vs RecurrentPPO | threshold "
        "| steps to threshold | wall (s) | CPU (s) | steps/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    score_lines: list[str] = []
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_results = [r for r in results if task_of(r) == task and r["timesteps"]]
        threshold = threshold_for(task_results[0]["env"], task_results[0].get("env_kwargs"))

        def runs_of(label: Optional[str], task_results: list[dict[str, Any]] = task_results) -> list[dict[str, Any]]:
            return [r for r in task_results if label_of(r) == label]

        def finals_of(label: Optional[str]) -> list[float]:
            return [r["mean_returns"][-1] for r in runs_of(label)]

        def same_time(label: str, algo: Optional[str]) -> Optional[str]:
            """``algo``'s label in the same time mode as ``label``."""
            if algo is None:
                return None
            _, at, seconds = label.partition("@")
            return f"{algo}@{seconds}" if at else algo

        for label in labels:
            runs = runs_of(label)
            if not runs:
                continue
            algo = runs[0]["algo"]
            control, baseline = same_time(label, CONTROLS.get(algo)), same_time(label, BASELINE)
            finals = finals_of(label)
            mean, half = t_interval(finals)
            versus_control = versus(finals, finals_of(control))
            versus_baseline = "-" if algo == BASELINE else versus(finals, finals_of(baseline))
            reached = [steps_to_threshold(r, threshold) for r in runs]
            hits = [s for s in reached if s is not None]
            steps = f"{int(np.median(hits))}" if len(hits) == len(runs) else f"- ({len(hits)}/{len(runs)})"
            threshold_text = "-" if threshold is None else f"{threshold:g}"
            wall, speed = np.median([r["wall_seconds"] for r in runs]), np.median([r["steps_per_second"] for r in runs])
            cpu = _median_seconds(runs, "cpu")
            last_steps = int(np.median([r["timesteps"][-1] for r in runs]))
            lines.append(
                f"| {task} | {label} | {len(runs)} | {last_steps} | {mean:.2f} ± {half:.2f} | {versus_control} "
                f"| {versus_baseline} | {threshold_text} | {steps} | {wall:.0f} | {'-' if math.isnan(cpu) else f'{cpu:.0f}'} "
                f"| {speed:.0f} |"
            )
            row = score_row(task, label, task_results, control, baseline, last_steps)
            if row is not None:
                score_lines.append(row)
            if "@" in label:
                continue
            length = min(len(r["timesteps"]) for r in runs)
            x = np.asarray(runs[0]["timesteps"][:length])
            curves = np.asarray([r["mean_returns"][:length] for r in runs])
            centre = curves.mean(axis=0)
            # Matplotlib has 10 cycle colours; past them the colours repeat with a dashed line.
            index = ALGO_ORDER.index(algo)
            color = f"C{index % 10}"
            ax.plot(x, centre, label=algo, color=color, linestyle="-" if index < 10 else "--")
            if len(runs) > 1:
                # With a handful of seeds a t-interval band spills far past the possible returns;
                # the figure shows the range over seeds, the table the interval.
                ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), alpha=0.2, color=color)
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return")
    if score_lines:
        factors = " | ".join(f"{k}x length" for k in GENERALISATION_FACTORS)
        lines += [
            "",
            "## Scores and length generalisation",
            "",
            "Score: the final model's mean `bit_accuracy` (else success) over deterministic episodes at the trained "
            "difficulty, ± half-width of the 95% t-interval over seeds; vs columns as above, on the score. "
            f"{factors}: the same model on episodes whose every sequence is that many times the longest trained "
            "one (never seen in training). At equal time: the memory agent's score against the control and "
            "RecurrentPPO given the time closest to its own median on the same clock (named with their seconds).",
            "",
            f"| env | algorithm | seeds | steps | score | vs control | vs RecurrentPPO | {factors} | at equal time |",
            "|---|---|---|---|---|---|---|" + "---|" * len(GENERALISATION_FACTORS) + "---|",
            *score_lines,
        ]
    # One legend for the figure: an algorithm may be missing from some panels.
    labelled = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    names = sorted(labelled, key=ALGO_ORDER.index)
    # About three names fit across a 5-inch panel; more go on further rows above the plots.
    ncol = max(min(len(names), 3 * len(tasks)), 1)
    rows = -(-len(names) // ncol)
    fig.legend([labelled[n] for n in names], names, loc="upper center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.06 * max(rows, 1) - 0.02))
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "comparison.png", dpi=100)
    plt.close(fig)
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    kept = sorted(results, key=lambda r: (task_of(r), order(label_of(r)), r["seed"]))
    (out / RESULTS_FILE).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


class Progress:
    """One line per finished run: how many are done, running and left, and when all should be done."""

    def __init__(self, total: int, parallel: int) -> None:
        self.total, self.parallel, self.done = total, parallel, 0
        self.started = time.perf_counter()

    def finished(self, result: dict[str, Any]) -> None:
        self.done += 1
        left = self.total - self.done
        running = min(self.parallel, left)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * left  # runs finish at the pace so far
        final = result["mean_returns"][-1] if result["mean_returns"] else math.nan
        print(
            f"[{self.done}/{self.total} done, {running} running, {left - running} waiting, ETA {eta / 60:.1f} min] "
            f"{result['algo']} on {result['env']}, seed {result['seed']}: final {final:.2f}, {result['wall_seconds']:.0f} s",
            flush=True,
        )


def run_all(jobs: list[tuple[str, str, int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    Every (algo, env, seed), one at a time or as Ray tasks of one CPU each (``--workers`` > 1 starts
    a local Ray instance, ``--ray-address`` joins a cluster). Finished runs are read back, not rerun.
    """

    def result_path(job: tuple[str, str, int]) -> Path:
        return run_dir(args.runs, *job, args.env_kwargs, args.wall_clock, args.clock) / "result.json"

    results = [json.loads(path.read_text()) for path in map(result_path, jobs) if path.exists()]
    todo = [job for job in jobs if not result_path(job).exists()]
    # Runs finished before results recorded their budget are taken as they are.
    other_budget = [r for r in results if r.get("budget", args.budget) != args.budget and not args.wall_clock]
    if other_budget:
        found = other_budget[0]

        def named(budget: Optional[int]) -> str:
            return f"--budget {budget}" if budget else "the configs' n_timesteps"

        sys.exit(
            f"{len(other_budget)} finished run(s) in {args.runs} had another budget (e.g. {found['algo']} on "
            f"{found['env']}, seed {found['seed']}: {named(found['budget'])}, not {named(args.budget)}); a finished "
            "run is read back, not rerun: give this budget its own --runs folder"
        )
    if results:
        print(f"{len(results)} of {len(jobs)} runs already finished in {args.runs}")
    if not todo:
        return results
    return results + run_jobs(run_one, [(args.runs, *job, args) for job in todo], args.workers, args.ray_address)


class RunsFailedError(RuntimeError):
    """Some runs of :func:`run_jobs` raised; the others finished (and their results were kept)."""


# Times Ray reruns a task whose worker process died (killed for memory, a lost node); an exception
# raised by the run itself is not retried: it would only raise again.
RAY_TASK_RETRIES = 2


def run_jobs(
    run: Callable[..., dict[str, Any]], jobs: list[tuple[Any, ...]], workers: int = 1, ray_address: Optional[str] = None
) -> list[dict[str, Any]]:
    """
    ``run(*job)`` for every job, one at a time in this process or as Ray tasks of one CPU each
    (``workers`` > 1 starts a local Ray instance, ``ray_address`` joins a cluster), with a
    :class:`Progress` line per finished run. Shared by the experiment harnesses. A run that raises
    does not stop the others: every run goes to its end, then :class:`RunsFailedError` names the
    runs that failed and why (a Ray task whose worker died is rerun up to :data:`RAY_TASK_RETRIES`
    times first).

    :param run: a module-level function (Ray ships it by name) returning a result with the keys
        :class:`Progress` prints (``algo``, ``env``, ``seed``, ``mean_returns``, ``wall_seconds``)
    :param jobs: the arguments of each call
    :param workers: runs at a time on a local Ray instance (1: no Ray)
    :param ray_address: an existing Ray cluster to run on instead (``auto``, ``ray://head:10001``)
    :return: the results, in the order the runs finished
    :raises RunsFailedError: after the other runs finished, if any run raised
    """
    results: list[dict[str, Any]] = []
    failures: list[str] = []

    def failed(job: tuple[Any, ...], error: BaseException) -> None:
        failures.append(f"{job}: {type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}")
        print(f"run {job} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)

    if workers <= 1 and ray_address is None:
        progress = Progress(len(jobs), 1)
        for job in jobs:
            try:
                results.append(run(*job))
            except Exception as error:  # reported with the others at the end
                failed(job, error)
                continue
            progress.finished(results[-1])
    else:
        try:
            import ray
        except ImportError:
            sys.exit("--workers > 1 and --ray-address need Ray: pip install 'sb3-memory[cluster]'")
        if ray_address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=ray_address, log_to_driver=False)
        try:
            # One CPU per run; each run gives its training one torch thread.
            remote_run = ray.remote(num_cpus=1, max_retries=RAY_TASK_RETRIES)(run)
            job_of = {remote_run.remote(*job): job for job in jobs}
            pending = list(job_of)
            progress = Progress(len(jobs), int(ray.cluster_resources().get("CPU", 1)))
            while pending:
                finished, pending = ray.wait(pending, num_returns=1)
                try:
                    results.append(ray.get(finished[0]))
                except Exception as error:  # a run's error, or its worker lost for good
                    failed(job_of[finished[0]], error)
                    continue
                progress.finished(results[-1])
        finally:
            ray.shutdown()
    if failures:
        raise RunsFailedError(
            f"{len(failures)} of {len(jobs)} runs failed (the other {len(results)} finished and were kept; the same "
            "command reruns only what is missing):\n" + "\n".join(failures)
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=[*THRESHOLDS, *MEMORY_TASKS])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=int, help="steps per run (default: the configs' n_timesteps)")
    parser.add_argument("--env-kwargs", nargs="*", type=env_kwarg_argument, help="passed to the zoo (e.g. corridor_length:10)")
    parser.add_argument("--eval-freq", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument(
        "--score-episodes", type=int, default=100, help="episodes per difficulty scoring the final model (length tasks)"
    )
    parser.add_argument(
        "--wall-clock",
        type=float,
        help="train for this many seconds instead of a step budget (at most "
        f"{WALL_CLOCK_STEP_CAP}x the budget): the runs at equal wall clock, named algo@<seconds>s",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what --wall-clock counts: wall time, or the run's own CPU time (fair where runs share the machine; "
        "named algo@<seconds>s-cpu)",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs", "compare"), help="where runs are kept")
    parser.add_argument("--out", type=Path, default=Path("docs", "results"))
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild the report from the finished runs of --runs (any difficulty)"
    )
    parser.add_argument(
        "--results",
        nargs="+",
        type=Path,
        default=[],
        help=f"{RESULTS_FILE} files of earlier reports whose runs join this report (a run in --runs too counts once)",
    )
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, as tasks of a local Ray instance (> 1)")
    parser.add_argument("--ray-address", help="run on an existing Ray cluster (e.g. auto, or ray://head:10001)")
    args = parser.parse_args()

    jobs = [(a, e, s) for e in args.envs for a in args.algos for s in args.seeds]
    if args.report_only:  # every finished run of these algorithms, envs and seeds, at any difficulty
        found = (json.loads(path.read_text()) for path in sorted(args.runs.glob("*/*/seed_*/result.json")))
        results = [r for r in found if (r["algo"], r["env"], r["seed"]) in set(jobs)]
    else:
        results = run_all(jobs, args)
    kept = [r for r in read_results(args.results) if (r["algo"], r["env"], r["seed"]) in set(jobs)]
    results = merge_results(kept, results)
    if not results:
        sys.exit("no finished runs to report")
    write_report(results, args.out, "python scripts/compare.py " + shlex.join(sys.argv[1:]))
    print(f"wrote {args.out / 'comparison.md'} and {args.out / 'comparison.png'}")


if __name__ == "__main__":
    main()

"""POPGym benchmark: memory agents and their controls on POPGym's environments, one recipe for all.

POPGym (Morad et al., ICLR 2023; ``pip install 'sb3-memory[popgym]'``) is a suite of partially
observable tasks, each at three difficulties. This command trains every agent on every chosen
environment and seed with the same recipe (:data:`RECIPE`, the generic recipe of
:mod:`sb3_memory.experiments.recipe`: the one a new user would run, not tuned per task), and scores
each run as POPGym does:

- the mean episodic reward (MER) of the training episodes that end in each window of
  ``--eval-freq`` steps (POPGym's per-batch mean; the policy samples its actions, as in training);
- the run's MMER: the largest of these means over training;
- normalised by the environment's lowest and highest possible episodic return
  (:func:`return_bounds`): 0 is the worst possible return, 1 the best.

It writes ``popgym.md`` (the normalised MMER per environment and agent, mean ± 95% t-interval
over seeds, the mean over environments, and paired comparisons with the ``lstm`` control and
RecurrentPPO over environments and seeds) and ``popgym.png`` (learning curves and the means) into
``--out``. With ``--wall-clock S`` each agent also trains for S seconds of its own CPU time (at
most :data:`~sb3_memory.experiments.compare.WALL_CLOCK_STEP_CAP` times ``--steps``), and the
report adds the same table at equal CPU time.

Runs go through :func:`sb3_memory.experiments.compare.run_jobs`: one at a time, or as Ray tasks
of one CPU each (``--workers K`` on this machine, ``--ray-address`` on a cluster, where ``--runs``
must be a shared file system). Each finished run leaves a JSON file under ``--runs`` and is read
back, not retrained, next time; a changed ``--steps`` or ``--eval-freq`` is a different run.

Usage:
    python -m sb3_memory.benchmarks.popgym --envs RepeatPrevious RepeatFirst --difficulty easy \\
        --agents dnc lstm recurrent_ppo ppo --seeds 0 1 2 --steps 150000 --out runs/popgym
    python -m sb3_memory.benchmarks.popgym --envs all --difficulty easy medium --seeds 0 1 2 \\
        --steps 150000 --wall-clock 600 --workers 2 --out runs/popgym
    python -m sb3_memory.benchmarks.popgym --envs all --setting chunk=64 ...   # a memory setting (recipe.py)
    python -m sb3_memory.benchmarks.popgym --envs all --agents dnc lstm --setting library chunk=64 ...  # defaults search
    python -m sb3_memory.benchmarks.popgym --envs all --setting env.previous_action_reward=True ...  # inputs
"""

import argparse
import difflib
import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sb3_memory.experiments.compare import WALL_CLOCK_STEP_CAP, run_jobs, t_interval
from sb3_memory.experiments.recipe import CORE_SHAPE
from sb3_memory.experiments.recipe import RECIPE as GENERIC_RECIPE

DIFFICULTIES = ("easy", "medium", "hard")
#: Every agent's settings, written once: recipe.py's generic recipe (n_steps, batch_size, n_epochs,
#: learning_rate, ent_coef) with its 8 environments, and the rest of PPO's settings at SB3's
#: defaults, given explicitly so that no agent's own defaults can differ.
RECIPE: dict[str, Any] = dict(
    n_envs=8,
    **GENERIC_RECIPE,
    gamma=0.99,
    gae_lambda=0.95,
    clip_range=0.2,
    vf_coef=0.5,
    max_grad_norm=0.5,
)


@dataclass(frozen=True)
class Agent:
    """An agent of the benchmark: an algorithm (a name of :data:`ALGORITHMS`), its policy and ``policy_kwargs``."""

    algorithm: str
    policy: str
    policy_kwargs: dict[str, Any] = field(default_factory=dict)


#: Sparse reads and writes (Rae et al., 2016), as in compare.py: 1,024 slots, each step touching 8.
SPARSE = dict(memory_units=1024, sparse_top_k=8)
AGENTS: dict[str, Agent] = {
    "ntm": Agent("MemoryPPO", "NTMPolicy", CORE_SHAPE["NTMPolicy"]),
    "dnc": Agent("MemoryPPO", "DNCPolicy", CORE_SHAPE["DNCPolicy"]),
    "ntm-sparse": Agent("MemoryPPO", "NTMPolicy", {**CORE_SHAPE["NTMPolicy"], **SPARSE}),
    "dnc-sparse": Agent("MemoryPPO", "DNCPolicy", {**CORE_SHAPE["DNCPolicy"], **SPARSE}),
    # The controls: the same framework, critic and controller without the external memory.
    "lstm": Agent("MemoryPPO", "LSTMPolicy", CORE_SHAPE["LSTMPolicy"]),
    "gru": Agent("MemoryPPO", "LSTMPolicy", {**CORE_SHAPE["LSTMPolicy"], "controller": "gru"}),
    # sb3-contrib's recurrent baseline, its LSTM the controllers' size (and one of its own for the critic).
    "recurrent_ppo": Agent("RecurrentPPO", "MlpLstmPolicy", dict(lstm_hidden_size=CORE_SHAPE["LSTMPolicy"]["controller_dim"])),
    "ppo": Agent("PPO", "MlpPolicy"),
}
DEFAULT_AGENTS = ["ntm", "dnc", "dnc-sparse", "lstm", "gru", "recurrent_ppo", "ppo"]
ALGORITHMS = ("MemoryPPO", "RecurrentPPO", "PPO")
CONTROL, BASELINE = "lstm", "recurrent_ppo"  # the paired comparisons of the report
#: Episodic return bounds that differ from POPGym's usual [-1, 1]: the cart-poles pay 1/L for each
#: step the pole stays up (nothing for falling); Battleship's worst episode misses on all L = board
#: size squared shots, each costing 1/(L - squares to hit). The others scale their rewards so that
#: an episode's return lies in [-1, 1] and both ends can be reached (all right, all wrong).
BOUNDS_OF: dict[str, Any] = {
    "PositionOnlyCartPole": lambda env: (0.0, 1.0),
    "VelocityOnlyCartPole": lambda env: (0.0, 1.0),
    "NoisyPositionOnlyCartPole": lambda env: (0.0, 1.0),
    "Battleship": lambda env: (-env.max_episode_length / (env.max_episode_length - sum(env.ship_sizes)), 1.0),
}
KNOWN_BASES = (
    "Autoencode", "RepeatPrevious", "RepeatFirst", "CountRecall", "PositionOnlyCartPole", "PositionOnlyPendulum",
    "VelocityOnlyCartPole", "NoisyPositionOnlyCartPole", "NoisyPositionOnlyPendulum", "MultiarmedBandit",
    "HigherLower", "Battleship", "Concentration", "MineSweeper", "LabyrinthEscape", "LabyrinthExplore",
)  # fmt: skip


def _import_popgym() -> Any:
    try:
        import popgym.envs
    except ImportError:
        raise ImportError("the POPGym benchmark needs POPGym: pip install 'sb3-memory[popgym]'") from None
    return popgym.envs


def popgym_envs() -> dict[tuple[str, str], str]:
    """
    The POPGym environments of this install: ``(name, difficulty)`` -> gymnasium id, e.g.
    ``("RepeatPrevious", "easy")`` -> ``"popgym-RepeatPreviousEasy-v0"`` (the labyrinths only
    where ``mazelib`` is installed).
    """
    envs = _import_popgym()
    found = {}
    for env_class, spec in envs.ALL.items():
        for difficulty in DIFFICULTIES:
            suffix = difficulty.capitalize()
            if env_class.__name__.endswith(suffix):
                found[env_class.__name__.removesuffix(suffix), difficulty] = spec["id"]
    return found


def env_key(name: str, difficulty: str) -> str:
    """An environment at a difficulty, as the tables name it: ``RepeatPreviousEasy``."""
    return name + difficulty.capitalize()


def select_envs(names: list[str], difficulties: list[str]) -> list[tuple[str, str]]:
    """
    The ``(name, difficulty)`` pairs to run: every name at every difficulty, in the order given.

    :param names: POPGym names without difficulty (``RepeatFirst``), or ``all``
    :param difficulties: ``easy``, ``medium`` and/or ``hard``
    :raises ValueError: naming an unknown name or difficulty, with the known ones
    """
    available = popgym_envs()
    bases = list(dict.fromkeys(name for name, _ in available))
    unknown_difficulties = [d for d in difficulties if d not in DIFFICULTIES]
    if unknown_difficulties or not difficulties:
        raise ValueError(f"--difficulty {' '.join(unknown_difficulties)}: give one or more of {', '.join(DIFFICULTIES)}")
    chosen = bases if "all" in names else list(dict.fromkeys(names))
    for name in chosen:
        if name in bases:
            continue
        base = next((name.removesuffix(d.capitalize()) for d in DIFFICULTIES if name.endswith(d.capitalize())), None)
        if base in bases:
            hint = f"give the name without its difficulty ({base}) and the difficulty with --difficulty"
        elif name.startswith("Labyrinth"):
            hint = "the labyrinths need mazelib: pip install 'popgym[navigation]'"
        else:
            close = difflib.get_close_matches(name, bases, n=1)
            hint = f"did you mean {close[0]}?" if close else f"POPGym's are {', '.join(bases)}, or all"
        raise ValueError(f"--envs {name}: no such POPGym environment; {hint}")
    return [(name, difficulty) for name in chosen for difficulty in difficulties]


def make_env(name: str, difficulty: str, n_envs: int, seed: int, previous_action_reward: bool = False) -> Any:
    """
    ``n_envs`` copies of a POPGym environment, each in a ``Monitor``, seeded ``seed``, ``seed + 1``, ...

    Tuple observations (Autoencode's) and multi-discrete ones (CountRecall's, Concentration's)
    become one vector of one-hot parts: SB3 takes no tuple spaces, and sb3-contrib's RecurrentPPO
    fails on multi-discrete ones (a numpy integer as the LSTM's input size); the one-hot vector is
    what SB3 would make of a multi-discrete observation anyway, so every agent sees the same input.

    :param previous_action_reward: append the previous action (one-hot) and reward to every
        observation (:class:`~sb3_memory.envs.wrappers.PreviousActionReward`); a discrete
        observation is made one-hot first, so that the result stays one flat vector
    """
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_memory.envs.wrappers import PreviousActionReward

    env_id = popgym_envs()[name, difficulty]
    probe = gym.make(env_id)
    flat_kinds = (gym.spaces.Tuple, gym.spaces.MultiDiscrete) + ((gym.spaces.Discrete,) if previous_action_reward else ())
    flatten = isinstance(probe.observation_space, flat_kinds)
    probe.close()

    def wrapper(env: gym.Env) -> gym.Env:
        env = gym.wrappers.FlattenObservation(env) if flatten else env
        return PreviousActionReward(env) if previous_action_reward else env

    with warnings.catch_warnings():
        # make_vec_env asks every env for rgb_array rendering, which POPGym's do not list; no run renders.
        warnings.filterwarnings("ignore", message=".*render_mode.*")
        return make_vec_env(env_id, n_envs=n_envs, seed=seed, wrapper_class=wrapper)


def return_bounds(name: str, difficulty: str) -> tuple[float, float]:
    """
    The lowest and highest episodic return possible on a POPGym environment (see :data:`BOUNDS_OF`).

    :raises ValueError: for an environment whose rewards this module has not checked
    """
    import gymnasium as gym

    if name not in KNOWN_BASES:
        raise ValueError(f"{name}: its return bounds are unknown; add them to BOUNDS_OF after reading its rewards")
    env = gym.make(popgym_envs()[name, difficulty])
    try:
        return BOUNDS_OF.get(name, lambda env: (-1.0, 1.0))(env.unwrapped)
    finally:
        env.close()


def normalised(value: float, bounds: tuple[float, float]) -> float:
    """``value`` rescaled so that the lowest possible return is 0 and the highest 1."""
    low, high = bounds
    return (value - low) / (high - low)


#: The environment options a setting may hold (``env.<name>=True``), with their defaults: they change
#: what the MemoryPPO agents observe, which no argument of the algorithm or the policy can.
ENV_OPTIONS: dict[str, bool] = {"previous_action_reward": False}


def split_setting(setting: str) -> tuple[str, dict[str, bool]]:
    """
    A setting's environment options (``env.previous_action_reward=True``) apart from the rest.

    :return: the setting without them (``library`` when nothing is left) and the options, every
        name of :data:`ENV_OPTIONS` given
    :raises ValueError: for an unknown option, or a value other than True or False
    """
    options, rest = dict(ENV_OPTIONS), []
    for item in setting.split("+"):
        if not item.startswith("env."):
            rest.append(item)
            continue
        key, _, text = item.removeprefix("env.").partition("=")
        if key not in ENV_OPTIONS or text not in ("True", "False"):
            known = ", ".join(f"env.{name}=True" for name in ENV_OPTIONS)
            raise ValueError(f"setting {setting!r}: {item!r} is not an environment option (they are {known})")
        options[key] = text == "True"
    return "+".join(rest) or "library", options


def check_setting(setting: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    A memory setting of :mod:`sb3_memory.experiments.recipe` (``library``, ``chunk=64``,
    ``policy.critic_memory=shared+gamma=0.9``...), for the MemoryPPO agents. It may also hold the
    environment options of :func:`split_setting` (``chunk=64+env.previous_action_reward=True``),
    which this leaves out.

    :return: MemoryPPO overrides and ``policy_kwargs`` overrides
    :raises ValueError: for an unknown setting, or one that changes the algorithm
    """
    from sb3_memory.experiments.recipe import setting_overrides

    algo_overrides, policy_overrides = setting_overrides(split_setting(setting)[0])
    if "algo" in algo_overrides:
        raise ValueError(f"--setting {setting}: the benchmark runs MemoryPPO agents; settings with algo= are for recipe.py")
    return algo_overrides, policy_overrides


def make_model(agent: str, env: Any, seed: int, setting: str = "library") -> Any:
    """The model of ``agent`` (a name of :data:`AGENTS`) on ``env`` with :data:`RECIPE` (and ``setting``, MemoryPPO only)."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3 import PPO

    from sb3_memory import MemoryPPO

    spec = AGENTS[agent]
    hyperparameters = {key: value for key, value in RECIPE.items() if key != "n_envs"}
    policy_kwargs = dict(spec.policy_kwargs)
    if spec.algorithm == "MemoryPPO":
        algo_overrides, policy_overrides = check_setting(setting)
        hyperparameters.update(algo_overrides)
        policy_kwargs.update(policy_overrides)
    algorithm = {"MemoryPPO": MemoryPPO, "RecurrentPPO": RecurrentPPO, "PPO": PPO}[spec.algorithm]
    return algorithm(spec.policy, env, seed=seed, policy_kwargs=policy_kwargs or None, **hyperparameters)


def _episode_returns_callback(window: int) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeReturns(BaseCallback):
        """
        The mean return of the training episodes ending in each window of ``window`` steps (read
        from ``Monitor``), recorded at the first rollout end past the window's end and at the end
        of training; a window in which no episode ended joins the next.
        """

        def __init__(self) -> None:
            super().__init__()
            self.timesteps: list[int] = []
            self.mean_returns: list[float] = []
            self.episodes: list[int] = []
            self._returns: list[float] = []
            self._next = window

        def _on_step(self) -> bool:
            self._returns += [float(info["episode"]["r"]) for info in self.locals["infos"] if "episode" in info]
            return True

        def _record(self) -> None:
            self.timesteps.append(self.num_timesteps)
            self.mean_returns.append(float(np.mean(self._returns)))
            self.episodes.append(len(self._returns))
            self._returns = []
            self._next = (self.num_timesteps // window + 1) * window

        def _on_rollout_end(self) -> None:
            if self.num_timesteps >= self._next and self._returns:
                self._record()

        def _on_training_end(self) -> None:
            if self._returns:
                self._record()

    return EpisodeReturns()


def run_label(agent: str, wall_clock: Optional[float]) -> str:
    """An agent's name, with ``@<seconds>s-cpu`` for its runs at equal CPU time."""
    return f"{agent}@{wall_clock:g}s-cpu" if wall_clock else agent


def result_path(
    runs: Path,
    name: str,
    difficulty: str,
    agent: str,
    seed: int,
    steps: int,
    eval_freq: int,
    wall_clock: Optional[float],
    setting: str,
) -> Path:
    """Where a run's result is kept: one folder per environment, agent (and time), setting and budget."""
    setting = setting if AGENTS[agent].algorithm == "MemoryPPO" else "library"  # the baselines have no settings
    folder = runs / env_key(name, difficulty) / run_label(agent, wall_clock) / setting.replace("/", "_")
    return folder / f"steps{steps}-window{eval_freq}" / f"seed{seed}.json"


def run_one(
    runs: Path,
    name: str,
    difficulty: str,
    agent: str,
    seed: int,
    steps: int,
    eval_freq: int,
    wall_clock: Optional[float] = None,
    setting: str = "library",
) -> dict[str, Any]:
    """
    Train one agent on one environment and seed, unless it already finished; return its result.

    :param steps: the step budget (with ``wall_clock``: at most ``WALL_CLOCK_STEP_CAP`` times it)
    :param eval_freq: the window of the mean episodic returns, in steps
    :param wall_clock: train for this many seconds of this process's CPU time instead
    """
    path = result_path(runs, name, difficulty, agent, seed, steps, eval_freq, wall_clock, setting)
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from sb3_memory.common.callbacks import StopTrainingOnWallClock

    torch.set_num_threads(1)
    env_options = split_setting(setting)[1] if AGENTS[agent].algorithm == "MemoryPPO" else dict(ENV_OPTIONS)
    env = make_env(name, difficulty, RECIPE["n_envs"], seed, **env_options)
    model = make_model(agent, env, seed, setting)
    returns = _episode_returns_callback(eval_freq)
    callbacks: list[Any] = [returns]
    if wall_clock:
        callbacks.append(StopTrainingOnWallClock(wall_clock, clock="cpu"))
    start, cpu_start = time.perf_counter(), time.process_time()
    model.learn(WALL_CLOCK_STEP_CAP * steps if wall_clock else steps, callback=callbacks)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    env.close()
    bounds = return_bounds(name, difficulty)
    mmer = max(returns.mean_returns) if returns.mean_returns else math.nan
    result = dict(
        algo=run_label(agent, wall_clock),  # the name compare.Progress prints
        agent=agent,
        env=env_key(name, difficulty),
        name=name,
        difficulty=difficulty,
        seed=seed,
        steps=steps,
        eval_freq=eval_freq,
        wall_clock=wall_clock,
        setting=setting if AGENTS[agent].algorithm == "MemoryPPO" else "library",
        num_timesteps=int(model.num_timesteps),
        timesteps=returns.timesteps,
        mean_returns=returns.mean_returns,
        episodes=returns.episodes,
        bounds=list(bounds),
        mmer=mmer,
        score=normalised(mmer, bounds),
        wall_seconds=wall,
        cpu_seconds=cpu,
        steps_per_second=model.num_timesteps / wall,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")  # a run killed while writing leaves no result
    partial.write_text(json.dumps(result))
    os.replace(partial, path)
    return result


def paired(results: list[dict[str, Any]], agent: str, other: str) -> str:
    """
    ``agent``'s normalised MMER against ``other``'s, paired over (environment, seed): the mean
    difference and the p-value of the paired t-test ('-' without two pairs).
    """
    from scipy import stats

    scores = {(r["env"], r["seed"]): r["score"] for r in results if r["agent"] == agent}
    others = {(r["env"], r["seed"]): r["score"] for r in results if r["agent"] == other}
    pairs = sorted(set(scores) & set(others))
    if agent == other or not pairs:
        return "-"
    differences = np.array([scores[key] - others[key] for key in pairs])
    if len(pairs) < 2 or np.all(differences == differences[0]):
        return f"{differences.mean():+.3f} (p=nan)"
    p_value = stats.ttest_rel([scores[key] for key in pairs], [others[key] for key in pairs]).pvalue
    return f"{differences.mean():+.3f} (p={p_value:.3f})"


def score_cell(scores: list[float]) -> str:
    """Mean ± half-width of the 95% t-interval over seeds (the mean alone for one seed)."""
    mean, half = t_interval(scores)
    return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"


def score_table(
    results: list[dict[str, Any]], envs: list[str], agents: list[str], timed: bool, firsts: Optional[dict[str, str]] = None
) -> list[str]:
    """
    One Markdown table: a row per environment, a column per agent, then the means and comparisons.

    :param firsts: for a column of an agent under another setting, the agent's column under the first
        (a row compares them, paired)
    """
    present = [a for a in agents if any(r["agent"] == a for r in results)]
    lines = ["| env | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for env in envs:
        cells = []
        for agent in present:
            scores = [r["score"] for r in results if r["agent"] == agent and r["env"] == env]
            cells.append(score_cell(scores) if scores else "-")
        lines.append(f"| {env} | " + " | ".join(cells) + " |")

    def row(title: str, cell: Any) -> str:
        return f"| {title} | " + " | ".join(cell(a) for a in present) + " |"

    def runs_of(agent: str) -> list[dict[str, Any]]:
        return [r for r in results if r["agent"] == agent]

    def mean_cell(agent: str) -> str:
        count = len({r["env"] for r in runs_of(agent)})
        missing = f" ({count} of {len(envs)} envs)" if count < len(envs) else ""
        return f"**{mean_over_envs(results, agent):.3f}**{missing}"

    lines.append(row("**mean over envs**", mean_cell))
    for other in (CONTROL, BASELINE):
        if other in present:
            lines.append(row(f"vs {other} (paired)", lambda a, other=other: paired(results, a, other)))
    if firsts:
        lines.append(row("vs the first setting (paired)", lambda a: paired(results, a, firsts[a]) if a in firsts else "-"))
    if timed:
        lines.append(row("steps reached (median)", lambda a: f"{np.median([r['num_timesteps'] for r in runs_of(a)]):.0f}"))
    lines.append(row("CPU s per run (median)", lambda a: f"{np.median([r['cpu_seconds'] for r in runs_of(a)]):.0f}"))
    lines.append(row("steps/s (median)", lambda a: f"{np.median([r['steps_per_second'] for r in runs_of(a)]):.0f}"))
    return lines


def still_rising(run: dict[str, Any]) -> bool:
    """Whether a run's last window beats every earlier one: its curve was still climbing when the budget ran out."""
    returns = run["mean_returns"]
    return len(returns) > 1 and returns[-1] > max(returns[:-1])


def rising_table(results: list[dict[str, Any]], envs: list[str], agents: list[str]) -> list[str]:
    """A row per environment: for each agent, how many of its seeds were still rising (:func:`still_rising`)."""
    present = [a for a in agents if any(r["agent"] == a for r in results)]
    lines = ["| env | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for env in envs:
        cells = []
        for agent in present:
            runs = [r for r in results if r["agent"] == agent and r["env"] == env]
            cells.append(f"{sum(still_rising(r) for r in runs)}/{len(runs)}" if runs else "-")
        lines.append(f"| {env} | " + " | ".join(cells) + " |")
    return lines


def describe_recipe(agents: list[str], settings: list[str]) -> list[str]:
    """The recipe and each agent's algorithm, policy and ``policy_kwargs``, as printed and in the report."""
    recipe = ", ".join(f"{key}={value}" for key, value in RECIPE.items())
    named = ", ".join(f"`{setting}`" for setting in settings)
    which = f"setting {named}" if len(settings) == 1 else f"each of the settings {named} (a column `agent setting` each)"
    lines = [f"Recipe (every agent): {recipe}. MemoryPPO agents: {which} (recipe.py), the rest library defaults."]
    for agent in agents:
        spec = AGENTS[agent]
        lines.append(f"- `{agent}`: {spec.algorithm}('{spec.policy}', policy_kwargs={spec.policy_kwargs})")
    return lines


def column(agent: str, setting: str, settings: list[str]) -> str:
    """The report's name for ``agent`` run with ``setting``: the agent's own under the first setting."""
    return agent if setting == settings[0] else f"{agent} {setting}"


def columns(agents: list[str], settings: list[str]) -> list[str]:
    """Every column of the report: each agent, then each MemoryPPO agent under the other settings."""
    return [
        column(agent, setting, settings)
        for agent in agents
        for setting in (settings if AGENTS[agent].algorithm == "MemoryPPO" else settings[:1])
    ]


def write_report(results: list[dict[str, Any]], out: Path, command: str, agents: list[str], settings: list[str]) -> None:
    """
    ``popgym.md`` (:func:`score_table` at equal steps, and at equal CPU time where runs were timed) and
    ``popgym.png``. With several ``settings``, a MemoryPPO agent has a column per setting (:func:`column`),
    compared with its column under the first.
    """
    records = results  # as the runs wrote them, for runs.jsonl
    by_setting = {column(r["agent"], r.get("setting", settings[0]), settings): r["agent"] for r in results}
    results = [{**r, "agent": column(r["agent"], r.get("setting", settings[0]), settings)} for r in results]
    firsts = {label: agent for label, agent in by_setting.items() if label != agent}
    names, agents = agents, columns(agents, settings)
    envs = list(dict.fromkeys(r["env"] for r in results))
    stepped = [r for r in results if not r["wall_clock"]]
    timed = [r for r in results if r["wall_clock"]]
    steps = sorted({r["steps"] for r in results})
    lines = [
        "# POPGym: memory agents and their controls, one recipe",
        "",
        f"Made by `{command}`.",
        "",
        *describe_recipe(names, settings),
        "",
        "Score: POPGym's MMER, normalised. A run's mean episodic reward (MER) is the mean return of the training "
        f"episodes (sampled actions) ending in each window of {results[0]['eval_freq']} steps; its MMER is the largest "
        "MER over training, rescaled by the environment's lowest and highest possible episodic return (0: the worst, "
        "1: the best). Cells: mean over seeds ± half-width of the 95% t-interval. Mean over envs: of the cells. "
        f"vs {CONTROL} / {BASELINE} (and, with several settings, vs the first setting): mean difference of the scores "
        "paired over environments and seeds, with the p-value of the paired t-test. Times: one CPU and one torch "
        "thread per run.",
    ]
    if stepped:
        lines += ["", f"## At equal steps ({', '.join(map(str, steps))} steps)", ""]
        lines += score_table(stepped, envs, agents, timed=False, firsts=firsts)
        lines += [
            "",
            "## Still rising at the end",
            "",
            "Seeds whose last window beat every earlier one (their curve was still climbing when the budget ran out: "
            "a larger budget would likely score higher).",
            "",
        ]
        lines += rising_table(stepped, envs, agents)
    if timed:
        seconds = ", ".join(f"{s:g}" for s in sorted({r["wall_clock"] for r in timed}))
        lines += [
            "",
            f"## At equal CPU time ({seconds} s of its own CPU time per run, at most {WALL_CLOCK_STEP_CAP}x the steps)",
            "",
        ]
        lines += score_table(timed, envs, agents, timed=True, firsts=firsts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "popgym.md").write_text("\n".join(lines) + "\n")
    kept = sorted(records, key=lambda r: (r["env"], r["algo"], r.get("setting", ""), r["seed"]))
    (out / "runs.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    plot(results, envs, agents, out / "popgym.png")


def mean_over_envs(results: list[dict[str, Any]], agent: str) -> float:
    """``agent``'s score averaged over seeds within each environment, then over environments (``nan`` without runs)."""
    envs = list(dict.fromkeys(r["env"] for r in results if r["agent"] == agent))
    if not envs:
        return math.nan
    return float(np.mean([np.mean([r["score"] for r in results if r["agent"] == agent and r["env"] == env]) for env in envs]))


def plot(results: list[dict[str, Any]], envs: list[str], agents: list[str], path: Path) -> None:
    """Learning curves (normalised MER, mean over seeds, band from the lowest to the highest seed) per
    environment, at equal steps; the last panel: each agent's mean over environments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(len(envs) + 1, 4)
    rows = -(-(len(envs) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    colours = {agent: f"C{index % 10}" for index, agent in enumerate(agents)}
    for ax, env in zip(axes.flat, envs):
        for agent in agents:
            runs = [r for r in results if r["agent"] == agent and r["env"] == env and not r["wall_clock"] and r["timesteps"]]
            if not runs:
                continue
            length = min(len(r["timesteps"]) for r in runs)
            x = np.asarray(runs[0]["timesteps"][:length])
            curves = np.asarray([[normalised(v, r["bounds"]) for v in r["mean_returns"][:length]] for r in runs])
            ax.plot(x, curves.mean(axis=0), color=colours[agent], label=agent)
            if len(runs) > 1:
                ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=colours[agent], alpha=0.2)
        ax.set_ylim(-0.02, 1.02)  # the whole normalised range: panels compare at a glance
        ax.set_title(env, fontsize=10)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("normalised MER")
    bars = axes.flat[len(envs)]
    present = [a for a in agents if any(r["agent"] == a for r in results)]
    for offset, (title, timed) in enumerate((("equal steps", False), ("equal CPU time", True))):
        runs = [r for r in results if bool(r["wall_clock"]) == timed]
        means = [mean_over_envs(runs, agent) for agent in present]
        if not np.all(np.isnan(means)):
            hatch = "//" if timed else None
            positions = np.arange(len(present)) + 0.4 * offset
            bars.bar(positions, means, width=0.4, label=title, color=[colours[a] for a in present], hatch=hatch)
    bars.set_xticks(np.arange(len(present)) + 0.2, present, rotation=45, ha="right", fontsize=8)
    bars.set_ylim(0, 1.02)
    bars.set_ylabel("normalised MMER, mean over envs")
    bars.set_title("mean over environments (hatched: equal CPU time)", fontsize=9)
    for ax in list(axes.flat)[len(envs) + 1 :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 8) or 1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return value


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sb3_memory.benchmarks.popgym",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--envs", nargs="+", default=["all"], help="POPGym names without difficulty (RepeatFirst ...), or all")
    parser.add_argument("--difficulty", nargs="+", default=["easy"], choices=DIFFICULTIES)
    parser.add_argument("--agents", nargs="+", default=DEFAULT_AGENTS, choices=list(AGENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=_positive_int, required=True, help="environment steps per run")
    parser.add_argument(
        "--wall-clock",
        type=_positive_float,
        help="also train every run for this many seconds of its own CPU time (equal time)",
    )
    parser.add_argument(
        "--eval-freq", type=_positive_int, default=16_384, help="window of the mean episodic reward, in steps (default 16384)"
    )
    parser.add_argument(
        "--setting",
        dest="settings",
        nargs="+",
        default=["library"],
        help="memory settings of recipe.py for the MemoryPPO agents, each may add env.previous_action_reward=True: "
        "each agent runs under every one (defaults search)",
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=1, help="runs at a time, as tasks of a local Ray instance (> 1)"
    )
    parser.add_argument("--ray-address", help="run on an existing Ray cluster (e.g. auto); --runs must be shared")
    parser.add_argument("--out", type=Path, required=True, help="where the table (popgym.md) and figure (popgym.png) go")
    parser.add_argument("--runs", type=Path, help="where finished runs are kept (default: OUT/runs)")
    args = parser.parse_args(argv)
    try:
        args.selected = select_envs(args.envs, args.difficulty)
        for setting in args.settings:
            check_setting(setting)
    except (ValueError, ImportError) as error:
        parser.error(str(error))
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed is repeated")
    args.agents = list(dict.fromkeys(args.agents))
    args.settings = list(dict.fromkeys(args.settings))
    args.runs = args.runs or args.out / "runs"
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    command = "python -m sb3_memory.benchmarks.popgym " + shlex.join(sys.argv[1:] if argv is None else argv)
    print("\n".join(describe_recipe(args.agents, args.settings)), flush=True)
    clocks: list[Optional[float]] = [None, args.wall_clock] if args.wall_clock else [None]
    jobs = [
        (args.runs, name, difficulty, agent, seed, args.steps, args.eval_freq, clock, setting)
        for clock in clocks
        for name, difficulty in args.selected
        for agent in args.agents
        for setting in (args.settings if AGENTS[agent].algorithm == "MemoryPPO" else args.settings[:1])
        for seed in args.seeds
    ]
    done = [job for job in jobs if result_path(*job).exists()]
    todo = [job for job in jobs if not result_path(*job).exists()]
    results = [json.loads(result_path(*job).read_text()) for job in done]
    print(f"{len(done)} of {len(jobs)} runs already finished in {args.runs}; {len(todo)} to train", flush=True)
    results += run_jobs(run_one, todo, args.workers, args.ray_address)
    write_report(results, args.out, command, args.agents, args.settings)
    print(f"wrote {args.out / 'popgym.md'} and {args.out / 'popgym.png'}")


if __name__ == "__main__":
    # Through the importable module, so that Ray workers find run_one by name (not pickled from __main__).
    from sb3_memory.benchmarks.popgym import main as imported_main

    imported_main()

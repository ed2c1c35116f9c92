"""One generic recipe, many settings: how the defaults of MemoryPPO were chosen.

A new user does not tune: they run a generic recipe. This runs the one from the issue tracker
(8 envs, n_steps 64, batch 256, 10 epochs, lr 3e-4, ent_coef 0.01, a 128-unit controller,
N=32, W=16) on an env for every setting, core and seed, two runs at a time (one torch thread
each), and scores each run by the mean return of 100 deterministic episodes. Results go to a
JSON file per run (resumable) and a Markdown table, where a memory core's cell ends with the
Welch p-value against the ``LSTMPolicy`` control of the same setting (when both have 2+ seeds).

Settings are overrides of the recipe: a name of :data:`SETTINGS` (``critic=separate``, ``fast``;
``library`` is the package's current defaults), or any ``key=value`` pairs joined by ``+`` (see
:func:`setting_overrides`).

Usage (``scripts/recipe.py`` runs :func:`main`):
    python scripts/recipe.py --env CartPoleNoVel-v1 --settings critic=shared critic=separate --seeds 0 1 2
    python scripts/recipe.py --env sb3_memory/Copy-v0 --settings gamma=0.5+max_grad_norm=10+policy.critic_memory=shared
"""

import argparse
import ast
import difflib
import inspect
import json
import math
import os
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sb3_memory.envs.kwargs import env_kwarg_argument, parse_env_kwargs
from sb3_memory.experiments.compare import welch_p_value

RECIPE: dict[str, Any] = dict(n_steps=64, batch_size=256, n_epochs=10, learning_rate=3e-4, ent_coef=0.01)
CORE_SHAPE: dict[str, dict[str, Any]] = {
    "NTMPolicy": dict(controller_dim=128, memory_units=32, memory_unit_size=16),
    "DNCPolicy": dict(controller_dim=128, memory_units=32, memory_unit_size=16),
    "LSTMPolicy": dict(controller_dim=128),
}
# The same framework without the external memory: what a memory core's p-value is against.
CONTROL = "LSTMPolicy"
# Baselines run with the same recipe (settings do not apply to them): sb3-contrib's RecurrentPPO
# with its defaults (a 128-unit LSTM, and one of its own for the critic) and memoryless PPO.
BASELINES = ("RecurrentPPO", "PPO")
# Named settings: algorithm overrides and policy_kwargs overrides.
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "library": ({}, {}),
    "critic=shared": ({}, dict(critic_memory="shared")),
    "critic=separate": ({}, dict(critic_memory="separate")),
    "critic=detached": ({}, dict(critic_memory="detached")),
    "critic=none": ({}, dict(critic_memory="none")),
    "shared+norm": ({}, dict(critic_memory="shared", value_normalization=True)),
    "detached+norm": ({}, dict(critic_memory="detached", value_normalization=True)),
    "separate+norm": ({}, dict(critic_memory="separate", value_normalization=True)),
    "separate+clip5": (dict(max_grad_norm=5.0), dict(critic_memory="separate")),
    "separate+aux": (dict(recall_coef=1.0, prediction_coef=1.0), dict(critic_memory="separate")),
    "separate+recall": (dict(recall_coef=1.0), dict(critic_memory="separate")),
    "clip=5": (dict(max_grad_norm=5.0), {}),
    "clip=50": (dict(max_grad_norm=50.0), {}),
    # Whole rollouts as chunks: backpropagation through 64 steps instead of 32.
    "chunk=64": (dict(sequence_length=64), {}),
    # The README example's recipe: a larger learning rate, fewer epochs, whole rollouts per batch.
    "fast": (dict(learning_rate=1e-3, n_epochs=4, n_steps=32), {}),
    "fast+clip=5": (dict(learning_rate=1e-3, n_epochs=4, n_steps=32, max_grad_norm=5.0), {}),
    "fast+aux": (dict(learning_rate=1e-3, n_epochs=4, n_steps=32, recall_coef=0.1, prediction_coef=0.1), {}),
    "aux": (dict(recall_coef=0.1, prediction_coef=0.1), {}),
    # MemoryA2C (the recipe does not apply: A2C's own defaults, n_steps 5, unless overridden).
    "a2c": (dict(algo="a2c"), {}),
    "a2c+n_steps=16": (dict(algo="a2c", n_steps=16), {}),
    "a2c+n_steps=32": (dict(algo="a2c", n_steps=32), {}),
    "a2c+n_steps=32+lr=2e-3": (dict(algo="a2c", n_steps=32, learning_rate=2e-3), {}),
    # Advantages in units of their spread: small rewards (a card game's 1/51) no longer lose to the entropy bonus.
    "a2c+norm_adv": (dict(algo="a2c", normalize_advantage=True), {}),
    "a2c+n_steps=32+norm_adv": (dict(algo="a2c", n_steps=32, normalize_advantage=True), {}),
    "a2c+n_steps=32+adam": (
        dict(
            algo="a2c", n_steps=32, learning_rate=1e-3, max_grad_norm=5.0, policy_kwargs=dict(optimizer_class=torch.optim.Adam)
        ),
        {},
    ),
    "aux=1": (dict(recall_coef=1.0, prediction_coef=1.0), {}),
    # The recall loss alone, strong, reaching back 16 steps (a Copy of length 10 needs lag 10).
    "recall=1+h16": (dict(recall_coef=1.0, recall_horizon=16), {}),
    "recall=10+h16": (dict(recall_coef=10.0, recall_horizon=16), {}),
    # Tasks whose rewards do not depend on earlier actions need little discounting (less advantage noise).
    "gamma=0.5": (dict(gamma=0.5), {}),
    "gamma=0.5+recall=10+h16": (dict(gamma=0.5, recall_coef=10.0, recall_horizon=16), {}),
    "gamma=0.5+lr=1e-3": (dict(gamma=0.5, learning_rate=1e-3), {}),
    "lr=1e-3": (dict(learning_rate=1e-3), {}),
    # The step sizes the memory papers train with (supervised: lr ~1e-3, gradient norm clipped at 10-50).
    "lr=2e-3+clip=10": (dict(learning_rate=2e-3, max_grad_norm=10.0), {}),
    "gamma=0.5+lr=2e-3+clip=10": (dict(gamma=0.5, learning_rate=2e-3, max_grad_norm=10.0), {}),
}


def setting_overrides(setting: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    The algorithm and ``policy_kwargs`` overrides a setting names.

    :param setting: a name of :data:`SETTINGS`, or ``key=value`` pairs joined by ``+``: keys are
        arguments of ``MemoryPPO`` (of ``MemoryA2C`` with ``algo=a2c``) or ``policy.<name>`` for
        ``policy_kwargs``; values are Python literals, other words strings
        (``gamma=0.5+learning_rate=2e-3+policy.critic_memory=shared``)
    :return: (algorithm overrides, policy_kwargs overrides), copies
    """
    if setting in SETTINGS:
        algo_overrides, policy_overrides = SETTINGS[setting]
        return dict(algo_overrides), dict(policy_overrides)
    from sb3_memory import MemoryA2C, MemoryPPO

    algo_overrides, policy_overrides = {}, {}
    for item in setting.split("+"):
        key, separator, text = item.partition("=")
        if not separator or not key:
            raise ValueError(f"setting {setting!r}: {item!r} is neither a named setting ({', '.join(SETTINGS)}) nor key=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if key.startswith("policy."):
            policy_overrides[key.removeprefix("policy.")] = value
        else:
            algo_overrides[key] = value
    algo = MemoryA2C if algo_overrides.get("algo", "ppo") == "a2c" else MemoryPPO
    unknown = sorted(set(algo_overrides) - {"algo", *inspect.signature(algo).parameters})
    if unknown:
        close = difflib.get_close_matches(setting, SETTINGS, n=1)
        hint = f"did you mean the named setting {close[0]!r}? " if close else ""
        raise ValueError(
            f"setting {setting!r}: {hint}{algo.__name__} has no argument {', '.join(unknown)} (it has learning_rate, "
            "max_grad_norm, gamma, ...); policy_kwargs take a policy. prefix (policy.critic_memory=shared); "
            f"the named settings are {', '.join(SETTINGS)}"
        )
    return algo_overrides, policy_overrides


def run_one(
    env_id: str, policy: str, setting: str, seed: int, steps: int, out: Path, env_kwargs: Optional[dict[str, Any]] = None
) -> dict[str, Any]:
    """Train and evaluate one run; reuse its result if it exists."""
    task = env_id.replace("/", "__") + "".join(f"-{key}={value}" for key, value in sorted((env_kwargs or {}).items()))
    path = out / f"{task}-{policy}-{setting}-{seed}-{steps}.json"
    if path.exists():
        return json.loads(path.read_text())
    from sb3_contrib import RecurrentPPO
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    import sb3_memory.zoo  # noqa: F401  (registers CartPoleNoVel-v1 and the memory tasks)
    from sb3_memory import MemoryA2C, MemoryPPO

    torch.set_num_threads(1)
    env = make_vec_env(env_id, n_envs=8, seed=seed, env_kwargs=env_kwargs)
    model: Any
    if policy == "RecurrentPPO":
        model = RecurrentPPO("MlpLstmPolicy", env, seed=seed, policy_kwargs=dict(lstm_hidden_size=128), **RECIPE)
    elif policy == "PPO":
        model = PPO("MlpPolicy", env, seed=seed, **RECIPE)
    else:
        algo_overrides, policy_overrides = setting_overrides(setting)
        policy_kwargs = {**CORE_SHAPE[policy], **algo_overrides.pop("policy_kwargs", {}), **policy_overrides}
        if algo_overrides.pop("algo", "ppo") == "a2c":
            model = MemoryA2C(policy, env, seed=seed, policy_kwargs=policy_kwargs, ent_coef=0.01, **algo_overrides)
        else:
            model = MemoryPPO(policy, env, seed=seed, policy_kwargs=policy_kwargs, **{**RECIPE, **algo_overrides})
    model.learn(steps)
    returns, _ = evaluate_policy(model, env, n_eval_episodes=100, deterministic=True, return_episode_rewards=True)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    result = dict(
        env=env_id, env_kwargs=env_kwargs, policy=policy, setting=setting, seed=seed, steps=steps, mean=mean, std=std
    )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def table(results: list[dict[str, Any]], settings: list[str], policies: list[str]) -> str:
    # Scores of a few units (card games scored in [-1, 1]) need decimals that CartPole's 500 do not.
    small = max((abs(r["mean"]) for r in results), default=0) < 10
    mean_digits, seed_digits = (2, 2) if small else (1, 0)
    lines = ["| setting | " + " | ".join(policies) + " |", "|---|" + "---|" * len(policies)]
    for setting in settings:
        cells = []
        control = [r["mean"] for r in results if r["setting"] == setting and r["policy"] == CONTROL]
        for policy in policies:
            scores = [r["mean"] for r in results if r["setting"] == setting and r["policy"] == policy]
            seeds = ", ".join(f"{s:.{seed_digits}f}" for s in scores)
            cell = f"{np.mean(scores):.{mean_digits}f} ({seeds})" if scores else "-"
            # The memory cores against the control of the same setting, when both have seeds to compare.
            p_value = welch_p_value(scores, control) if policy in CORE_SHAPE and policy != CONTROL else math.nan
            cells.append(cell if math.isnan(p_value) else f"{cell} p={p_value:.3f}")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setting_argument(setting: str) -> str:
    try:
        setting_overrides(setting)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPoleNoVel-v1")
    parser.add_argument(
        "--env-kwargs",
        nargs="*",
        default=[],
        type=env_kwarg_argument,
        help="e.g. corridor_length:20 (values as Python literals)",
    )
    parser.add_argument("--policies", nargs="+", default=list(CORE_SHAPE), choices=[*CORE_SHAPE, *BASELINES])
    parser.add_argument("--settings", nargs="+", default=["library"], type=_setting_argument, help="names or key=value+...")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs", "recipe"))
    parser.add_argument("--table", type=Path, help="also write the table, with this command, to a Markdown file")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    jobs = [
        (args.env, policy, "library" if policy in BASELINES else setting, seed, args.steps, args.out, env_kwargs)
        for setting in args.settings
        for policy in args.policies
        for seed in args.seeds
        if policy not in BASELINES or setting == args.settings[0]
    ]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = []
        for result in pool.map(run_one, *zip(*jobs)):
            results.append(result)
            print(f"{result['policy']} {result['setting']} seed {result['seed']}: {result['mean']:.1f}", flush=True)
    task = f"{args.env} {env_kwargs}" if env_kwargs else args.env
    caption = f"{task}, {args.steps} steps, mean of 100 deterministic episodes per seed (seeds in brackets)"
    markdown = table(results, sorted({r["setting"] for r in results}, key=[*args.settings, "library"].index), args.policies)
    print(f"\n{caption}\n\n{markdown}")
    if args.table:
        command = "python scripts/recipe.py " + shlex.join(sys.argv[1:])
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(f"# One generic recipe, several settings\n\nMade by `{command}`.\n{caption}.\n\n{markdown}\n")
    if any(math.isnan(r["mean"]) for r in results):
        raise SystemExit("some runs produced NaN")


if __name__ == "__main__":
    main()

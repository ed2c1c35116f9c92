"""Pictures of what a memory policy does with its memory during one episode.

Usage (``--algo`` is read from the file when left out)::

    python -m sb3_memory.viz --model logs/.../best_model.zip \\
        --env sb3_memory/PassiveTMaze-v0 --env-kwargs corridor_length:5 --out trace.png

Draws the read and write weightings of NTM and DNC cores (and the DNC's usage and link matrix) of
MemoryPPO, MemoryA2C, MaskableMemoryPPO, MemoryDQN (its online Q-network's core) and MemorySAC
(its actor's core) models. An LSTMPolicy has no external memory to draw.
"""

import argparse
from pathlib import Path
from typing import Any, Callable, Optional, Union

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

import sb3_memory.envs  # noqa: F401  (registers the sb3_memory/... environments)
from sb3_memory.common.policies import MemoryActorCriticPolicy
from sb3_memory.common.save_util import saved_data
from sb3_memory.dqn.policies import MemoryDQNPolicy
from sb3_memory.memory import MemoryCore
from sb3_memory.memory.addressing import dense_link
from sb3_memory.sac.policies import MemorySACPolicy

#: ``--algo`` names, as rl-zoo3 spells them.
ALGORITHMS = ("memory_ppo", "memory_a2c", "maskable_memory_ppo", "memory_dqn", "memory_sac")
#: The ``--algo`` that saved a policy of each module (``memory_ppo`` and ``memory_a2c`` share one).
_ALGORITHM_OF_POLICY_MODULE = {
    "sb3_memory.common.maskable": "maskable_memory_ppo",
    "sb3_memory.dqn.policies": "memory_dqn",
    "sb3_memory.sac.policies": "memory_sac",
}


def actor_core(policy: Any) -> tuple[MemoryCore, Callable[[th.Tensor], th.Tensor]]:
    """
    The core whose memory decides the actions, and the function taking its part of the policy's flat state.

    :raises TypeError: for a policy without a memory core
    :raises ValueError: for a core without external memory (LSTM): there is nothing to draw
    """
    if isinstance(policy, (MemoryActorCriticPolicy, MemorySACPolicy)):
        core = policy.core if isinstance(policy, MemoryActorCriticPolicy) else policy.actor.core
        split: Callable[[th.Tensor], th.Tensor] = lambda state: policy.split_state(state)[0]  # noqa: E731
    elif isinstance(policy, MemoryDQNPolicy):
        core, split = policy.q_net.core, lambda state: state
    else:
        raise TypeError(
            f"sb3_memory.viz needs a memory policy, got {type(policy).__name__}: train with NTMPolicy or DNCPolicy "
            "(MemoryPPO, MemoryA2C, MaskableMemoryPPO, MemoryDQN or MemorySAC)"
        )
    if "write_weights" not in core.initial_state(1, th.device("cpu"))._fields:
        raise ValueError(
            f"{type(policy).__name__} has no external memory to draw (its {type(core).__name__} keeps only a hidden "
            "state): sb3_memory.viz draws the read and write weightings of NTMPolicy and DNCPolicy models"
        )
    return core, split


def algorithm_of_file(path: Union[str, Path]) -> Optional[str]:
    """The ``--algo`` name of the model saved at ``path``, read from the file; None if it names no sb3_memory policy."""
    data = saved_data(path) or {}
    policy_class = data.get("policy_class")
    module = policy_class.get("__module__") if isinstance(policy_class, dict) else None
    if module == "sb3_memory.common.policies":
        return "memory_ppo" if "n_epochs" in data else "memory_a2c"  # the same policies; only PPO has epochs
    return _ALGORITHM_OF_POLICY_MODULE.get(module) if isinstance(module, str) else None


def record_episode(
    model: BaseAlgorithm,
    env: gym.Env,
    seed: Optional[int] = None,
    deterministic: bool = True,
    obs_transform: Optional[Callable[[Any], Any]] = None,
) -> dict[str, Any]:
    """
    Run one episode with ``model`` on a (non-vectorised) ``env`` and record the actor core's state
    after every step.

    :param obs_transform: applied to each observation before ``predict`` (e.g. the
        ``normalize_obs`` of the ``VecNormalize`` the model was trained with)

    :return: ``rewards`` (T,) and, for each state field of the core with weightings or usage,
        an array stacked over time, e.g. ``read_weights`` (T, R, N), ``write_weights``,
        ``usage`` (DNC), and ``link`` (N, N) at the last step (DNC)
    """
    policy = model.policy
    core, actor_state = actor_core(policy)  # checked before the episode runs
    obs, _ = env.reset(seed=seed)
    state, episode_start = None, np.ones(1, dtype=bool)
    trace: dict[str, list[np.ndarray]] = {"rewards": []}
    done = False
    while not done:
        policy_obs = obs if obs_transform is None else obs_transform(obs)
        action, state = model.predict(policy_obs, state=state, episode_start=episode_start, deterministic=deterministic)
        episode_start = np.zeros(1, dtype=bool)
        obs, reward, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
        trace["rewards"].append(np.asarray(reward, dtype=np.float32))
        fields = core.unflatten_state(actor_state(th.as_tensor(state)))._asdict()
        for name in ("read_weights", "write_weights", "usage"):
            if name in fields:
                trace.setdefault(name, []).append(fields[name][0].numpy())
        if "link" in fields:
            trace["link"] = [fields["link"][0].numpy()]
        elif "link_values" in fields:  # the sparse DNC's K entries per row
            link = dense_link(fields["link_values"], fields["link_index"].long())
            trace["link"] = [link[0].numpy()]
    result = {name: np.stack(values) for name, values in trace.items()}
    if "link" in result:
        result["link"] = result["link"][0]
    return result


def plot_memory_trace(trace: dict[str, Any], path: Union[str, Path], title: str = "") -> Path:
    """
    Save a PNG with one heat map per read and write head (slot x time), the DNC's usage over time
    and its final temporal link matrix.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels: list[tuple[str, np.ndarray]] = []
    for head in range(trace["write_weights"].shape[1]):
        panels.append((f"write head {head}", trace["write_weights"][:, head].T))
    for head in range(trace["read_weights"].shape[1]):
        panels.append((f"read head {head}", trace["read_weights"][:, head].T))
    if "usage" in trace:
        panels.append(("usage", trace["usage"].T))
    n_columns = len(panels) + ("link" in trace)
    fig, axes = plt.subplots(1, n_columns, figsize=(3.2 * n_columns, 3.4), squeeze=False)
    for ax, (name, image) in zip(axes[0], panels):
        shown = ax.imshow(image, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=max(1e-6, float(image.max())))
        ax.set_title(name)
        ax.set_xlabel("time step")
        ax.set_ylabel("memory slot")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        fig.colorbar(shown, ax=ax, fraction=0.046)
    if "link" in trace:
        ax = axes[0][-1]
        shown = ax.imshow(trace["link"], cmap="magma", origin="lower")
        ax.set_title("link L[i, j] (last step)")
        ax.set_xlabel("slot j (written before)")
        ax.set_ylabel("slot i (written after)")
        fig.colorbar(shown, ax=ax, fraction=0.046)
    episode_return = float(np.sum(trace["rewards"]))
    fig.suptitle(f"{title}  (episode return {episode_return:.2f})".strip())
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_memory_trace(
    model: BaseAlgorithm,
    env: gym.Env,
    path: Union[str, Path],
    seed: Optional[int] = None,
    title: str = "",
    obs_transform: Optional[Callable[[Any], Any]] = None,
) -> Path:
    """Record one episode of ``model`` on ``env`` and save its memory trace as a PNG."""
    return plot_memory_trace(record_episode(model, env, seed=seed, obs_transform=obs_transform), path, title=title)


def main(argv: Optional[list[str]] = None) -> None:
    """
    The command line (see the module docstring).

    :param argv: the arguments (default: ``sys.argv[1:]``)
    """
    from sb3_memory.a2c import MemoryA2C
    from sb3_memory.dqn import MemoryDQN
    from sb3_memory.envs.kwargs import FORMAT, env_kwarg_argument, parse_env_kwargs
    from sb3_memory.ppo import MemoryPPO
    from sb3_memory.ppo_mask import MaskableMemoryPPO
    from sb3_memory.sac import MemorySAC

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=ALGORITHMS, help="the algorithm that saved the model (default: read from the file)")
    parser.add_argument("--model", required=True, help="path of a saved model (.zip)")
    parser.add_argument("--env", required=True)
    parser.add_argument("--env-kwargs", nargs="*", default=[], type=env_kwarg_argument, help=FORMAT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="memory_trace.png")
    parser.add_argument(
        "--vecnormalize", help="VecNormalize statistics the model was trained with (rl-zoo3: vecnormalize.pkl)"
    )
    args = parser.parse_args(argv)
    try:
        import rl_zoo3.import_envs  # noqa: F401  (CartPoleNoVel-v1 and the other zoo envs, if installed)
    except ImportError:
        pass
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    saved_by = algorithm_of_file(args.model)
    same_policies = {"memory_ppo", "memory_a2c"}  # a mismatch between these two shows in SB3's load
    if args.algo is not None and saved_by is not None and args.algo != saved_by and {args.algo, saved_by} != same_policies:
        raise ValueError(
            f"--algo {args.algo}, but {args.model} holds a {saved_by} model: pass --algo {saved_by} or leave --algo out"
        )
    algo = args.algo or saved_by or "memory_ppo"
    algorithms: dict[str, type[BaseAlgorithm]] = {
        "memory_ppo": MemoryPPO,
        "memory_a2c": MemoryA2C,
        "maskable_memory_ppo": MaskableMemoryPPO,
        "memory_dqn": MemoryDQN,
        "memory_sac": MemorySAC,
    }
    model = algorithms[algo].load(args.model, device="cpu")
    actor_core(model.policy)  # an LSTM policy fails here, before the environment is made
    env = gym.make(args.env, **env_kwargs)
    obs_transform = None
    if args.vecnormalize:
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        obs_transform = VecNormalize.load(args.vecnormalize, DummyVecEnv([lambda: env])).normalize_obs
    path = render_memory_trace(model, env, args.out, seed=args.seed, title=args.env, obs_transform=obs_transform)
    print(f"saved {path}")


if __name__ == "__main__":
    main()

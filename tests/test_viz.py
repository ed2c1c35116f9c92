import gymnasium as gym
import numpy as np
import pytest
import torch

from sb3_memory import MemoryPPO
from sb3_memory.viz import record_episode, render_memory_trace

SMALL = dict(memory_units=8, memory_unit_size=4, controller_dim=16)


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_trace_follows_the_episode(policy):
    env_kwargs = dict(corridor_length=6)
    model = MemoryPPO(
        policy, gym.make("sb3_memory/PassiveTMaze-v0", **env_kwargs), n_steps=16, batch_size=16, seed=0, policy_kwargs=SMALL
    )
    trace = record_episode(model, gym.make("sb3_memory/PassiveTMaze-v0", **env_kwargs), seed=3)
    steps = 7  # corridor_length + 1
    assert trace["rewards"].shape == (steps,)
    assert trace["read_weights"].shape == (steps, model.policy.core.num_read_heads, 8)
    # Replaying the same episode by hand gives the same return and the same final read weighting.
    env = gym.make("sb3_memory/PassiveTMaze-v0", **env_kwargs)
    obs, _ = env.reset(seed=3)
    state, start, total = None, np.ones(1, dtype=bool), 0.0
    for _ in range(steps):
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        start = np.zeros(1, dtype=bool)
        obs, reward, *_ = env.step(action)
        total += reward
    assert trace["rewards"].sum() == pytest.approx(total)
    final = model.policy.core.unflatten_state(model.policy.split_state(torch.as_tensor(state))[0])
    np.testing.assert_allclose(trace["read_weights"][-1], final.read_weights[0].numpy())
    if policy == "DNCPolicy":
        assert np.all((trace["usage"] >= 0) & (trace["usage"] <= 1))
        assert np.all(np.diag(trace["link"]) == 0)
    else:
        np.testing.assert_allclose(trace["read_weights"].sum(-1), 1.0, atol=1e-5)


def test_render_writes_png(tmp_path):
    model = MemoryPPO(
        "DNCPolicy",
        gym.make("sb3_memory/PassiveTMaze-v0", corridor_length=4),
        n_steps=16,
        batch_size=16,
        seed=0,
        policy_kwargs=SMALL,
    )
    path = render_memory_trace(
        model, gym.make("sb3_memory/PassiveTMaze-v0", corridor_length=4), tmp_path / "trace.png", seed=0
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[1] > 4 * image.shape[0]  # five panels side by side (3 heads, usage, link)
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_record_episode_rejects_non_memory_models():
    from stable_baselines3 import PPO

    with pytest.raises(TypeError, match="memory policy"):
        record_episode(PPO("MlpPolicy", "CartPole-v1", n_steps=16), gym.make("CartPole-v1"))


@pytest.mark.parametrize("algo", ["memory_dqn", "memory_sac"])
def test_off_policy_traces_follow_the_acting_core(algo):
    """MemoryDQN's online Q-network core, MemorySAC's actor core: the trace ends at the state predict returns."""
    from sb3_memory import MemoryDQN, MemorySAC

    def make_env():
        if algo == "memory_dqn":
            return gym.make("sb3_memory/PassiveTMaze-v0", corridor_length=4)
        return gym.make("Pendulum-v1", max_episode_steps=12)

    algorithm = MemoryDQN if algo == "memory_dqn" else MemorySAC
    model = algorithm("DNCPolicy", make_env(), buffer_size=64, seed=0, policy_kwargs=SMALL)
    trace = record_episode(model, make_env(), seed=5)
    env = make_env()
    obs, _ = env.reset(seed=5)
    state, start, done, steps = None, np.ones(1, dtype=bool), False, 0
    while not done:
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        start = np.zeros(1, dtype=bool)
        obs, _, terminated, truncated, _ = env.step(action)
        done, steps = terminated or truncated, steps + 1
    flat = torch.as_tensor(state)
    if algo == "memory_dqn":
        core, part = model.policy.q_net.core, flat
    else:
        core, part = model.policy.actor.core, model.policy.split_state(flat)[0]
    final = core.unflatten_state(part)
    assert trace["write_weights"].shape == (steps, 1, 8)
    np.testing.assert_allclose(trace["write_weights"][-1], final.write_weights[0].numpy())
    np.testing.assert_allclose(trace["usage"][-1], final.usage[0].numpy())

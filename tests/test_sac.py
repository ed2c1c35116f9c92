"""MemorySAC: sequence replay of the actor's and the critic's cores, checked against the rollout."""

from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env
from test_algorithms import RandomEpisodeEnv

from sb3_memory import MemorySAC

CORE = dict(memory_units=8, memory_unit_size=4, controller_dim=16, net_arch=[32, 32])


def continuous_env() -> RandomEpisodeEnv:
    return RandomEpisodeEnv(action_space=spaces.Box(-2.0, 2.0, (2,), np.float32), min_length=3, max_length=7)


def make_model(policy: str = "NTMPolicy", n_envs: int = 2, **kwargs: Any) -> MemorySAC:
    env = make_vec_env(continuous_env, n_envs=n_envs, seed=0)
    settings: dict[str, Any] = dict(
        learning_starts=30, buffer_size=400, batch_size=6, burn_in=2, train_length=4, n_steps=2, seed=0, device="cpu",
        policy_kwargs=CORE if policy != "LSTMPolicy" else dict(controller_dim=16, net_arch=[32, 32]),
    )  # fmt: skip
    settings.update(kwargs)
    return MemorySAC(policy, env, **settings)


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
def test_zero_learning_rate_replays_both_cores(policy):
    """The actor's means and the critic core's outputs replayed from stored states equal the rollout's."""
    model = make_model(policy, learning_rate=0.0, ent_coef=0.1)
    recorded: list[tuple[th.Tensor, th.Tensor]] = []
    original = model.policy._predict

    def recording(observation, state, episode_starts, deterministic=False):
        actor_state, critic_state = model.policy.split_state(state)
        latent_pi, _ = model.actor.latent(observation, actor_state, episode_starts)
        latent_q, _ = model.critic.latent(observation, critic_state, episode_starts)
        recorded.append((model.actor._params(latent_pi)[0].detach().clone(), latent_q.detach().clone()))
        return original(observation, state, episode_starts, deterministic)

    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.policy._predict = recording  # type: ignore[method-assign]
    model.learn(120 * model.n_envs)
    model.policy._predict = original  # type: ignore[method-assign]
    # (the target critic's polyak average of two equal copies can move by rounding; it is not replayed here)
    assert all(th.equal(v, before[k]) for k, v in model.policy.state_dict().items() if not k.startswith("critic_target"))
    means = th.stack([r[0] for r in recorded])  # (steps, n_envs, action_dim)
    latents = th.stack([r[1] for r in recorded])
    buffer = model.replay_buffer
    assert buffer.episode_starts[1 : buffer.pos].sum() >= 10
    envs = np.arange(model.n_envs)
    with th.no_grad():
        for start in buffer.valid_starts():
            data = buffer.sequences(np.full(model.n_envs, start), envs)
            actor_state, critic_state = model.policy.split_state(data.states)
            latent_pi, _ = model.actor.latent(data.observations, actor_state, data.episode_starts)
            latent_q, _ = model.critic.latent(data.observations, critic_state, data.episode_starts)
            steps = slice(start, start + model.sequence_length)
            th.testing.assert_close(model.actor._params(latent_pi)[0].view_as(means[steps]), means[steps], atol=1e-5, rtol=0)
            th.testing.assert_close(latent_q.view_as(latents[steps]), latents[steps], atol=1e-5, rtol=0)
    # The replayed actions are the rollout's, scaled to [-1, 1].
    assert float(np.abs(buffer.actions[: buffer.pos]).max()) <= 1.0


def test_burn_in_gets_no_gradient_and_the_target_critic_runs_from_the_stored_state():
    model = make_model()
    model.learn(80)
    data = model.replay_buffer.sample(5)
    observations = data.observations.clone().requires_grad_()
    losses = model.sequence_losses(data._replace(observations=observations), th.tensor(0.1))
    (losses["critic_loss"] + model.actor_loss(losses, th.tensor(0.1))).backward()
    rows = model.burn_in * 5
    assert observations.grad is not None
    assert float(observations.grad[:rows].abs().max()) == 0.0 and float(observations.grad[rows:].abs().max()) > 0.0
    # The target critic's memory: its own core over the whole sequence from the stored critic state.
    with th.no_grad():
        for parameter in model.critic.parameters():
            parameter.add_(0.1 * th.randn_like(parameter))
        _, critic_state = model.policy.split_state(data.states)
        whole, _ = model.critic_target.latent(data.observations, critic_state, data.episode_starts)
        burnt = model.critic.latent(data.observations[:rows], critic_state, data.episode_starts[:rows])[1]
        mixed, _ = model.critic_target.latent(data.observations[rows:], burnt, data.episode_starts[rows:])
    assert float((mixed - whole[rows:]).abs().max()) > 1e-4  # other state, other values: the check can fail


def test_training_moves_actor_critic_and_entropy_and_save_load_predicts_the_same(tmp_path):
    model = make_model(learning_rate=1e-3)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(120)
    changed = {k.split(".")[0] for k, v in model.policy.state_dict().items() if not th.equal(v, before[k])}
    assert {"actor", "critic", "critic_target"} <= changed
    assert model.log_ent_coef is not None and float(model.log_ent_coef.detach()) != 0.0
    obs = model.env.reset()
    model.save(tmp_path / "sac")
    loaded = MemorySAC.load(tmp_path / "sac", env=model.env)
    state = loaded_state = None
    starts = np.ones(model.n_envs, dtype=bool)
    for _ in range(5):
        action, state = model.predict(obs, state, starts, deterministic=True)
        again, loaded_state = loaded.predict(obs, loaded_state, starts, deterministic=True)
        np.testing.assert_array_equal(again, action)
        starts = np.zeros(model.n_envs, dtype=bool)
    assert model.action_space.contains(action[0])


def test_the_replay_buffer_round_trips_into_a_fresh_model_that_trains_on(tmp_path):
    model = make_model(learning_starts=1000)
    model.learn(60)  # 30 steps per environment, stored only
    model.save_replay_buffer(tmp_path / "buffer")
    fresh = make_model(learning_starts=1000)
    fresh.load_replay_buffer(tmp_path / "buffer")
    buffer, loaded = model.replay_buffer, fresh.replay_buffer
    assert loaded.pos == buffer.pos == 30 and loaded.actions.dtype == np.float32
    np.random.seed(0)
    original = buffer.sample(8)
    np.random.seed(0)
    again = loaded.sample(8)
    for name, value in original._asdict().items():
        other = getattr(again, name)
        assert (value is None and other is None) or th.equal(value, other), name
    fresh.learning_starts = 0
    fresh.learn(20, reset_num_timesteps=False)  # into the loaded buffer, training on its sequences
    assert loaded.pos == 40 and fresh._n_updates > 0


def test_bad_settings_name_the_fix():
    with pytest.raises(TypeError, match="MemorySAC needs a memory policy"):
        MemorySAC(SAC.policy_aliases["MlpPolicy"], make_vec_env(continuous_env, n_envs=1))
    with pytest.raises(ValueError, match="share_features_extractor=False"):
        make_model(policy_kwargs={**CORE, "share_features_extractor": True})
    with pytest.raises(ValueError, match=r"MemorySAC takes Box actions only.*use MemoryDQN for Discrete"):
        MemorySAC("NTMPolicy", make_vec_env(lambda: RandomEpisodeEnv(), n_envs=1))


def test_a_timed_out_step_bootstraps_from_its_last_observation_with_both_cores_memory(monkeypatch):
    def time_limited() -> TimeLimit:
        space = spaces.Box(-2.0, 2.0, (2,), np.float32)
        return TimeLimit(RandomEpisodeEnv(action_space=space, min_length=1000, max_length=1000), max_episode_steps=5)

    settings = dict(learning_starts=30, buffer_size=400, batch_size=6, burn_in=2, train_length=4, n_steps=2, seed=0)
    model = MemorySAC("NTMPolicy", make_vec_env(time_limited, n_envs=2, seed=0), device="cpu", policy_kwargs=CORE, **settings)
    model.learn(80)
    # A deterministic actor (its mean action, log-probability 1), so the value can be recomputed.
    monkeypatch.setattr(
        model.actor, "action_log_prob", lambda latent: (th.tanh(model.actor._params(latent)[0]), th.ones(latent.shape[0]))
    )
    batch, ent_coef = 12, th.tensor([0.3])
    data = model.replay_buffer.sample(batch)
    while data.timeouts[model.burn_in : -1].sum() == 0:
        data = model.replay_buffer.sample(batch)
    values = model.timeout_values(data, ent_coef)
    assert values is not None
    checked = 0
    for step, sequence in zip(*np.nonzero(data.timeouts.numpy())):
        if not model.burn_in <= step < model.sequence_length - 1:
            continue
        rows = [t * batch + sequence for t in range(step + 1)]
        obs = th.cat([data.observations[rows], data.terminal_observations[step * batch + sequence][None]])
        starts = th.cat([data.episode_starts[rows], th.zeros(1)])
        actor_state, critic_state = model.policy.split_state(data.states[sequence : sequence + 1])
        with th.no_grad():
            action = th.tanh(model.actor._params(model.actor.latent(obs, actor_state, starts)[0][-1:])[0])
            latent = model.critic_target.latent(obs, critic_state, starts)[0][-1:]
            expected = th.cat(model.critic_target.q_values(latent, action), dim=1).min() - 0.3
        assert float(values[step - model.burn_in, sequence]) == pytest.approx(float(expected), abs=1e-5)
        checked += 1
    assert checked > 0

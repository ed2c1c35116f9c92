"""MemoryPPO / MemoryA2C end to end, in the spirit of sb3-contrib's tests/test_lstm.py.

Every test uses tiny cores (8 x 4 memory, 16-unit controller) and a few rollouts of 16 steps.
The central invariant is checked in several configurations: a rollout replayed chunk by chunk
from the buffer's stored states (with the episode starts inside the chunks) gives back exactly
the log-probabilities and values computed step by step while collecting it.
"""

import csv
import json
import math
import zipfile
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import CombinedExtractor, NatureCNN
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_memory import MemoryA2C, MemoryPPO
from sb3_memory.common.buffers import MemoryDictRolloutBuffer, MemoryRolloutBuffer

ALGOS = [MemoryPPO, MemoryA2C]
VECTOR_POLICIES = ["NTMPolicy", "DNCPolicy", "LSTMPolicy"]
N_STEPS = 16


# --------------------------------------------------------------------------------------------
# Test environments
# --------------------------------------------------------------------------------------------


def _sample(space: spaces.Space, rng: np.random.Generator) -> Any:
    """Random element of a Box or Dict-of-Box space drawn from the env's own generator."""
    if isinstance(space, spaces.Dict):
        return {key: _sample(sub, rng) for key, sub in space.spaces.items()}
    assert isinstance(space, spaces.Box)
    if np.issubdtype(space.dtype, np.integer):
        return rng.integers(space.low, space.high, endpoint=True, dtype=space.dtype)
    return rng.uniform(space.low, space.high).astype(space.dtype)


class RandomEpisodeEnv(gym.Env):
    """
    Random observations, episodes that terminate after a random number of steps in
    ``[min_length, max_length]``. The reward depends on the action and the observation, so
    learning changes the parameters.
    """

    def __init__(
        self,
        observation_space: Optional[spaces.Space] = None,
        action_space: Optional[spaces.Space] = None,
        min_length: int = 10,
        max_length: int = 10,
    ) -> None:
        self.observation_space = observation_space or spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = action_space or spaces.Discrete(2)
        self.min_length, self.max_length = min_length, max_length
        self._length = self._t = 0
        self._obs: Any = None

    def _signal(self) -> float:
        obs = self._obs["vec"] if isinstance(self._obs, dict) else self._obs
        return float(np.asarray(obs, dtype=np.float64).ravel()[0] > (127 if obs.dtype == np.uint8 else 0))

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._t = 0
        self._length = int(self.np_random.integers(self.min_length, self.max_length, endpoint=True))
        self._obs = _sample(self.observation_space, self.np_random)
        return self._obs, {}

    def step(self, action):
        first = float(np.asarray(action, dtype=np.float64).ravel()[0])
        reward = 1.0 if (first > 0) == bool(self._signal()) else 0.0
        self._t += 1
        self._obs = _sample(self.observation_space, self.np_random)
        return self._obs, reward, self._t >= self._length, False, {}


def multi_discrete_env() -> RandomEpisodeEnv:
    return RandomEpisodeEnv(action_space=spaces.MultiDiscrete([3, 2]))


def multi_binary_env() -> RandomEpisodeEnv:
    return RandomEpisodeEnv(action_space=spaces.MultiBinary(3))


def image_env() -> RandomEpisodeEnv:
    # NatureCNN needs at least 36 x 36 pixels.
    return RandomEpisodeEnv(observation_space=spaces.Box(0, 255, (36, 36, 1), np.uint8), min_length=3, max_length=7)


def dict_env() -> RandomEpisodeEnv:
    observation_space = spaces.Dict(
        {"vec": spaces.Box(-1.0, 1.0, (3,), np.float32), "img": spaces.Box(0, 255, (36, 36, 1), np.uint8)}
    )
    return RandomEpisodeEnv(observation_space=observation_space, min_length=3, max_length=7)


def short_episode_env() -> RandomEpisodeEnv:
    """Episodes of 3 to 7 steps: several episode starts inside every chunk of 8 steps."""
    return RandomEpisodeEnv(min_length=3, max_length=7)


def short_continuous_env() -> RandomEpisodeEnv:
    return RandomEpisodeEnv(action_space=spaces.Box(-1.0, 1.0, (2,), np.float32), min_length=3, max_length=7)


def truncated_env() -> gym.Env:
    """Episodes end by themselves after 3 to 8 steps, or are truncated by the TimeLimit after 5."""
    return TimeLimit(RandomEpisodeEnv(min_length=3, max_length=8), max_episode_steps=5)


TEST_ENVS = [multi_discrete_env, multi_binary_env, image_env, dict_env, short_episode_env, short_continuous_env, truncated_env]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def core_kwargs(policy: str) -> dict[str, Any]:
    if "LSTM" in policy:
        return dict(controller_dim=16)
    return dict(memory_units=8, memory_unit_size=4, controller_dim=16)


def make_model(algo, policy: str, env, *, n_envs: int = 2, seed: int = 0, policy_kwargs=None, **kwargs):
    """A tiny model; ``env`` is an id, an env factory or a VecEnv."""
    if not isinstance(env, VecEnv):
        env = make_vec_env(env, n_envs=n_envs, seed=seed)
    settings: dict[str, Any] = dict(n_steps=N_STEPS, seed=seed, device="cpu")
    if algo is MemoryPPO:
        settings.update(batch_size=32, n_epochs=2)
    settings.update(kwargs)
    return algo(policy, env, policy_kwargs={**core_kwargs(policy), **(policy_kwargs or {})}, **settings)


def snapshot(model) -> dict[str, th.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


def changed_parameters(before: dict[str, th.Tensor], model) -> set[str]:
    return {name for name, value in model.policy.state_dict().items() if not th.equal(value, before[name])}


def assert_learned(before: dict[str, th.Tensor], model, *prefixes: str) -> None:
    changed = changed_parameters(before, model)
    for prefix in ("core.", "action_net.", "value_net.", *prefixes):
        assert any(name.startswith(prefix) for name in changed), f"no parameter under {prefix!r} changed: {sorted(changed)}"


def batch_actions(model, actions: th.Tensor) -> th.Tensor:
    return actions.long().flatten() if isinstance(model.action_space, spaces.Discrete) else actions


def assert_rollout_replay_matches(model, batch_size: Optional[int]) -> None:
    """
    Replay the (full) rollout buffer chunk by chunk and compare with what the rollout computed.

    Also checks the comparison is not vacuous: replaying from the initial state, or without the
    episode starts inside the chunks, must give clearly different numbers.
    """
    policy = model.policy
    policy.set_training_mode(False)
    wrong_state_gap = ignored_starts_gap = 0.0
    rows = 0
    with th.no_grad():
        for samples in model.rollout_buffer.get(batch_size):
            actions = batch_actions(model, samples.actions)
            values, log_prob, _ = policy.evaluate_actions(
                samples.observations, actions, samples.states, samples.episode_starts
            )
            th.testing.assert_close(log_prob, samples.old_log_prob, atol=1e-5, rtol=0)
            th.testing.assert_close(values.flatten(), samples.old_values, atol=1e-5, rtol=0)
            rows += len(log_prob)

            fresh = policy.initial_state(samples.states.shape[0])
            _, log_prob_f, _ = policy.evaluate_actions(samples.observations, actions, fresh, samples.episode_starts)
            wrong_state_gap = max(wrong_state_gap, (log_prob_f - log_prob).abs().max().item())
            no_starts = th.zeros_like(samples.episode_starts)
            _, log_prob_n, _ = policy.evaluate_actions(samples.observations, actions, samples.states, no_starts)
            ignored_starts_gap = max(ignored_starts_gap, (log_prob_n - log_prob).abs().max().item())
    assert rows == model.n_steps * model.n_envs
    assert wrong_state_gap > 1e-4, "the log-probabilities do not depend on the stored states: the check is vacuous"
    assert ignored_starts_gap > 1e-4, "the log-probabilities do not depend on episode starts: the check is vacuous"


def assert_logged_losses_match_buffer(model) -> None:
    """With learning_rate=0, train()'s value loss is the MSE of the rollout's own values (and A2C's policy loss too)."""
    buffer, logged = model.rollout_buffer, model.logger.name_to_value
    returns, values = buffer.returns.flatten(), buffer.values.flatten()
    assert logged["train/value_loss"] == pytest.approx(float(np.mean((returns - values) ** 2)), rel=1e-5, abs=1e-7)
    if isinstance(model, MemoryA2C):
        expected = -float(np.mean(buffer.advantages.flatten() * buffer.log_probs.flatten()))
        assert logged["train/policy_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


class RecordSteps(BaseCallback):
    """Keeps, for every rollout step, the state fed to the policy and what the env returned."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[th.Tensor] = []
        self.new_states: list[th.Tensor] = []
        self.raw_rewards: list[np.ndarray] = []
        self.dones: list[np.ndarray] = []
        self.infos: list[list[dict]] = []

    def _on_rollout_start(self) -> None:
        self._entering = self.model._last_memory_state.clone()  # type: ignore[attr-defined]

    def _on_step(self) -> bool:
        # Called before collect_rollouts adds the timeout bootstrap to ``rewards`` in place. The
        # rollout updates the state in place, so the state a step was fed is the last step's new one.
        new_state = self.locals["new_state"].clone()
        self.states.append(self._entering)
        self.new_states.append(new_state)
        self._entering = new_state
        self.raw_rewards.append(np.array(self.locals["rewards"], dtype=np.float32))
        self.dones.append(np.array(self.locals["dones"]))
        self.infos.append(self.locals["infos"])
        return True


def collect_one_rollout(model, callback: Optional[BaseCallback] = None) -> None:
    """Fill ``model.rollout_buffer`` once, without training (the buffer keeps its (n_steps, n_envs) layout)."""
    _, wrapped = model._setup_learn(model.n_steps * model.n_envs, callback)
    wrapped.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, wrapped, model.rollout_buffer, model.n_steps)


# --------------------------------------------------------------------------------------------
# Environments and action spaces
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_fn", TEST_ENVS)
def test_check_test_envs(env_fn):
    env = env_fn()
    check_env(env)
    # Episodes end within their documented bounds.
    env.reset(seed=0)
    for _ in range(3):
        env.reset()
        for length in range(1, 20):  # noqa: B007 (read after the loop)
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
        assert 3 <= length <= 10


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("policy", VECTOR_POLICIES)
@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1", multi_discrete_env, multi_binary_env])
def test_action_spaces(algo, policy, env):
    model = make_model(algo, policy, env)
    before = snapshot(model)
    model.learn(2 * N_STEPS * model.n_envs)
    assert_learned(before, model)

    obs = model.env.reset()
    actions, state = model.predict(obs)
    assert state.shape == (model.n_envs, model.policy.state_size)
    assert not np.allclose(state, model.policy.initial_state(model.n_envs).numpy()), "predict did not update the memory"
    assert actions.shape == (model.n_envs, *model.action_space.shape)
    for action in actions:
        assert model.action_space.contains(action), action
    # The buffer stored actions of the right width for the distribution.
    assert model.rollout_buffer.action_dim == (
        1 if isinstance(model.action_space, spaces.Discrete) else int(np.prod(model.action_space.shape))
    )


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_gsde(algo, policy):
    model = make_model(algo, policy, "Pendulum-v1", use_sde=True, sde_sample_freq=4)
    latent_dim = model.policy.mlp_extractor.latent_dim_pi
    assert model.policy.log_std.shape == (latent_dim, 1), "gSDE has a (latent_dim, action_dim) log-std"
    before = snapshot(model)
    model.learn(2 * N_STEPS * model.n_envs)
    assert_learned(before, model, "log_std")
    actions, _ = model.predict(model.env.reset())
    assert np.all(np.abs(actions) <= 2.0) and actions.shape == (2, 1)


# --------------------------------------------------------------------------------------------
# Images and Dict observations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("policy", ["CnnNTMPolicy", "CnnDNCPolicy", "CnnLSTMPolicy"])
def test_image_observations(algo, policy):
    model = make_model(
        algo,
        policy,
        image_env,
        learning_rate=0.0,
        sequence_length=8,
        policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=16)),
    )
    assert isinstance(model.policy.features_extractor, NatureCNN)
    assert model.policy.core.input_dim == 16
    assert type(model.rollout_buffer) is MemoryRolloutBuffer
    model.learn(N_STEPS * model.n_envs)
    assert model.rollout_buffer.observations.dtype == np.uint8
    assert_rollout_replay_matches(model, 32 if algo is MemoryPPO else None)

    # A single channel-last image from the raw env is transposed as the VecEnv's are.
    raw, _ = image_env().reset(seed=3)
    action, state = model.predict(raw, deterministic=True)
    batch_action, batch_state = model.predict(np.transpose(raw, (2, 0, 1))[None], deterministic=True)
    assert action.shape == () and action == batch_action[0]
    np.testing.assert_array_equal(state, batch_state)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("policy", ["MultiInputNTMPolicy", "MultiInputDNCPolicy", "MultiInputLSTMPolicy"])
def test_dict_observations(algo, policy):
    model = make_model(
        algo,
        policy,
        dict_env,
        learning_rate=0.0,
        sequence_length=8,
        policy_kwargs=dict(features_extractor_kwargs=dict(cnn_output_dim=8)),
    )
    assert isinstance(model.policy.features_extractor, CombinedExtractor)
    assert model.policy.core.input_dim == 3 + 8
    assert isinstance(model.rollout_buffer, MemoryDictRolloutBuffer)
    model.learn(N_STEPS * model.n_envs)
    assert set(model.rollout_buffer.observations) == {"vec", "img"}
    assert_rollout_replay_matches(model, 32 if algo is MemoryPPO else None)

    obs = model.env.reset()
    actions, state = model.predict(obs, deterministic=True)
    assert actions.shape == (2,) and state.shape == (2, model.policy.state_size)
    single = {key: value[0] for key, value in obs.items()}
    action, state_one = model.predict(single, deterministic=True)
    assert action.shape == () and action == actions[0]
    np.testing.assert_allclose(state_one[0], state[0], atol=1e-6)


# --------------------------------------------------------------------------------------------
# Critic memory modes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
@pytest.mark.parametrize("critic_memory", ["shared", "detached", "separate", "none"])
def test_critic_memory_modes(policy, critic_memory):
    model = make_model(MemoryPPO, policy, short_episode_env, policy_kwargs=dict(critic_memory=critic_memory))
    p = model.policy
    core_size = p.core.state_size
    if critic_memory in ("shared", "detached"):
        assert p.critic_core is None and p.critic_projection is None
        assert p.state_size == core_size
    elif critic_memory == "separate":
        assert p.critic_core is not None and p.critic_projection is None
        assert p.critic_core is not p.core and p.state_size == 2 * core_size
    else:
        assert p.critic_core is None and p.critic_projection is not None
        assert p.state_size == core_size

    # Bring both parts of the state away from the initial state.
    obs = obs_as_tensor(model.env.reset(), p.device)
    n = model.n_envs
    state = p.initial_state(n)
    with th.no_grad():
        for _ in range(3):
            _, _, _, state = p(obs, state, th.zeros(n))
        fresh = p.initial_state(n)
        zeros = th.zeros(n)
        values = p.predict_values(obs, state, zeros)
        logits = p.get_distribution(obs, state, zeros)[0].distribution.logits
        # Swap in the initial state of the actor part only, then of the critic part only.
        (actor, critic), (fresh_actor, fresh_critic) = p.split_state(state), p.split_state(fresh)
        actor_fresh = p.join_state(fresh_actor, critic)
        critic_fresh = p.join_state(actor, fresh_critic)
        values_actor_fresh = p.predict_values(obs, actor_fresh, zeros)
        logits_actor_fresh = p.get_distribution(obs, actor_fresh, zeros)[0].distribution.logits
        values_critic_fresh = p.predict_values(obs, critic_fresh, zeros)
        logits_critic_fresh = p.get_distribution(obs, critic_fresh, zeros)[0].distribution.logits
    assert not th.allclose(logits_actor_fresh, logits), "the actor must read the actor core's state"
    if critic_memory in ("shared", "detached"):
        assert not th.allclose(values_actor_fresh, values), "the shared critic reads the core's state"
    elif critic_memory == "separate":
        th.testing.assert_close(values_actor_fresh, values, atol=0, rtol=0)  # critic ignores the actor state
        assert not th.allclose(values_critic_fresh, values), "the critic reads its own core's state"
        th.testing.assert_close(logits_critic_fresh, logits, atol=0, rtol=0)  # actor ignores the critic state
    else:
        th.testing.assert_close(values_actor_fresh, values, atol=0, rtol=0)  # the critic has no memory
        th.testing.assert_close(p.predict_values(obs, fresh, zeros), values, atol=0, rtol=0)

    # Gradients of the value loss alone reach the critic's memory and nothing else's.
    collect_one_rollout(model)
    samples = next(model.rollout_buffer.get(32))
    p.set_training_mode(True)
    p.optimizer.zero_grad()
    values, log_prob, _ = p.evaluate_actions(
        samples.observations, batch_actions(model, samples.actions), samples.states, samples.episode_starts
    )
    ((samples.returns - values.flatten()) ** 2).mean().backward()

    def grad_norm(module) -> float:
        return sum(float(q.grad.abs().sum()) for q in module.parameters() if q.grad is not None)

    if critic_memory == "shared":
        assert grad_norm(p.core) > 0
    elif critic_memory == "detached":
        assert grad_norm(p.core) == 0 and grad_norm(p.value_net) > 0
        # nothing before the detach point (core, features extractor) gets value gradients
        trained = {name for name, q in p.named_parameters() if q.grad is not None and float(q.grad.abs().sum()) > 0}
        assert all(name.startswith(("value_net.", "mlp_extractor.value_net.")) for name in trained), sorted(trained)
        # while the policy loss still trains the core
        p.optimizer.zero_grad()
        _, log_prob, _ = p.evaluate_actions(
            samples.observations, batch_actions(model, samples.actions), samples.states, samples.episode_starts
        )
        (-(samples.advantages * log_prob).mean()).backward()
        assert grad_norm(p.core) > 0
    elif critic_memory == "separate":
        assert grad_norm(p.critic_core) > 0 and grad_norm(p.core) == 0
    else:
        assert grad_norm(p.critic_projection) > 0 and grad_norm(p.core) == 0

    # And learning trains them.
    before = snapshot(model)
    model.learn(2 * N_STEPS * model.n_envs)
    extra = {"shared": (), "detached": (), "separate": ("critic_core.",), "none": ("critic_projection.",)}[critic_memory]
    assert_learned(before, model, *extra)


def test_separate_critic_with_separate_features_extractors():
    model = make_model(
        MemoryPPO,
        "NTMPolicy",
        short_episode_env,
        learning_rate=0.0,
        sequence_length=8,
        policy_kwargs=dict(critic_memory="separate", share_features_extractor=False),
    )
    assert model.policy.pi_features_extractor is not model.policy.vf_features_extractor
    model.learn(N_STEPS * model.n_envs)
    assert_rollout_replay_matches(model, 32)


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_same_seed_same_parameters(algo, policy):
    def trained(seed: int) -> dict[str, th.Tensor]:
        model = make_model(algo, policy, short_episode_env, seed=seed)
        model.learn(2 * N_STEPS * model.n_envs)
        return snapshot(model)

    first, second, other = trained(3), trained(3), trained(4)
    assert first.keys() == second.keys()
    for name in first:
        assert th.equal(first[name], second[name]), name
    assert any(not th.equal(first[name], other[name]) for name in first)


# --------------------------------------------------------------------------------------------
# The rollout replays exactly (learning_rate=0)
# --------------------------------------------------------------------------------------------


REPLAY_CASES = [
    ("NTMPolicy", dict(critic_memory="shared"), short_episode_env),
    ("DNCPolicy", dict(critic_memory="shared"), short_episode_env),
    ("LSTMPolicy", dict(critic_memory="shared"), short_episode_env),
    ("NTMPolicy", dict(critic_memory="separate"), short_episode_env),
    ("DNCPolicy", dict(critic_memory="none"), short_episode_env),
    ("DNCPolicy", dict(critic_memory="detached"), short_episode_env),
    ("LSTMPolicy", dict(critic_memory="separate", controller="gru"), short_episode_env),
    ("NTMPolicy", dict(controller="mlp", num_read_heads=2), short_episode_env),
    ("DNCPolicy", dict(critic_memory="separate"), short_continuous_env),
    ("NTMPolicy", dict(sparse_top_k=3, backend="reference"), short_episode_env),
    ("NTMPolicy", dict(sparse_top_k=3), short_episode_env),  # the sparse kernels
    ("DNCPolicy", dict(sparse_top_k=3), short_episode_env),
    # Not the sparse DNC's reference path: where two slots tie to within rounding (usages after a
    # reset, rows a write filled with multiples of one vector), the last-bit difference between the
    # rollout's and the replay's input projections (matrix products of other batch shapes) can
    # change which slot is kept. The kernels project each row on its own, so their replay is exact.
]


@pytest.mark.parametrize("policy, policy_kwargs, env", REPLAY_CASES)
def test_ppo_zero_learning_rate_replays_rollout(policy, policy_kwargs, env):
    model = make_model(
        MemoryPPO,
        policy,
        env,
        n_envs=3,
        learning_rate=0.0,
        batch_size=24,
        sequence_length=8,
        n_epochs=2,
        policy_kwargs=policy_kwargs,
    )
    before = snapshot(model)
    model.learn(N_STEPS * model.n_envs)
    assert not changed_parameters(before, model)

    # Episodes of 3 to 7 steps start inside the chunks of 8, not only at their first step.
    starts = model.rollout_buffer.episode_starts.reshape(-1, model.sequence_length)  # rows are chunks
    assert starts[:, 1:].sum() >= 6
    # Some chunks begin in the middle of an episode, so their stored state is not the initial one.
    stored = model.rollout_buffer.stored_chunk_states().reshape(-1, model.policy.state_size)
    fresh = model.policy.initial_state(1)
    assert (stored - fresh).abs().amax(dim=1).gt(1e-3).sum() >= 2
    assert model.rollout_buffer.compact_states == ("sparse_top_k" in policy_kwargs)  # and replayed from them below

    assert_rollout_replay_matches(model, model.batch_size)
    assert_logged_losses_match_buffer(model)
    values = model.logger.name_to_value
    assert values["train/approx_kl"] < 1e-8
    assert values["train/clip_fraction"] == 0
    assert abs(values["train/policy_gradient_loss"]) < 1e-5  # ratio 1 and normalised advantages: mean 0


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_ppo_gsde_zero_learning_rate_replays_rollout(policy):
    model = make_model(
        MemoryPPO, policy, short_continuous_env, learning_rate=0.0, sequence_length=8, use_sde=True, sde_sample_freq=4
    )
    model.learn(N_STEPS * model.n_envs)
    assert_rollout_replay_matches(model, 32)
    assert model.logger.name_to_value["train/approx_kl"] < 1e-8


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
def test_a2c_replays_rollout(policy):
    model = make_model(MemoryA2C, policy, short_episode_env, n_envs=3, learning_rate=0.0, sequence_length=8)
    before = snapshot(model)
    model.learn(N_STEPS * model.n_envs)
    assert not changed_parameters(before, model)
    assert_rollout_replay_matches(model, None)
    assert_logged_losses_match_buffer(model)


@pytest.mark.parametrize("algo", ALGOS)
def test_evaluate_policy(algo):
    model = make_model(algo, "NTMPolicy", short_episode_env)
    model.learn(N_STEPS * model.n_envs)
    mean, std = evaluate_policy(model, make_vec_env(short_episode_env, n_envs=2, seed=9), n_eval_episodes=4)
    assert math.isfinite(mean) and math.isfinite(std) and 0 <= mean <= 7

    # evaluate_policy threads the state and episode starts as a hand-written loop does.
    rewards, lengths = evaluate_policy(
        model, make_vec_env(short_episode_env, n_envs=1, seed=5), n_eval_episodes=3, return_episode_rewards=True
    )
    env = make_vec_env(short_episode_env, n_envs=1, seed=5)
    obs, state, episode_start = env.reset(), None, np.ones(1, dtype=bool)
    expected_rewards, expected_lengths, total, length = [], [], 0.0, 0
    while len(expected_rewards) < 3:
        action, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        obs, reward, episode_start, _ = env.step(action)
        total, length = total + float(reward[0]), length + 1
        if episode_start[0]:
            expected_rewards.append(total)
            expected_lengths.append(length)
            total, length = 0.0, 0
    assert list(lengths) == expected_lengths
    assert list(rewards) == pytest.approx(expected_rewards)


# --------------------------------------------------------------------------------------------
# Buffer layout: states at chunk starts, and replaying a chunk reaches the next stored state
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sequence_length", [2, 4, 8, 16])
@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_buffer_stores_state_at_chunk_starts(sequence_length, policy):
    model = make_model(
        MemoryPPO, policy, short_episode_env, sequence_length=sequence_length, policy_kwargs=dict(critic_memory="separate")
    )
    recorder = RecordSteps()
    collect_one_rollout(model, recorder)
    buffer = model.rollout_buffer
    size = model.policy.state_size
    assert buffer.chunk_states.shape == (N_STEPS // sequence_length, model.n_envs, size)
    assert buffer.state_nbytes_per_transition() == size * 4 / sequence_length
    for chunk in range(N_STEPS // sequence_length):
        assert th.equal(buffer.chunk_states[chunk], recorder.states[chunk * sequence_length])
    # The state carried to the next rollout is the state after the last step.
    assert th.equal(model._last_memory_state, recorder.new_states[-1])

    # Replaying each chunk through the core(s) from its stored state reaches the next stored state.
    policy_ = model.policy
    obs = th.as_tensor(buffer.observations)  # (n_steps, n_envs, obs_dim)
    starts = th.as_tensor(buffer.episode_starts)
    with th.no_grad():
        for chunk in range(N_STEPS // sequence_length):
            steps = slice(chunk * sequence_length, (chunk + 1) * sequence_length)
            features = policy_.extract_features(obs[steps].reshape(-1, obs.shape[-1])).reshape(
                sequence_length, model.n_envs, -1
            )
            end_states = []
            for core, part in zip((policy_.core, policy_.critic_core), policy_.split_state(buffer.chunk_states[chunk])):
                _, end = core.forward_sequence(features, core.unflatten_state(part), starts[steps])
                end_states.append(core.flatten_state(end))
            end_state = policy_.join_state(*end_states)
            target = buffer.chunk_states[chunk + 1] if chunk + 1 < N_STEPS // sequence_length else model._last_memory_state
            th.testing.assert_close(end_state, target, atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_sparse_cores_keep_compact_chunk_states_that_rebuild_exactly(policy):
    memory = dict(memory_units=64, memory_unit_size=4, controller_dim=16, sparse_top_k=2)
    model = make_model(MemoryPPO, policy, short_episode_env, sequence_length=4, policy_kwargs=memory)
    recorder = RecordSteps()
    collect_one_rollout(model, recorder)
    buffer = model.rollout_buffer
    assert buffer.compact_states and buffer.chunk_states is None
    rebuilt = buffer.stored_chunk_states()
    for chunk in range(N_STEPS // 4):
        assert th.equal(rebuilt[chunk], recorder.states[chunk * 4])  # to the bit: values are kept, not differences
    # A state that differs from the initial one in a few slots is stored as those few entries.
    dense_bytes = model.policy.state_size * 4 / 4
    assert buffer.state_nbytes_per_transition() < dense_bytes / 3
    with pytest.raises(ValueError, match="pass initial_state"):
        buffer.pos = 0
        buffer.add_state(recorder.states[0])


class RecordRolloutEnds(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.end_states: list[th.Tensor] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        assert isinstance(self.model, (MemoryPPO, MemoryA2C)) and self.model._last_memory_state is not None
        self.end_states.append(self.model._last_memory_state.clone())


@pytest.mark.parametrize("algo", ALGOS)
def test_memory_state_carried_across_rollouts(algo):
    # Episodes of 10 steps span the rollouts of 16 steps.
    model = make_model(algo, "NTMPolicy", lambda: RandomEpisodeEnv(min_length=10, max_length=10), sequence_length=8)
    recorder = RecordRolloutEnds()
    model.learn(2 * N_STEPS * model.n_envs, callback=recorder)
    assert len(recorder.end_states) == 2
    assert not model.rollout_buffer.episode_starts.reshape(-1, 8)[:, 0].all()  # a chunk starts mid-episode
    # The second rollout started from the state the first one ended with.
    stored = model.rollout_buffer.chunk_states
    assert th.equal(stored[0], recorder.end_states[0])
    assert not th.allclose(stored[0], model.policy.initial_state(model.n_envs))


# --------------------------------------------------------------------------------------------
# Timeout bootstrapping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("critic_memory", ["shared", "separate"])
def test_timeout_bootstrap_uses_post_step_state(critic_memory):
    gamma = 0.9
    model = make_model(MemoryPPO, "NTMPolicy", truncated_env, gamma=gamma, policy_kwargs=dict(critic_memory=critic_memory))
    recorder = RecordSteps()
    collect_one_rollout(model, recorder)
    buffer, policy = model.rollout_buffer, model.policy
    raw = np.stack(recorder.raw_rewards)  # (n_steps, n_envs)
    truncations = terminations = 0
    wrong_state_gap = 0.0
    for t in range(N_STEPS):
        for env_idx in range(model.n_envs):
            info = recorder.infos[t][env_idx]
            bonus = buffer.rewards[t, env_idx] - raw[t, env_idx]
            if not (recorder.dones[t][env_idx] and info.get("TimeLimit.truncated", False)):
                terminations += int(recorder.dones[t][env_idx])
                assert bonus == 0.0
                continue
            truncations += 1
            # Replay the episode from its first observation, then the terminal observation.
            first = max(s for s in range(t + 1) if buffer.episode_starts[s, env_idx])
            episode = np.concatenate([buffer.observations[first : t + 1, env_idx], info["terminal_observation"][None]])
            episode_starts = th.zeros(len(episode))
            episode_starts[0] = 1
            with th.no_grad():
                values = policy.predict_values(th.as_tensor(episode), policy.initial_state(1), episode_starts).flatten()
                # The same observation under the state before the last step (off by one step).
                stale = policy.predict_values(
                    th.as_tensor(np.delete(episode, -2, axis=0)), policy.initial_state(1), episode_starts[:-1]
                ).flatten()
            assert bonus == pytest.approx(gamma * float(values[-1]), abs=1e-5)
            wrong_state_gap = max(wrong_state_gap, abs(float(values[-1] - stale[-1])))
    assert truncations >= 3 and terminations >= 1
    assert wrong_state_gap > 1e-4


# --------------------------------------------------------------------------------------------
# Memory diagnostics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_memory_diagnostics_logged(algo, policy, tmp_path):
    model = make_model(algo, policy, short_episode_env)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(2 * N_STEPS * model.n_envs, log_interval=1)
    model.logger.close()
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    last = {key: float(value) for key, value in rows[-1].items() if key.startswith("memory/") and value != ""}
    expected_keys = {"memory/read_weight_entropy", "memory/memory_abs_mean"}
    if policy == "DNCPolicy":
        expected_keys |= {"memory/usage_mean", "memory/write_weight_sum"}
        assert 0.0 <= last["memory/usage_mean"] <= 1.0
        assert 0.0 <= last["memory/write_weight_sum"] <= 1.0 + 1e-6
    else:
        expected_keys |= {"memory/write_weight_entropy"}
    assert expected_keys <= set(last)
    assert 0.0 <= last["memory/read_weight_entropy"] <= math.log(8) + 1e-6
    assert last["memory/memory_abs_mean"] > 1e-6  # the memory was written (it starts at 1e-6)
    # The last row describes the state at the end of the last rollout.
    expected = model.policy.memory_diagnostics(model._last_memory_state)
    for key, value in expected.items():
        assert last[f"memory/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------------------------------
# Save and load
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algo, policy, policy_kwargs",
    [
        (MemoryPPO, "NTMPolicy", dict(critic_memory="separate")),
        (MemoryA2C, "DNCPolicy", dict(critic_memory="none")),
        (MemoryPPO, "LSTMPolicy", dict(controller="gru")),
        (MemoryPPO, "DNCPolicy", dict(sparse_top_k=3, backend="reference")),
    ],
)
def test_save_load(algo, policy, policy_kwargs, tmp_path):
    model = make_model(algo, policy, short_episode_env, sequence_length=8, policy_kwargs=policy_kwargs)
    model.learn(N_STEPS * model.n_envs)
    assert "_last_memory_state" in model._excluded_save_params()
    assert model._last_memory_state is not None
    path = tmp_path / "model.zip"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    assert "_last_memory_state" not in data

    loaded = algo.load(path, device="cpu")
    assert loaded._last_memory_state is None
    assert loaded.sequence_length == 8
    assert loaded.policy.core_kwargs == model.policy.core_kwargs
    assert loaded.policy.critic_memory == model.policy.critic_memory
    assert loaded.policy.state_size == model.policy.state_size
    for name, value in model.policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[name]), name

    env = make_vec_env(short_episode_env, n_envs=2, seed=11)
    obs = env.reset()
    state_a = state_b = None
    episode_start = np.ones(2, dtype=bool)
    for _ in range(10):
        action_a, state_a = model.predict(obs, state_a, episode_start, deterministic=True)
        action_b, state_b = loaded.predict(obs, state_b, episode_start, deterministic=True)
        np.testing.assert_array_equal(action_a, action_b)
        np.testing.assert_array_equal(state_a, state_b)
        obs, _, episode_start, _ = env.step(action_a)

    # The policy alone round-trips too (its constructor parameters include the core's).
    model.policy.save(tmp_path / "policy.pth")
    policy_only = type(model.policy).load(tmp_path / "policy.pth", device="cpu")
    assert policy_only.core_kwargs == model.policy.core_kwargs and policy_only.critic_memory == model.policy.critic_memory
    obs = env.reset()
    action_a, state_a = model.predict(obs, deterministic=True)
    action_c, state_c = policy_only.predict(obs, deterministic=True)
    np.testing.assert_array_equal(action_a, action_c)
    np.testing.assert_array_equal(state_a, state_c)

    # The loaded model trains on with the saved configuration.
    loaded.set_env(make_vec_env(short_episode_env, n_envs=2, seed=1))
    loaded.learn(N_STEPS * loaded.n_envs)
    assert loaded.rollout_buffer.sequence_length == 8
    assert loaded._last_memory_state.shape == (2, loaded.policy.state_size)


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", multi_discrete_env, multi_binary_env])
def test_predict_single_observation(env_id):
    model = make_model(MemoryPPO, "NTMPolicy", env_id)
    env = gym.make(env_id) if isinstance(env_id, str) else env_id()
    obs, _ = env.reset(seed=0)
    action, state = model.predict(obs, deterministic=True)
    assert state.shape == (1, model.policy.state_size)
    assert np.shape(action) == env.action_space.shape and env.action_space.contains(action)
    batch_action, batch_state = model.predict(obs[None], deterministic=True)
    np.testing.assert_array_equal(batch_action[0], action)
    np.testing.assert_allclose(batch_state, state, atol=1e-6)


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
def test_predict_episode_start_resets_state(policy):
    model = make_model(MemoryPPO, policy, short_episode_env, policy_kwargs=dict(critic_memory="separate"))
    env = make_vec_env(short_episode_env, n_envs=2, seed=2)
    obs = env.reset()
    state = None
    for _ in range(4):
        _, state = model.predict(obs, state)
        obs = env.reset()
    initial = model.policy.initial_state(2).numpy()
    assert not np.allclose(state, initial)

    _, from_none = model.predict(obs, None, deterministic=True)
    _, from_initial = model.predict(obs, initial, deterministic=True)
    _, reset_both = model.predict(obs, state, np.array([True, True]), deterministic=True)
    _, continued = model.predict(obs, state, np.array([False, False]), deterministic=True)
    _, reset_first = model.predict(obs, state, np.array([True, False]), deterministic=True)
    np.testing.assert_array_equal(from_none, from_initial)
    np.testing.assert_array_equal(reset_both, from_none)
    assert not np.allclose(continued, from_none)
    np.testing.assert_array_equal(reset_first[0], from_none[0])
    np.testing.assert_array_equal(reset_first[1], continued[1])
    # The default episode_start (None) continues from the state.
    _, default = model.predict(obs, state, deterministic=True)
    np.testing.assert_array_equal(default, continued)

    # The actions follow the state too: the deterministic action distribution differs.
    obs_tensor = obs_as_tensor(obs, model.device)
    with th.no_grad():
        fresh = model.policy.get_distribution(obs_tensor, th.as_tensor(initial), th.zeros(2))[0].distribution.logits
        used = model.policy.get_distribution(obs_tensor, th.as_tensor(state), th.zeros(2))[0].distribution.logits
        reset = model.policy.get_distribution(obs_tensor, th.as_tensor(state), th.ones(2))[0].distribution.logits
    assert not th.allclose(fresh, used)
    th.testing.assert_close(reset, fresh, atol=0, rtol=0)


@pytest.mark.parametrize("bad_shape", ["extra_column", "missing_column", "too_many_rows"])
def test_predict_wrong_state_size(bad_shape):
    model = make_model(MemoryPPO, "NTMPolicy", "CartPole-v1")
    obs = model.env.reset()  # 2 envs
    size = model.policy.state_size
    state = {
        "extra_column": np.zeros((2, size + 1)),
        "missing_column": np.zeros((2, size - 1)),
        "too_many_rows": np.zeros((4, size)),
    }[bad_shape]
    with pytest.raises(ValueError, match="state"):
        model.predict(obs, state)


@pytest.mark.parametrize("bad_shape", ["one_row_for_five_envs", "transposed"])
def test_predict_wrong_state_layout_raises_value_error(bad_shape):
    model = make_model(MemoryPPO, "NTMPolicy", "CartPole-v1")
    size = model.policy.state_size
    n_envs = 5 if bad_shape == "one_row_for_five_envs" else 2
    obs = np.zeros((n_envs, 4), dtype=np.float32)
    state = np.zeros((1, size)) if bad_shape == "one_row_for_five_envs" else np.zeros((size, n_envs))
    assert size % 5 != 0 or bad_shape == "transposed"
    with pytest.raises(ValueError, match="state"):
        model.predict(obs, state)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class _SpaceEnv(gym.Env):
    def __init__(self, observation_space, action_space=None):
        self.observation_space, self.action_space = observation_space, action_space or spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


@pytest.mark.parametrize("algo", ALGOS)
def test_unsupported_spaces(algo):
    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    with pytest.raises(AssertionError, match="only supports"):
        algo("NTMPolicy", _SpaceEnv(box, spaces.Tuple([spaces.Discrete(2), spaces.Discrete(3)])))
    with pytest.raises(NotImplementedError, match="not supported"):
        algo("NTMPolicy", _SpaceEnv(spaces.Tuple([spaces.Discrete(2), spaces.Discrete(3)])))
    # Sequence and Graph spaces fail in SB3's DummyVecEnv already (no fixed shape).
    for space in (spaces.Sequence(box), spaces.Graph(box, None)):
        with pytest.raises((TypeError, NotImplementedError, ValueError)):
            algo("NTMPolicy", _SpaceEnv(space))


@pytest.mark.parametrize("algo", ALGOS)
def test_configuration_errors(algo):
    def build(policy="NTMPolicy", policy_kwargs=None, **kwargs):
        return make_model(algo, policy, "CartPole-v1", policy_kwargs=policy_kwargs, **kwargs)

    with pytest.raises(ValueError, match="sequence_length"):
        build(sequence_length=5)  # does not divide n_steps=16
    with pytest.raises(ValueError, match="sequence_length"):
        build(sequence_length=0)
    with pytest.raises(ValueError, match="critic_memory"):
        build(policy_kwargs=dict(critic_memory="foo"))
    with pytest.raises(TypeError, match="memory_slots"):
        build(policy_kwargs=dict(memory_slots=4))
    with pytest.raises(TypeError, match="num_write_heads"):
        build("DNCPolicy", policy_kwargs=dict(num_write_heads=2))  # NTM only
    with pytest.raises(ValueError, match="share_features_extractor"):
        build(policy_kwargs=dict(critic_memory="detached", share_features_extractor=False))  # one core needs one extractor
    with pytest.raises(ValueError, match="controller"):
        build(policy_kwargs=dict(controller="transformer"))
    with pytest.raises(ValueError, match="controller"):
        build("LSTMPolicy", policy_kwargs=dict(controller="mlp"))  # the LSTM core needs a recurrent controller
    with pytest.raises(ValueError, match="shift_range"):
        build(policy_kwargs=dict(shift_range=4))  # 9 offsets on 8 slots
    with pytest.raises(ValueError, match="MlpPolicy"):
        algo("MlpPolicy", "CartPole-v1")
    with pytest.raises(TypeError, match="MemoryActorCriticPolicy"):
        algo(ActorCriticPolicy, "CartPole-v1")
    # A valid sequence_length is kept.
    assert build(sequence_length=4).rollout_buffer.sequence_length == 4


@pytest.mark.filterwarnings("ignore:You have specified a mini-batch size")
def test_ppo_batch_size_must_be_multiple_of_sequence_length():
    with pytest.raises(ValueError, match="batch_size=20 must be a multiple of sequence_length=8"):
        make_model(MemoryPPO, "NTMPolicy", "CartPole-v1", batch_size=20, sequence_length=8)
    # The default sequence length divides both n_steps and batch_size, and is at most 32.
    assert make_model(MemoryPPO, "NTMPolicy", "CartPole-v1", batch_size=24).sequence_length == 8
    assert make_model(MemoryPPO, "NTMPolicy", "CartPole-v1", n_steps=64, batch_size=128).sequence_length == 32
    assert make_model(MemoryA2C, "NTMPolicy", "CartPole-v1", n_steps=12).sequence_length == 12


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo", ALGOS)
def test_cuda(algo):
    model = make_model(
        algo, "DNCPolicy", short_episode_env, device="cuda", sequence_length=8, policy_kwargs=dict(critic_memory="separate")
    )
    assert model.device.type == "cuda"
    before = snapshot(model)
    model.learn(2 * N_STEPS * model.n_envs)
    assert_learned(before, model, "critic_core.")
    assert model._last_memory_state.device.type == "cuda"
    assert model.rollout_buffer.chunk_states.device.type == "cuda"
    assert all(q.device.type == "cuda" for q in model.policy.parameters())
    _, state = model.predict(model.env.reset(), deterministic=True)
    assert isinstance(state, np.ndarray) and state.shape == (2, model.policy.state_size)
    # The rollout replays on the GPU as on the CPU (looser tolerance for GPU kernels).
    collect_one_rollout(model)
    with th.no_grad():
        for samples in model.rollout_buffer.get(None if algo is MemoryA2C else 32):
            assert samples.states.device.type == "cuda"
            values, log_prob, _ = model.policy.evaluate_actions(
                samples.observations, batch_actions(model, samples.actions), samples.states, samples.episode_starts
            )
            th.testing.assert_close(log_prob, samples.old_log_prob, atol=1e-4, rtol=0)
            th.testing.assert_close(values.flatten(), samples.old_values, atol=1e-4, rtol=0)

"""What a new user hit (issue table): each case gets correct behaviour or an error that names the fix."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_memory import MemoryA2C, MemoryPPO
from sb3_memory.memory import DNCCell, NTMCell
from sb3_memory.memory.checks import check_float, check_int

TINY = dict(memory_units=4, memory_unit_size=3, controller_dim=8)


def tiny(policy: str = "NTMPolicy") -> dict:
    """A fresh dict each time: SB3's A2C writes its optimizer into the policy_kwargs it is given."""
    return dict(controller_dim=8) if "LSTM" in policy else dict(TINY)


class SpaceEnv(gym.Env):
    """Observations from any space; reward for action 1 when the first observation entry is odd."""

    def __init__(self, observation_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        obs = self.observation_space.sample()
        return obs, float(action), self._t >= 6, False, {}


MULTI_DISCRETE = spaces.MultiDiscrete([3, 4])


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
def test_multidiscrete_observations_train(policy):
    env = make_vec_env(lambda: SpaceEnv(MULTI_DISCRETE), n_envs=2)
    model = MemoryPPO(policy, env, n_steps=8, batch_size=16, policy_kwargs=tiny(policy))
    assert model.policy.core.input_dim == 7 and type(model.policy.core.input_dim) is int  # one-hot 3 + 4
    # SB3's preprocessing one-hot encodes each entry: the core sees which code, not its number.
    features = model.policy.extract_features(model.policy.obs_to_tensor(np.array([[2, 3], [0, 1]]))[0])
    features = features[0] if isinstance(features, tuple) else features
    expected = th.tensor([[0, 0, 1, 0, 0, 0, 1], [1, 0, 0, 0, 1, 0, 0]], dtype=th.float32)
    th.testing.assert_close(features, expected, rtol=0, atol=0)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(32)
    assert model.num_timesteps == 32
    assert any(not th.equal(a, b) for a, b in zip(before, model.policy.parameters())), "the update changed nothing"


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
def test_multidiscrete_inside_a_dict_trains(algo):
    space = spaces.Dict({"codes": MULTI_DISCRETE, "x": spaces.Box(-1, 1, (2,), np.float32)})
    env = make_vec_env(lambda: SpaceEnv(space), n_envs=2)
    sizes = dict(n_steps=8, batch_size=16) if algo is MemoryPPO else dict(n_steps=8)
    model = algo("MultiInputDNCPolicy", env, **sizes, policy_kwargs=tiny())
    assert model.policy.core.input_dim == 9  # one-hot 3 + 4, and the box's 2
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(32)
    assert model.num_timesteps == 32
    assert any(not th.equal(a, b) for a, b in zip(before, model.policy.parameters())), "the update changed nothing"


def test_numpy_integers_are_accepted_wherever_ints_are():
    kwargs = {key: np.int64(value) for key, value in TINY.items()}
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=2, env_kwargs=dict(corridor_length=np.int32(3)))
    model = MemoryPPO("NTMPolicy", env, n_steps=8, batch_size=16, sequence_length=np.int64(4), policy_kwargs=kwargs)
    assert model.policy.core.memory_units == 4 and type(model.policy.core.memory_units) is int
    model.learn(np.int64(16))
    assert model.num_timesteps == 16
    assert NTMCell(np.int64(5), shift_range=np.int8(1), num_write_heads=np.uint8(2)).num_write_heads == 2
    assert DNCCell(5, memory_init=np.float32(0.5)).memory_init == 0.5
    with pytest.raises(ValueError, match="memory_units must be an integer >= 1, got True"):
        NTMCell(5, memory_units=True)
    with pytest.raises(ValueError, match="must be an integer"):
        check_int("n", np.float64(3.0))
    with pytest.raises(ValueError, match="finite number"):
        check_float("x", np.float32("nan"))


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy", "CnnDNCPolicy"])
def test_dict_observations_with_a_box_policy_name_the_multi_input_policy(policy):
    space = spaces.Dict({"x": spaces.Box(-1, 1, (2,), np.float32)})
    env = make_vec_env(lambda: SpaceEnv(space), n_envs=1)
    name = policy.replace("Cnn", "")
    with pytest.raises(ValueError, match=f"use 'MultiInput{name}'"):
        MemoryPPO(policy, env, n_steps=8, batch_size=8, policy_kwargs=tiny())


@pytest.mark.parametrize("episode_start", [np.ones(3, dtype=bool), True, np.zeros((2, 2))])
def test_predict_names_a_wrong_episode_start(episode_start):
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=2, env_kwargs=dict(corridor_length=3))
    model = MemoryPPO("DNCPolicy", env, n_steps=8, batch_size=16, policy_kwargs=tiny())
    with pytest.raises(ValueError, match=r"episode_start must have one entry per environment \(2\)"):
        model.predict(env.reset(), episode_start=episode_start)


def test_a_degenerate_default_sequence_length_warns_with_the_fix():
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=1, env_kwargs=dict(corridor_length=3))
    with pytest.warns(UserWarning, match=r"sequence_length defaults to 1.*batch_size that is a multiple of 32 \(e.g. 64\)"):
        model = MemoryPPO("NTMPolicy", env, n_steps=64, batch_size=63, policy_kwargs=tiny())
    assert model.sequence_length == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert MemoryPPO("NTMPolicy", env, n_steps=64, batch_size=64, policy_kwargs=tiny()).sequence_length == 32
        assert MemoryPPO("NTMPolicy", env, n_steps=64, batch_size=63, sequence_length=1, policy_kwargs=tiny())
    assert not [w for w in caught if "sequence_length" in str(w.message)]  # chosen, or long enough: no warning


@pytest.mark.parametrize("steps", [-5, 2.5, "100"])
def test_learn_rejects_a_bad_budget(steps):
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=1, env_kwargs=dict(corridor_length=3))
    model = MemoryA2C("NTMPolicy", env, policy_kwargs=tiny())
    with pytest.raises(ValueError, match="total_timesteps must be an integer >= 0"):
        model.learn(steps)
    assert model.num_timesteps == 0


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
def test_learn_takes_integral_floats_as_sb3_does(algo):
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=2, env_kwargs=dict(corridor_length=3))
    sizes = dict(n_steps=8, batch_size=16) if algo is MemoryPPO else dict(n_steps=8)
    model = algo("NTMPolicy", env, **sizes, policy_kwargs=tiny())
    model.learn(3.2e1)
    assert model.num_timesteps == 32
    with pytest.raises(ValueError, match=r"total_timesteps must be an integer >= 0 .*whole\), got 32.5"):
        model.learn(32.5)


def test_a_recurrent_ppo_policy_name_points_at_its_match():
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=2)
    with pytest.raises(ValueError, match=r"'MlpLstmPolicy' unknown to MemoryPPO: choose one of 'NTMPolicy', .*'LSTMPolicy'"):
        MemoryPPO("MlpLstmPolicy", env)
    with pytest.raises(ValueError, match="CnnLstmPolicy is 'CnnLSTMPolicy' here"):
        MemoryA2C("CnnLstmPolicy", env)
    with pytest.raises(ValueError, match="'NTM' unknown to MemoryPPO: choose one of 'NTMPolicy'") as error:
        MemoryPPO("NTM", env)
    assert "sb3-contrib" not in str(error.value)


class RewardAtStep(SpaceEnv):
    """Gives ``reward`` at the episode's third step and after."""

    def __init__(self, reward: float) -> None:
        super().__init__(spaces.Box(-1, 1, (2,), np.float32))
        self.reward = reward

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, self.reward if self._t >= 3 else 0.0, terminated, truncated, info


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
def test_a_nan_reward_is_named_before_the_update(algo):
    env = make_vec_env(lambda: RewardAtStep(float("nan")), n_envs=2)
    sizes = dict(n_steps=8, batch_size=16) if algo is MemoryPPO else dict(n_steps=8)
    model = algo("NTMPolicy", env, **sizes, policy_kwargs=tiny())
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(ValueError, match=r"non-finite reward \(NaN/Inf\) in env\(s\) \[0, 1\] at step 6: .*VecCheckNan"):
        model.learn(16)
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters())), "a NaN reached the update"


def test_overflowing_returns_are_named_as_such():
    env = make_vec_env(lambda: RewardAtStep(3e38), n_envs=1)  # finite rewards whose sum overflows float32
    model = MemoryPPO("LSTMPolicy", env, n_steps=8, batch_size=8, gamma=1.0, policy_kwargs=tiny("LSTMPolicy"))
    with pytest.raises(ValueError, match=r"non-finite (return|advantage) .*scale the rewards down"):
        model.learn(8)

"""PreviousActionReward: the previous action and reward ride in the observation."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env

from sb3_memory import MemoryPPO
from sb3_memory.envs.wrappers import PreviousActionReward


class ScriptedEnv(gym.Env):
    """Reward = 10 * step + action; observation space chosen by the test."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        first = float(np.asarray(action).reshape(-1)[0])
        return self.observation_space.sample(), 10.0 * self._t + first, self._t >= 3, False, {}


BOX = spaces.Box(-1, 1, (2,), np.float32)


def test_flat_box_observations_get_one_hot_action_and_reward_appended():
    env = PreviousActionReward(ScriptedEnv(BOX, spaces.Discrete(3)), reward_scale=0.1)
    assert env.observation_space.shape == (2 + 3 + 1,)
    obs, _ = env.reset(seed=0)
    assert np.array_equal(obs[2:], [0, 0, 0, 0])  # nothing before the first step
    obs, reward, *_ = env.step(2)
    assert reward == 12.0  # the reward itself is untouched
    np.testing.assert_allclose(obs[2:], [0, 0, 1, 1.2])
    obs, *_ = env.step(0)
    np.testing.assert_allclose(obs[2:], [1, 0, 0, 2.0])
    assert env.observation_space.contains(obs)
    obs, _ = env.reset()
    assert np.array_equal(obs[2:], [0, 0, 0, 0])  # cleared at the episode start


@pytest.mark.parametrize(
    "observation_space,action_space,action,code",
    [
        (spaces.Dict({"x": BOX}), spaces.MultiDiscrete([2, 3]), np.array([1, 2]), [0, 1, 0, 0, 1]),
        (spaces.Discrete(4), spaces.Box(-2, 2, (2,), np.float32), np.array([0.5, -1.5], np.float32), [0.5, -1.5]),
        (spaces.Box(0, 255, (4, 4, 1), np.uint8), spaces.MultiBinary(2), np.array([1, 0], np.int8), [1, 0]),
    ],
)
def test_other_spaces_become_dicts(observation_space, action_space, action, code):
    env = PreviousActionReward(ScriptedEnv(observation_space, action_space))
    check_env(env, warn=False)
    assert isinstance(env.observation_space, spaces.Dict)
    env.reset(seed=0)
    obs, reward, *_ = env.step(action)
    np.testing.assert_allclose(obs["previous_action"], code)
    assert obs["previous_reward"][0] == pytest.approx(reward)
    assert env.observation_space.contains(obs)


def test_trains_with_memory_ppo():
    env = make_vec_env(
        "sb3_memory/PassiveTMaze-v0", n_envs=2, env_kwargs=dict(corridor_length=3), wrapper_class=PreviousActionReward
    )
    model = MemoryPPO(
        "DNCPolicy", env, n_steps=8, batch_size=16, policy_kwargs=dict(memory_units=4, memory_unit_size=3, controller_dim=8)
    )
    assert model.policy.core.input_dim == 3 + 4 + 1
    model.learn(32)


def test_clashing_dict_keys_are_refused():
    with pytest.raises(ValueError, match="already has key"):
        PreviousActionReward(ScriptedEnv(spaces.Dict({"previous_reward": BOX}), spaces.Discrete(2)))

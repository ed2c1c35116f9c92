"""Wrappers for memory agents."""

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PreviousActionReward(gym.Wrapper):
    """
    Appends the previous action and reward to every observation (zeros after a reset), the inputs
    that Ni et al. (2022) found make recurrent agents strong on POMDPs.

    They ride in the observation rather than in the policy's state so that every path sees them
    alike: rollouts, training replay, ``predict`` and SB3's ``evaluate_policy`` (which never hand a
    policy the reward), and RecurrentPPO or PPO for comparisons. A flat ``Box`` observation gets
    them concatenated; any other space becomes a ``Dict`` with keys ``"observation"``,
    ``"previous_action"`` and ``"previous_reward"`` (use a ``MultiInput...`` policy), and a
    ``Dict`` gets the two keys added.

    The action is one-hot for ``Discrete`` and ``MultiDiscrete`` spaces, as given otherwise.

    :param env: the environment
    :param reward_scale: multiplies the reward before it is shown
    """

    def __init__(self, env: gym.Env, reward_scale: float = 1.0) -> None:
        super().__init__(env)
        self.reward_scale = float(reward_scale)
        self._action_size = _encoded_size(env.action_space)
        extra_low, extra_high = _encoding_bounds(env.action_space)
        action_box = spaces.Box(extra_low, extra_high, dtype=np.float32)
        reward_box = spaces.Box(-np.inf, np.inf, (1,), dtype=np.float32)
        original = env.observation_space
        self._mode = "concatenate" if isinstance(original, spaces.Box) and len(original.shape) == 1 else "dict"
        if self._mode == "concatenate":
            assert isinstance(original, spaces.Box)
            self.observation_space = spaces.Box(
                np.concatenate([original.low.astype(np.float32), extra_low, [-np.inf]]).astype(np.float32),
                np.concatenate([original.high.astype(np.float32), extra_high, [np.inf]]).astype(np.float32),
                dtype=np.float32,
            )
        elif isinstance(original, spaces.Dict):
            clash = {"previous_action", "previous_reward"} & set(original.spaces)
            if clash:
                raise ValueError(f"the observation Dict already has key(s) {sorted(clash)}")
            self.observation_space = spaces.Dict(
                {**original.spaces, "previous_action": action_box, "previous_reward": reward_box}
            )
        else:
            self.observation_space = spaces.Dict(
                {"observation": original, "previous_action": action_box, "previous_reward": reward_box}
            )

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        return self._extend(observation, np.zeros(self._action_size, np.float32), 0.0), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return (
            self._extend(observation, _encode(self.env.action_space, action), float(reward)),
            reward,
            terminated,
            truncated,
            info,
        )

    def _extend(self, observation: Any, action: np.ndarray, reward: float) -> Any:
        scaled = np.array([reward * self.reward_scale], dtype=np.float32)
        if self._mode == "concatenate":
            return np.concatenate([np.asarray(observation, dtype=np.float32).reshape(-1), action, scaled])
        if isinstance(self.env.observation_space, spaces.Dict):
            return {**observation, "previous_action": action, "previous_reward": scaled}
        return {"observation": observation, "previous_action": action, "previous_reward": scaled}


def _encoded_size(space: spaces.Space) -> int:
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return int(spaces.flatdim(space))
    raise TypeError(f"PreviousActionReward supports Discrete, MultiDiscrete, MultiBinary and Box actions, not {space}")


def _encoding_bounds(space: spaces.Space) -> tuple[np.ndarray, np.ndarray]:
    size = _encoded_size(space)
    if isinstance(space, spaces.Box):
        return space.low.reshape(-1).astype(np.float32), space.high.reshape(-1).astype(np.float32)
    return np.zeros(size, np.float32), np.ones(size, np.float32)


def _encode(space: spaces.Space, action: Any) -> np.ndarray:
    if isinstance(space, spaces.Discrete):
        code = np.zeros(int(space.n), np.float32)
        code[int(action) - int(space.start)] = 1.0
        return code
    if isinstance(space, spaces.MultiDiscrete):
        parts = []
        for value, n in zip(np.asarray(action).reshape(-1), space.nvec.reshape(-1)):
            part = np.zeros(int(n), np.float32)
            part[int(value)] = 1.0
            parts.append(part)
        return np.concatenate(parts)
    return np.asarray(action, dtype=np.float32).reshape(-1)


class MultiBinaryAsMultiDiscrete(gym.ActionWrapper):
    """
    Shows a ``MultiBinary(n)`` action space as ``MultiDiscrete([2] * n)``: the same actions, one
    two-way choice per bit.

    sb3-contrib's ``RecurrentPPO`` (2.9.2) cannot train on ``MultiBinary``: its recurrent buffer
    hands the ``int8`` actions to the Bernoulli log-probability, which raises. Through this wrapper
    it trains with a categorical per bit instead, which is the same family of policies (a softmax
    over two logits is a sigmoid of their difference). The memory agents and SB3's ``PPO`` do not
    need it.

    :param env: an environment with a ``MultiBinary`` action space
    """

    def __init__(self, env: gym.Env) -> None:
        if not isinstance(env.action_space, spaces.MultiBinary):
            raise TypeError(
                f"MultiBinaryAsMultiDiscrete wraps MultiBinary action spaces, not {env.action_space}; "
                "leave the wrapper out for this env"
            )
        super().__init__(env)
        self._binary_shape = env.action_space.shape
        self.action_space = spaces.MultiDiscrete(np.full(self._binary_shape, 2, dtype=np.int64))

    def action(self, action: Any) -> np.ndarray:
        choice = np.asarray(action)
        if choice.shape != self._binary_shape:
            raise ValueError(f"expected an action of shape {self._binary_shape}, got shape {choice.shape}")
        if np.any((choice != 0) & (choice != 1)):
            raise ValueError(f"every entry of a MultiDiscrete([2, ...]) action is 0 or 1, got {choice}")
        return choice.astype(np.int8)

"""Associative recall: store key-value pairs, then answer a query key with its value."""

from typing import Any, Optional, Union

import numpy as np
from gymnasium import spaces

from sb3_memory.envs.base import MemoryTaskEnv, check_int, one_hot_box


class AssociativeRecallEnv(MemoryTaskEnv):
    """
    Associative recall: ``num_pairs`` (key, value) pairs are shown one per step, then one of
    the keys is shown as a query; emit its value.

    Keys are distinct within an episode (drawn without replacement from ``num_keys``);
    values are drawn uniformly and independently from ``num_values`` (they may repeat).
    An episode has ``num_pairs + 1`` steps; only the action at the query step is scored
    (1 if it is the value paired with the query key).

    Observation: ``Box(0, 1, (num_keys + num_values + 1,), float32)``; channels
    ``[0, num_keys)`` are the one-hot key, ``[num_keys, num_keys + num_values)`` the one-hot
    value (all zero at the query), the last channel is the query flag. The observation
    returned with ``terminated=True`` is all zeros.
    Action: ``Discrete(num_values)``.

    Optimal return: 1. Chance return (best memoryless policy): ``1 / num_values``.
    ``info["is_success"]`` is given at the last step.

    :param num_pairs: number of pairs to store (difficulty knob), in ``[1, num_keys]``
    :param num_keys: number of possible keys, ``>= 1``
    :param num_values: number of possible values, ``>= 2``
    :param render_mode: ``None``, ``"ansi"`` or ``"rgb_array"`` (shows the last observation)
    """

    def __init__(
        self,
        num_pairs: int = 8,
        num_keys: int = 16,
        num_values: int = 8,
        render_mode: Optional[str] = None,
    ) -> None:
        super().__init__(render_mode)
        self.num_keys = check_int("num_keys", num_keys, 1)
        self.num_values = check_int("num_values", num_values, 2)
        self.num_pairs = check_int("num_pairs", num_pairs, 1, self.num_keys, note="keys are distinct, so at most num_keys")
        self.observation_space = one_hot_box(self.num_keys + self.num_values + 1)
        self.action_space = spaces.Discrete(self.num_values)
        self._keys = np.zeros(self.num_pairs, dtype=np.int64)
        self._values = np.zeros(self.num_pairs, dtype=np.int64)
        self._query = 0

    @property
    def episode_length(self) -> int:
        """Number of steps of every episode: ``num_pairs + 1``."""
        return self.num_pairs + 1

    @property
    def optimal_return(self) -> float:
        """Return of a perfect-memory policy: 1."""
        return 1.0

    @property
    def chance_return(self) -> float:
        """Expected return of the best memoryless policy: ``1 / num_values``."""
        return 1.0 / self.num_values

    def optimal_action(self) -> Optional[int]:
        """The queried key's value at the query step; ``None`` while the pairs are shown."""
        t = self._current_step()
        return int(self._values[self._query]) if t == self.num_pairs else None

    def _obs(self, t: int) -> np.ndarray:
        obs = np.zeros(self.num_keys + self.num_values + 1, dtype=np.float32)
        if t < self.num_pairs:
            obs[self._keys[t]] = 1.0
            obs[self.num_keys + self._values[t]] = 1.0
        elif t == self.num_pairs:
            obs[self._keys[self._query]] = 1.0
            obs[-1] = 1.0
        return obs

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """
        Start an episode with fresh pairs and a fresh query.

        :param seed: seed of the environment's random generator (``None``: keep its state)
        :param options: unused
        :return: first observation and an empty info dict
        """
        super().reset(seed=seed)
        self._keys = self.np_random.choice(self.num_keys, size=self.num_pairs, replace=False)
        self._values = self.np_random.integers(0, self.num_values, size=self.num_pairs)
        self._query = int(self.np_random.integers(0, self.num_pairs))
        self._t = 0
        return self._observe(0), {}

    def step(self, action: Union[int, np.integer]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """
        Emit a value (scored only at the query step).

        :param action: the value believed to be paired with the query key
        :return: observation, reward, terminated, truncated (always ``False``), info
        """
        a = self._begin_step(action)
        t = self._t
        assert t is not None
        reward = 0.0
        if t == self.num_pairs and a == self._values[self._query]:
            reward = 1.0
        terminated = self._end_step()
        info: dict[str, Any] = {}
        if terminated:
            info["is_success"] = reward == 1.0
        return self._observe(t + 1), reward, terminated, False, info

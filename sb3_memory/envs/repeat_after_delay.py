"""Repeat-after-delay task: emit the symbol seen a fixed number of steps ago."""

from typing import Any, Optional, Union

import numpy as np
from gymnasium import spaces

from sb3_memory.envs.base import MemoryTaskEnv, check_int, one_hot_box


class RepeatAfterDelayEnv(MemoryTaskEnv):
    """
    Repeat after delay: at every step a fresh random symbol is shown; emit the one shown
    ``delay`` steps earlier.

    An episode has ``episode_length`` steps. At step ``t`` the observation shows symbol
    ``x_t`` (uniform over ``num_symbols``, independent across steps). The action at step ``t``
    earns 1 if ``t >= delay`` and it equals ``x_{t - delay}``; at the first ``delay`` steps
    there is no target and no reward.

    Observation: ``Box(0, 1, (num_symbols + 1,), float32)``; channels ``[0, num_symbols)`` are
    the one-hot symbol, channel ``num_symbols`` flags that this step's action is scored
    (``t >= delay``). The observation returned with ``terminated=True`` is all zeros.
    Action: ``Discrete(num_symbols)``.

    Optimal return: ``episode_length - delay``. Chance return (best memoryless policy):
    ``(episode_length - delay) / num_symbols``.
    ``info["is_success"]`` is given at the last step: whether every answer was right.

    :param delay: how many steps back to recall (difficulty knob), ``>= 1``
    :param num_symbols: vocabulary size, ``>= 2``
    :param episode_length: steps per episode, ``> delay``; default ``delay + 20``, so that
        every episode has 20 scored answers whatever the delay
    :param render_mode: ``None``, ``"ansi"`` or ``"rgb_array"`` (shows the last observation)
    """

    def __init__(
        self,
        delay: int = 5,
        num_symbols: int = 8,
        episode_length: Optional[int] = None,
        render_mode: Optional[str] = None,
    ) -> None:
        super().__init__(render_mode)
        self.delay = check_int("delay", delay, 1)
        self.num_symbols = check_int("num_symbols", num_symbols, 2)
        if episode_length is None:
            episode_length = self.delay + 20
        self._episode_length = check_int("episode_length", episode_length, self.delay + 1, note="greater than delay")
        self.observation_space = one_hot_box(self.num_symbols + 1)
        self.action_space = spaces.Discrete(self.num_symbols)
        self._symbols = np.zeros(self._episode_length, dtype=np.int64)
        self._num_correct = 0

    @property
    def episode_length(self) -> int:
        """Number of steps of every episode."""
        return self._episode_length

    @property
    def num_targets(self) -> int:
        """Number of scored steps per episode: ``episode_length - delay``."""
        return self._episode_length - self.delay

    @property
    def optimal_return(self) -> float:
        """Return of a perfect-memory policy: ``episode_length - delay``."""
        return float(self.num_targets)

    @property
    def chance_return(self) -> float:
        """Expected return of the best memoryless policy: ``(episode_length - delay) / num_symbols``."""
        return self.num_targets / self.num_symbols

    def optimal_action(self) -> Optional[int]:
        """The symbol shown ``delay`` steps ago; ``None`` at the first ``delay`` steps."""
        t = self._current_step()
        return int(self._symbols[t - self.delay]) if t >= self.delay else None

    def _obs(self, t: int) -> np.ndarray:
        obs = np.zeros(self.num_symbols + 1, dtype=np.float32)
        if t < self._episode_length:
            obs[self._symbols[t]] = 1.0
            obs[self.num_symbols] = float(t >= self.delay)
        return obs

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """
        Start an episode with a fresh random symbol stream.

        :param seed: seed of the environment's random generator (``None``: keep its state)
        :param options: unused
        :return: first observation and an empty info dict
        """
        super().reset(seed=seed)
        self._symbols = self.np_random.integers(0, self.num_symbols, size=self._episode_length)
        self._num_correct = 0
        self._t = 0
        return self._observe(0), {}

    def step(self, action: Union[int, np.integer]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """
        Emit one symbol.

        :param action: the symbol believed to have been shown ``delay`` steps ago
        :return: observation, reward, terminated, truncated (always ``False``), info
        """
        a = self._begin_step(action)
        t = self._t
        assert t is not None
        reward = 0.0
        if t >= self.delay and a == self._symbols[t - self.delay]:
            reward = 1.0
            self._num_correct += 1
        terminated = self._end_step()
        info: dict[str, Any] = {}
        if terminated:
            info["is_success"] = self._num_correct == self.num_targets
        return self._observe(t + 1), reward, terminated, False, info

"""Copy task (Graves et al., 2014), as a reinforcement-learning environment."""

from typing import Any, Optional, Union

import numpy as np
from gymnasium import spaces

from sb3_memory.envs.base import MemoryTaskEnv, check_int, one_hot_box


class CopyEnv(MemoryTaskEnv):
    """
    Copy: observe ``length`` random symbols, then emit them in the same order.

    An episode has ``2 * length`` steps. During the first ``length`` steps (presentation) the
    observation shows one symbol, drawn uniformly from ``num_symbols``, and actions are not
    rewarded. During the last ``length`` steps (recall) the observation is the recall flag
    alone, and the action at recall step ``i`` earns 1 if it equals the ``i``-th symbol.

    Observation: ``Box(0, 1, (num_symbols + 1,), float32)``; channels ``[0, num_symbols)`` are
    the one-hot symbol (presentation), channel ``num_symbols`` is the recall flag. The
    observation returned with ``terminated=True`` is all zeros.
    Action: ``Discrete(num_symbols)``, the symbol to emit.

    Optimal return: ``length``. Chance return (best memoryless policy): ``length / num_symbols``.
    ``info["is_success"]`` is given at the last step: whether every symbol was right.

    :param length: number of symbols to copy (difficulty knob), ``>= 1``
    :param num_symbols: vocabulary size, ``>= 2``
    :param render_mode: ``None``, ``"ansi"`` or ``"rgb_array"`` (shows the last observation)
    """

    def __init__(
        self,
        length: int = 10,
        num_symbols: int = 8,
        render_mode: Optional[str] = None,
    ) -> None:
        super().__init__(render_mode)
        self.length = check_int("length", length, 1)
        self.num_symbols = check_int("num_symbols", num_symbols, 2)
        self.observation_space = one_hot_box(self.num_symbols + 1)
        self.action_space = spaces.Discrete(self.num_symbols)
        self._symbols = np.zeros(self.length, dtype=np.int64)
        self._num_correct = 0

    @property
    def episode_length(self) -> int:
        """Number of steps of every episode: ``2 * length``."""
        return 2 * self.length

    @property
    def optimal_return(self) -> float:
        """Return of a perfect-memory policy: ``length`` (1 per symbol)."""
        return float(self.length)

    @property
    def chance_return(self) -> float:
        """Expected return of the best memoryless policy: ``length / num_symbols``."""
        return self.length / self.num_symbols

    def optimal_action(self) -> Optional[int]:
        """The ``i``-th symbol at recall step ``i``; ``None`` during the presentation."""
        t = self._current_step()
        return int(self._symbols[t - self.length]) if t >= self.length else None

    def _obs(self, t: int) -> np.ndarray:
        obs = np.zeros(self.num_symbols + 1, dtype=np.float32)
        if t < self.length:
            obs[self._symbols[t]] = 1.0
        elif t < self.episode_length:
            obs[self.num_symbols] = 1.0
        return obs

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """
        Start an episode with fresh random symbols.

        :param seed: seed of the environment's random generator (``None``: keep its state)
        :param options: unused
        :return: first observation and an empty info dict
        """
        super().reset(seed=seed)
        self._symbols = self.np_random.integers(0, self.num_symbols, size=self.length)
        self._num_correct = 0
        self._t = 0
        return self._observe(0), {}

    def step(self, action: Union[int, np.integer]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """
        Emit one symbol.

        :param action: symbol emitted at this step (only scored in the recall phase)
        :return: observation, reward, terminated, truncated (always ``False``), info
        """
        a = self._begin_step(action)
        t = self._t
        assert t is not None
        reward = 0.0
        if t >= self.length and a == self._symbols[t - self.length]:
            reward = 1.0
            self._num_correct += 1
        terminated = self._end_step()
        info: dict[str, Any] = {}
        if terminated:
            info["is_success"] = self._num_correct == self.length
        return self._observe(t + 1), reward, terminated, False, info

"""Shared pieces of the memory task suite: the base class and helpers.

Every task is a ``gymnasium`` environment with a ``Box`` float32 observation (one-hot codes
plus flag channels) and a ``Discrete`` action space. Observations never depend on the agent's
past actions in the symbol tasks, so a memoryless policy cannot use its actions as memory.
"""

from typing import Any, Optional, Union

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_memory.memory.checks import check_float, check_int

__all__ = ["MemoryTaskEnv", "check_float", "check_int", "one_hot_box"]


class MemoryTaskEnv(gym.Env[np.ndarray, np.int64]):
    """
    Base class of the memory tasks.

    Subclasses set ``observation_space`` (``Box`` float32 in ``[0, 1]``) and
    ``action_space`` (``Discrete``) and document, through :attr:`optimal_return` and
    :attr:`chance_return`, what a perfect-memory agent and the best memoryless agent score.
    Every episode ends by itself (``terminated=True``) after :attr:`episode_length` steps,
    so no ``TimeLimit`` is needed; ``truncated`` is always ``False``.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}  # noqa: RUF012 (gymnasium declares it so)
    observation_space: spaces.Box
    action_space: spaces.Discrete

    def __init__(self, render_mode: Optional[str] = None) -> None:
        super().__init__()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            modes = self.metadata["render_modes"]
            raise ValueError(f"render_mode must be None or one of {modes}, got {render_mode!r}")
        self.render_mode = render_mode
        # Steps taken in the current episode; None before the first reset and after the end.
        self._t: Optional[int] = None
        self._last_obs: Optional[np.ndarray] = None

    @property
    def episode_length(self) -> int:
        """Number of steps of every episode."""
        raise NotImplementedError

    @property
    def optimal_return(self) -> float:
        """Undiscounted episode return of a policy with perfect memory (the maximum)."""
        raise NotImplementedError

    @property
    def chance_return(self) -> float:
        """
        Expected undiscounted return of the best memoryless policy, one that maps the
        current observation to an action (for the symbol tasks: uniform guessing).
        """
        raise NotImplementedError

    def optimal_action(self) -> Optional[Union[int, np.ndarray]]:
        """
        The action a perfect-memory policy takes at the current step: a label for supervised
        training (:mod:`sb3_memory.experiments.supervised`) and for checking agents.

        :return: the optimal action, or ``None`` where every action earns the same (an unscored step)
        :raises RuntimeError: if the episode has not been reset or is over
        """
        raise NotImplementedError

    def _current_step(self) -> int:
        if self._t is None:
            raise RuntimeError("call reset() first: the episode has not started or is over")
        return self._t

    def _obs(self, t: int) -> np.ndarray:
        """Observation at step ``t`` of the current episode (``t = episode_length``: terminal)."""
        raise NotImplementedError

    def _observe(self, t: int) -> np.ndarray:
        """Build the observation at step ``t`` and keep it for :meth:`render`."""
        self._last_obs = self._obs(t)
        return self._last_obs

    def render(self) -> Union[str, np.ndarray, None]:  # type: ignore[override]
        """
        Show the last observation: a text line (``"ansi"``) or an image with one 8x8 cell per
        observation channel, white for 1 (``"rgb_array"``); ``None`` without a render mode.
        """
        if self.render_mode is None or self._last_obs is None:
            return None
        if self.render_mode == "ansi":
            return f"{type(self).__name__} obs={self._last_obs.astype(int).tolist()}\n"
        cells = (np.clip(self._last_obs, 0.0, 1.0) * 255).astype(np.uint8)
        image = np.repeat(np.repeat(cells[None, :], 8, axis=0), 8, axis=1)
        return np.repeat(image[:, :, None], 3, axis=2)

    def _begin_step(self, action: Any) -> int:
        """
        Validate a call to ``step`` and return the action as an ``int``.

        :param action: the action passed to ``step``
        :return: the action as a Python ``int``
        :raises RuntimeError: if the episode has not been reset or is over
        :raises ValueError: if the action is not in the action space
        """
        self._current_step()
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, {self.action_space.n - 1}], got {action!r}")
        return int(action)

    def _end_step(self) -> bool:
        """Advance the clock by one step; return ``terminated`` (and close the episode if so)."""
        assert self._t is not None
        self._t += 1
        if self._t >= self.episode_length:
            self._t = None
            return True
        return False


def one_hot_box(dim: int) -> spaces.Box:
    """
    Observation space for one-hot codes and binary flags.

    :param dim: number of channels
    :return: ``Box(0, 1, (dim,), float32)``
    """
    return spaces.Box(low=0.0, high=1.0, shape=(dim,), dtype=np.float32)

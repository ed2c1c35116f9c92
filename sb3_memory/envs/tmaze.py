"""Passive T-Maze of Ni et al. (2023), "When do transformers shine in RL? Decoupling memory
from credit assignment" (NeurIPS 2023), following their ``TMazeClassicPassive``.
"""

from typing import Any, Optional, Union

import numpy as np
from gymnasium import spaces

from sb3_memory.envs.base import MemoryTaskEnv, check_float, check_int, one_hot_box

#: Action indices, in the order of Ni et al.'s ``action_mapping``.
RIGHT, UP, LEFT, DOWN = 0, 1, 2, 3
_MOVES = ((1, 0), (0, 1), (-1, 0), (0, -1))


class PassiveTMazeEnv(MemoryTaskEnv):
    """
    Passive T-Maze (Ni et al., 2023): a cue seen only at the first step decides which arm of
    a T-junction, ``corridor_length`` cells away, is rewarded.

    The maze is a corridor of cells ``x = 0 .. corridor_length`` (``y = 0``) with two goal
    cells ``(corridor_length, +1)`` (up) and ``(corridor_length, -1)`` (down) at the junction.
    The agent starts at ``x = 0``; the goal (up or down, equally likely) is shown in the first
    observation only. Moves into a wall leave the agent in place. An episode always lasts
    ``T = corridor_length + 1`` steps, exactly the time to walk to the junction and turn, so
    there is no slack. Reward at step ``t = 1 .. T`` (after the move):

    * ``t < T``: ``penalty`` (default ``-1 / corridor_length``) if the agent lags behind the
      optimal walk (``x < t``), else 0;
    * ``t = T``: 1 if the agent is in the goal cell, else 0.

    Observation: ``Box(0, 1, (3,), float32)`` = ``[cue_up, cue_down, junction]``: the cue
    channels are one-hot at ``t = 0`` only, the junction flag is 1 when ``x = corridor_length``.
    Every corridor cell (including the start after ``t = 0``) looks the same, as in the
    paper's ambiguous-position observation.
    Action: ``Discrete(4)``: 0 right, 1 up, 2 left, 3 down (module constants ``RIGHT``, ``UP``,
    ``LEFT``, ``DOWN``).

    Optimal return: 1 (walk right, turn to the cued arm). Chance return (best memoryless
    policy: walk right, then the junction observation carries no cue, so the turn is a coin
    flip): 0.5. A policy that wastes one step gets ``corridor_length * penalty`` (-1 by
    default) and cannot reach the goal. ``info["is_success"]`` is given at the last step.

    With ``auto_walk=True`` (registered as ``sb3_memory/PassiveTMazeJunction-v0``) the corridor
    walks itself: every step before the junction moves the agent one cell right whatever the
    action, so the episode comes to the junction on time and the only decision is the turn.
    At long corridors the original mostly measures whether an agent learns to walk (no agent
    of ours reached the junction on time at ``corridor_length=100`` in 300k steps); this
    variant measures the memory alone. Its optimal and chance returns are the same (1 and 0.5).

    :param corridor_length: cells from the start to the junction (difficulty knob: the
        memory length), ``>= 1``
    :param penalty: reward for each step spent behind the optimal walk, ``<= 0``; ``None``
        (default) uses ``-1 / corridor_length`` as in the paper
    :param auto_walk: move right at every step before the junction whatever the action (the
        episode then tests the turn, that is the memory, alone)
    :param render_mode: ``None``, ``"ansi"`` or ``"rgb_array"`` (shows the last observation)
    """

    def __init__(
        self,
        corridor_length: int = 100,
        penalty: Optional[float] = None,
        auto_walk: bool = False,
        render_mode: Optional[str] = None,
    ) -> None:
        super().__init__(render_mode)
        self.corridor_length = check_int("corridor_length", corridor_length, 1)
        if penalty is None:
            penalty = -1.0 / self.corridor_length
        self.penalty = check_float("penalty", penalty, high=0.0)
        if not isinstance(auto_walk, (bool, np.bool_)):
            raise ValueError(f"auto_walk must be True or False, got {auto_walk!r}")
        self.auto_walk = bool(auto_walk)
        self.observation_space = one_hot_box(3)
        self.action_space = spaces.Discrete(4)
        self._x = 0
        self._y = 0
        self._goal = 1

    @property
    def episode_length(self) -> int:
        """Number of steps of every episode: ``corridor_length + 1``."""
        return self.corridor_length + 1

    @property
    def optimal_return(self) -> float:
        """Return of a perfect-memory policy: 1."""
        return 1.0

    @property
    def chance_return(self) -> float:
        """Expected return of the best memoryless policy: 0.5."""
        return 0.5

    def optimal_action(self) -> int:
        """Right along the corridor; at the junction, the turn to the cued arm."""
        self._current_step()
        if self._x < self.corridor_length:
            return RIGHT
        return UP if self._goal == 1 else DOWN

    def _obs(self, t: int) -> np.ndarray:
        obs = np.zeros(3, dtype=np.float32)
        if t == 0:
            obs[0 if self._goal == 1 else 1] = 1.0
        obs[2] = float(self._x == self.corridor_length)
        return obs

    def _is_cell(self, x: int, y: int) -> bool:
        if y == 0:
            return 0 <= x <= self.corridor_length
        return x == self.corridor_length and y in (-1, 1)

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """
        Put the agent at the start and draw the goal arm.

        :param seed: seed of the environment's random generator (``None``: keep its state)
        :param options: unused
        :return: first observation (showing the cue) and an empty info dict
        """
        super().reset(seed=seed)
        self._x, self._y = 0, 0
        self._goal = 1 if self.np_random.integers(0, 2) == 1 else -1
        self._t = 0
        return self._observe(0), {}

    def step(self, action: Union[int, np.integer]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """
        Move one cell (or bump into a wall).

        :param action: 0 right, 1 up, 2 left, 3 down
        :return: observation, reward, terminated, truncated (always ``False``), info
        """
        a = self._begin_step(action)
        if self.auto_walk and self._x < self.corridor_length:
            a = RIGHT
        dx, dy = _MOVES[a]
        if self._is_cell(self._x + dx, self._y + dy):
            self._x, self._y = self._x + dx, self._y + dy
        assert self._t is not None
        t = self._t + 1
        terminated = self._end_step()
        info: dict[str, Any] = {}
        if terminated:
            success = self._y == self._goal
            reward = 1.0 if success else 0.0
            info["is_success"] = success
        else:
            reward = self.penalty if self._x < t else 0.0
        return self._observe(t), reward, terminated, False, info

"""Capacity tasks after Graves et al. (2014), "Neural Turing Machines": copy and associative
recall of random bit vectors, with ``MultiBinary`` actions and a per-bit score.

The symbol tasks of this suite fit in an LSTM's state (their supervised bound shows it). These
do not: a copy of 20 vectors of 8 bits holds 160 bits that must be kept apart and read back in
order, and at twice or four times the trained length an agent must generalise the procedure,
not a stored table. Graves trained on lengths 1-20; so do the defaults here.
"""

from typing import Any, Optional

import numpy as np
from gymnasium import spaces

from sb3_memory.envs.base import MemoryTaskEnv, check_int, one_hot_box

__all__ = ["BinaryAssociativeRecallEnv", "BinaryCopyEnv", "BinaryTaskEnv"]


class BinaryTaskEnv(MemoryTaskEnv):
    """
    Base class of the bit-vector tasks: each episode shows random ``bits``-bit vectors and
    delimiters, then asks for vectors back, one per answer step.

    Action: ``MultiBinary(bits)``, the vector to emit (only answer steps are scored).
    Reward at an answer step: the share of its ``bits`` bits that are right, so a perfect step
    earns 1 and a coin flip 0.5 in expectation. At the episode's last step ``info`` holds
    ``bit_accuracy`` (right bits over answered bits: the task's score) and ``is_success``
    (every bit right).

    Subclasses draw an episode in :meth:`_new_episode`, filling ``self._inputs`` (the
    observations, one row per step) and ``self._targets`` (one row per step; ``-1`` where a step
    is not scored).
    """

    action_space: spaces.MultiBinary  # type: ignore[assignment]

    def __init__(self, bits: int, channels: int, render_mode: Optional[str] = None) -> None:
        super().__init__(render_mode)
        self.bits = check_int("bits", bits, 1)
        self.observation_space = one_hot_box(channels)
        self.action_space = spaces.MultiBinary(self.bits)
        self._inputs = np.zeros((1, channels), dtype=np.float32)
        self._targets = np.full((1, self.bits), -1, dtype=np.int8)
        self._right_bits = 0
        self._answered_bits = 0

    @property
    def episode_length(self) -> int:
        """Number of steps of the current episode (it varies with the drawn length)."""
        return len(self._inputs)

    @property
    def answer_steps(self) -> int:
        """Number of scored steps of the current episode (the optimal return)."""
        return int((self._targets[:, 0] >= 0).sum())

    def optimal_action(self) -> Optional[np.ndarray]:
        """The vector asked for at an answer step (``int8``, one entry per bit); ``None`` elsewhere."""
        target = self._targets[self._current_step()]
        return target.copy() if target[0] >= 0 else None

    def _new_episode(self) -> None:
        raise NotImplementedError

    def _obs(self, t: int) -> np.ndarray:
        if t >= len(self._inputs):
            return np.zeros(self._inputs.shape[1], dtype=np.float32)
        return self._inputs[t].copy()

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """
        Start an episode with fresh random vectors.

        :param seed: seed of the environment's random generator (``None``: keep its state)
        :param options: unused
        :return: first observation and an empty info dict
        """
        super().reset(seed=seed)
        self._new_episode()
        self._right_bits = self._answered_bits = 0
        self._t = 0
        return self._observe(0), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:  # type: ignore[override]
        """
        Emit one vector.

        :param action: ``bits`` zeros and ones (scored at answer steps only)
        :return: observation, reward, terminated, truncated (always ``False``), info
        """
        t = self._current_step()
        bits = np.asarray(action)
        if bits.shape != (self.bits,) or not np.isin(bits, (0, 1)).all():
            raise ValueError(f"action must be {self.bits} zeros and ones (MultiBinary({self.bits})), got {action!r}")
        target = self._targets[t]
        reward = 0.0
        if target[0] >= 0:
            right = int((bits.astype(np.int8) == target).sum())
            self._right_bits += right
            self._answered_bits += self.bits
            reward = right / self.bits
        terminated = self._end_step()
        info: dict[str, Any] = {}
        if terminated:
            info["bit_accuracy"] = self._right_bits / self._answered_bits
            info["is_success"] = self._right_bits == self._answered_bits
        return self._observe(t + 1), reward, terminated, False, info


class BinaryCopyEnv(BinaryTaskEnv):
    """
    Copy (Graves et al., 2014): observe a sequence of random bit vectors, then a delimiter, then
    emit the sequence in the same order.

    An episode draws its length ``L`` uniformly in ``[min_length, max_length]`` and lasts
    ``2 * L + 1`` steps: ``L`` steps showing one random vector each, one step showing the
    delimiter, ``L`` answer steps showing nothing (all zeros), as in the paper. Answer step
    ``i`` is scored against the ``i``-th vector.

    Observation: ``Box(0, 1, (bits + 1,), float32)``: the vector's bits, then the delimiter
    channel. Action: ``MultiBinary(bits)``.

    Optimal return: ``L`` (1 per answer step), ``(min_length + max_length) / 2`` on average
    (:attr:`optimal_return`). Chance return (best memoryless policy): half that.

    :param bits: bits per vector, ``>= 1``
    :param min_length: shortest sequence, ``>= 1``
    :param max_length: longest sequence (difficulty knob), ``>= min_length``
    :param render_mode: ``None``, ``"ansi"`` or ``"rgb_array"`` (shows the last observation)
    """

    def __init__(self, bits: int = 8, min_length: int = 1, max_length: int = 20, render_mode: Optional[str] = None) -> None:
        super().__init__(bits, bits + 1, render_mode)
        self.min_length = check_int("min_length", min_length, 1)
        self.max_length = check_int("max_length", max_length, self.min_length, note="at least min_length")

    @property
    def optimal_return(self) -> float:
        """Expected return of a perfect-memory policy: the mean length, ``(min_length + max_length) / 2``."""
        return (self.min_length + self.max_length) / 2

    @property
    def chance_return(self) -> float:
        """Expected return of the best memoryless policy: half the optimal return (coin-flip bits)."""
        return self.optimal_return / 2

    def _new_episode(self) -> None:
        length = int(self.np_random.integers(self.min_length, self.max_length + 1))
        vectors = self.np_random.integers(0, 2, size=(length, self.bits)).astype(np.int8)
        self._inputs = np.zeros((2 * length + 1, self.bits + 1), dtype=np.float32)
        self._inputs[:length, : self.bits] = vectors
        self._inputs[length, self.bits] = 1.0
        self._targets = np.full((2 * length + 1, self.bits), -1, dtype=np.int8)
        self._targets[length + 1 :] = vectors


class BinaryAssociativeRecallEnv(BinaryTaskEnv):
    """
    Associative recall (Graves et al., 2014): observe a list of items, each ``item_size`` random
    bit vectors, then one of them (not the last) as a query; emit the item that followed it.

    An episode draws the number of items ``n`` uniformly in ``[min_items, max_items]``. Each
    item is shown as one item-delimiter step followed by its ``item_size`` vectors. Then come
    one query-delimiter step, the query item's vectors, a second query-delimiter step, and
    ``item_size`` answer steps showing nothing. ``n * (item_size + 1) + 2 * item_size + 2``
    steps in all.

    Unlike :class:`BinaryCopyEnv`, the answer depends on content, not position: the agent must
    find the stored item that matches the query, which is what content-based addressing is for.

    Observation: ``Box(0, 1, (bits + 2,), float32)``: the vector's bits, the item-delimiter
    channel and the query-delimiter channel. Action: ``MultiBinary(bits)``.

    Optimal return: ``item_size``. Chance return (best memoryless policy): ``item_size / 2``.

    :param bits: bits per vector, ``>= 1``
    :param item_size: vectors per item, ``>= 1``
    :param min_items: fewest items, ``>= 2`` (the query is never the last item)
    :param max_items: most items (difficulty knob), ``>= min_items``
    :param render_mode: ``None``, ``"ansi"`` or ``"rgb_array"`` (shows the last observation)
    """

    def __init__(
        self,
        bits: int = 8,
        item_size: int = 3,
        min_items: int = 2,
        max_items: int = 6,
        render_mode: Optional[str] = None,
    ) -> None:
        super().__init__(bits, bits + 2, render_mode)
        self.item_size = check_int("item_size", item_size, 1)
        self.min_items = check_int("min_items", min_items, 2, note="the query needs an item after it")
        self.max_items = check_int("max_items", max_items, self.min_items, note="at least min_items")

    @property
    def optimal_return(self) -> float:
        """Return of a perfect-memory policy: ``item_size`` (1 per answer step)."""
        return float(self.item_size)

    @property
    def chance_return(self) -> float:
        """Expected return of the best memoryless policy: ``item_size / 2`` (coin-flip bits)."""
        return self.item_size / 2

    def _new_episode(self) -> None:
        n, size, bits = int(self.np_random.integers(self.min_items, self.max_items + 1)), self.item_size, self.bits
        items = self.np_random.integers(0, 2, size=(n, size, bits)).astype(np.int8)
        query = int(self.np_random.integers(0, n - 1))
        steps = n * (size + 1) + 2 * size + 2
        self._inputs = np.zeros((steps, bits + 2), dtype=np.float32)
        self._targets = np.full((steps, bits), -1, dtype=np.int8)
        for i in range(n):
            start = i * (size + 1)
            self._inputs[start, bits] = 1.0
            self._inputs[start + 1 : start + 1 + size, :bits] = items[i]
        query_start = n * (size + 1)
        self._inputs[query_start, bits + 1] = 1.0
        self._inputs[query_start + 1 : query_start + 1 + size, :bits] = items[query]
        self._inputs[query_start + 1 + size, bits + 1] = 1.0
        self._targets[steps - size :] = items[query + 1]

"""Rollout buffers that serve whole sequence chunks together with the memory state at their start."""

from collections.abc import Generator
from typing import TYPE_CHECKING, Callable, ClassVar, Optional, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict

from sb3_memory.common.type_aliases import MemoryRolloutBufferSamples
from sb3_memory.memory import native

# A state kept compact: the indices (int32) and values of its entries that differ from the initial state.
CompactState = tuple[th.Tensor, th.Tensor]


def compact_states(
    states: th.Tensor, initial_state: th.Tensor, columns: Optional[list[Optional[th.Tensor]]] = None
) -> list[CompactState]:
    """
    Each row of ``states`` as the entries where it differs from ``initial_state`` (one row): its
    values, not differences, so :func:`rebuild_states` is exact.

    :param columns: per row, the only columns where it may differ (ascending), or None to compare
        every column (the policy's ``columns_that_may_differ``: a sparse core's state says which
        blocks of slots its episode touched, so a large memory's row costs what was touched)
    """
    initial = initial_state.reshape(-1)
    if columns is None or all(candidates is None for candidates in columns):
        differs = states != initial.reshape(1, -1)  # one comparison for the whole batch
        return [(mask.nonzero().flatten().to(th.int32), row[mask]) for row, mask in zip(states, differs)]
    compacted = []
    for row, candidates in zip(states, columns):
        if candidates is None:
            mask = row != initial
            compacted.append((mask.nonzero().flatten().to(th.int32), row[mask]))
        else:
            candidates = candidates.to(row.device)
            values = row[candidates]
            mask = values != initial[candidates]
            compacted.append((candidates[mask].to(th.int32), values[mask]))
    return compacted


def rebuild_states(initial_state: th.Tensor, rows: list[CompactState]) -> th.Tensor:
    """The dense ``(len(rows), state_size)`` states of :func:`compact_states` rows."""
    initial = initial_state.reshape(1, -1)
    out = native.empty_state((len(rows), initial.shape[1]), initial).copy_(initial.expand(len(rows), -1))
    for index, (indices, values) in enumerate(rows):
        out[index, indices.long()] = values.to(out.device)
    return out


def compact_nbytes(rows: list[CompactState]) -> int:
    """Bytes that compact rows keep."""
    return sum(t.element_size() * t.nelement() for row in rows for t in row)


class ChunkedStateMixin:
    """
    Splits each environment's rollout into chunks of ``sequence_length`` steps and stores the
    policy's flat memory state only at the start of each chunk, on the policy's device. Episode
    starts inside a chunk are replayed by the core (``episode_starts``), so no padding is needed.

    The state is allocated at the first :meth:`add_state` (its size comes from the policy).

    With ``compact_states``, a chunk's state is kept as the entries where it differs from the
    initial state, values and indices (exact: the values themselves, not differences). That is what
    sparse cores want: their reads and writes touch K slots a step, so an episode's memory differs
    from a fresh one in at most K rows per step so far, and a large memory (tens of thousands of
    slots) costs what its episode wrote, not N x W floats per chunk.

    :param sequence_length: chunk length, a divisor of ``buffer_size``
    :param compact_states: keep each chunk's state as its entries that differ from the initial state
    The other parameters are those of SB3's ``RolloutBuffer``.
    """

    buffer_size: int
    n_envs: int
    device: th.device
    pos: int
    full: bool
    generator_ready: bool
    # Arrays with one entry per step, flattened env-major by get(); subclasses add theirs.
    per_step_arrays: ClassVar[tuple[str, ...]] = (
        "observations",
        "actions",
        "values",
        "log_probs",
        "advantages",
        "returns",
        "episode_starts",
        "rewards",
    )

    # Provided by the SB3 buffer this mixin is combined with (RolloutBuffer or DictRolloutBuffer).
    observations: Union[np.ndarray, dict[str, np.ndarray]]
    actions: np.ndarray
    values: np.ndarray
    log_probs: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    episode_starts: np.ndarray
    rewards: np.ndarray

    if TYPE_CHECKING:  # provided by the SB3 buffer this mixin is combined with

        @staticmethod
        def swap_and_flatten(arr: np.ndarray) -> np.ndarray: ...

        def to_torch(self, array: np.ndarray, copy: bool = True) -> th.Tensor: ...

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: Union[th.device, str] = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        sequence_length: int = 1,
        compact_states: bool = False,
    ) -> None:
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)  # type: ignore[call-arg]
        if sequence_length < 1 or buffer_size % sequence_length != 0:
            raise ValueError(
                f"sequence_length={sequence_length} must divide n_steps={buffer_size}: "
                "choose a divisor of n_steps (or change n_steps)"
            )
        self.sequence_length = sequence_length
        self.chunks_per_env = buffer_size // sequence_length
        self.chunk_states: Optional[th.Tensor] = None
        self.compact_states = compact_states
        # compact_states: per chunk, per env, the (indices, values) where the state is not the initial row
        self.compact_chunk_states: list[list[CompactState]] = [[] for _ in range(self.chunks_per_env)]
        self.initial_state_row: Optional[th.Tensor] = None

    def add_state(
        self,
        states: th.Tensor,
        initial_state: Optional[th.Tensor] = None,
        columns: Optional[Callable[[th.Tensor], list[Optional[th.Tensor]]]] = None,
    ) -> None:
        """
        Record the state of every env before the step about to be added, if it starts a chunk.

        :param initial_state: the state an episode starts from, ``(1, state_size)`` (needed with ``compact_states``)
        :param columns: with ``compact_states``, where each row may differ from ``initial_state``
            (the policy's ``columns_that_may_differ``, called only for a chunk's first step); None
            compares every column
        """
        if self.pos % self.sequence_length != 0:
            return
        if self.compact_states:
            if initial_state is None:
                raise ValueError("a buffer with compact_states=True keeps states against the initial one: pass initial_state")
            self.initial_state_row = initial_state.reshape(-1)
            candidates = None if columns is None else columns(states)
            self.compact_chunk_states[self.pos // self.sequence_length] = compact_states(
                states, self.initial_state_row, candidates
            )
            return
        if self.chunk_states is None or self.chunk_states.shape[-1] != states.shape[-1]:
            self.chunk_states = th.zeros((self.chunks_per_env, self.n_envs, states.shape[-1]), device=self.device)
        self.chunk_states[self.pos // self.sequence_length] = states

    def get(self, batch_size: Optional[int] = None) -> Generator[MemoryRolloutBufferSamples, None, None]:  # type: ignore[override]
        """
        Minibatches of whole chunks in random order.

        :param batch_size: transitions per minibatch, a multiple of ``sequence_length``
            (None: the whole rollout at once)
        """
        assert self.full, "the rollout buffer must be full before sampling"
        total = self.buffer_size * self.n_envs
        if batch_size is None:
            batch_size = total
        if batch_size % self.sequence_length != 0:
            raise ValueError(
                f"batch_size={batch_size} is not a multiple of sequence_length={self.sequence_length}: "
                "minibatches are made of whole chunks, so pick a batch_size that is a multiple of it"
            )
        if not self.generator_ready:
            # Env-major flattening makes each chunk a contiguous block of sequence_length rows.
            for name in self.per_step_arrays:
                value = getattr(self, name)
                if isinstance(value, dict):
                    setattr(self, name, {key: self.swap_and_flatten(array) for key, array in value.items()})
                else:
                    setattr(self, name, self.swap_and_flatten(value))
            self.generator_ready = True
        # Same chunk order as the flattened arrays: chunk k = env * chunks_per_env + c.
        states = None
        if not self.compact_states:
            assert self.chunk_states is not None
            states = self.chunk_states.transpose(0, 1).reshape(total // self.sequence_length, -1)
        order = np.random.permutation(total // self.sequence_length)
        per_batch = batch_size // self.sequence_length
        for start in range(0, len(order), per_batch):
            yield self._get_chunk_samples(order[start : start + per_batch], states)

    def chunk_start_states(self, chunk_ids: np.ndarray, states: Optional[th.Tensor] = None) -> th.Tensor:
        """
        The stored states of chunks ``env * chunks_per_env + c``, ``(len(chunk_ids), state_size)``.

        :param states: all chunks' states in that order, if already flattened (not compact)
        """
        if not self.compact_states:
            if states is None:
                assert self.chunk_states is not None
                states = self.chunk_states.transpose(0, 1).reshape(-1, self.chunk_states.shape[-1])
            return states[th.as_tensor(chunk_ids, device=states.device)]
        assert self.initial_state_row is not None
        rows = [
            self.compact_chunk_states[chunk][env] for env, chunk in (divmod(int(k), self.chunks_per_env) for k in chunk_ids)
        ]
        return rebuild_states(self.initial_state_row, rows)

    def stored_chunk_states(self) -> th.Tensor:
        """Every chunk's stored state, ``(chunks_per_env, n_envs, state_size)`` (compact ones rebuilt)."""
        if not self.compact_states:
            assert self.chunk_states is not None
            return self.chunk_states
        env_major = self.chunk_start_states(np.arange(self.n_envs * self.chunks_per_env))
        return env_major.reshape(self.n_envs, self.chunks_per_env, -1).transpose(0, 1)

    def _get_chunk_samples(self, chunk_ids: np.ndarray, states: Optional[th.Tensor]) -> MemoryRolloutBufferSamples:
        rows = self._chunk_rows(chunk_ids)
        observations = self.observations
        obs: Union[th.Tensor, TensorDict]
        if isinstance(observations, dict):
            obs = {key: self.to_torch(array[rows]) for key, array in observations.items()}
        else:
            obs = self.to_torch(observations[rows])
        return MemoryRolloutBufferSamples(
            observations=obs,
            # Float actions, as SB3's RolloutBuffer serves them (MultiBinary is stored as int8).
            actions=self.to_torch(self.actions[rows].astype(np.float32, copy=False)),
            old_values=self.to_torch(self.values[rows].flatten()),
            old_log_prob=self.to_torch(self.log_probs[rows].flatten()),
            advantages=self.to_torch(self.advantages[rows].flatten()),
            returns=self.to_torch(self.returns[rows].flatten()),
            episode_starts=self.to_torch(self.episode_starts[rows].flatten()),
            rewards=self.to_torch(self.rewards[rows].flatten()),
            states=self.chunk_start_states(chunk_ids, states),
        )

    def _chunk_rows(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Rows of the flattened arrays that make up the chunks, time-major: row ``t * B + b``."""
        return (chunk_ids[None, :] * self.sequence_length + np.arange(self.sequence_length)[:, None]).reshape(-1)

    def state_nbytes_per_transition(self) -> float:
        """Bytes of stored memory state per stored transition."""
        if self.compact_states:
            stored = [row for chunk in self.compact_chunk_states for row in chunk]
            return compact_nbytes(stored) / (self.buffer_size * self.n_envs)
        if self.chunk_states is None:
            return 0.0
        return self.chunk_states.element_size() * self.chunk_states.nelement() / (self.buffer_size * self.n_envs)


# get() yields MemoryRolloutBufferSamples, not SB3's RolloutBufferSamples, as sb3-contrib's recurrent buffers do.
class MemoryRolloutBuffer(ChunkedStateMixin, RolloutBuffer):  # type: ignore[misc]
    """
    :class:`~stable_baselines3.common.buffers.RolloutBuffer` that also stores the memory state at
    the start of each ``sequence_length`` chunk and yields :class:`MemoryRolloutBufferSamples`.
    """


class MemoryDictRolloutBuffer(ChunkedStateMixin, DictRolloutBuffer):  # type: ignore[misc]
    """Dict-observation version of :class:`MemoryRolloutBuffer`."""

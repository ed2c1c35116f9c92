"""Replay of whole sequences with the memory state at their start (stored-state replay, as R2D2)."""

from typing import Any, Optional, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.vec_env import VecNormalize

from sb3_memory.common.buffers import CompactState, compact_nbytes, compact_states, rebuild_states
from sb3_memory.common.type_aliases import SequenceReplayBufferSamples


class SequenceReplayBuffer(BaseBuffer):
    """
    Each environment's steps in order, in a ring of ``buffer_size // n_envs`` steps, and the policy's
    flat memory state before every ``state_stride``-th step. :meth:`sample` returns sequences of
    ``sequence_length`` consecutive steps of one environment that start where a state was stored,
    so the core can replay them from it (Kapturowski et al., 2019). Episodes that start inside a
    sequence are marked (``episode_starts``) and replayed from the initial state, as in
    :class:`~sb3_memory.common.buffers.MemoryRolloutBuffer`.

    A ``BaseBuffer``, not a ``ReplayBuffer``: it keeps steps, not transitions, so SB3's
    ``ReplayBuffer`` contract (``add(obs, next_obs, action, reward, done, infos)``, samples of
    single transitions with their next observation) does not hold. The memory algorithms store
    steps through :meth:`~sb3_memory.common.off_policy_algorithm.MemoryOffPolicyMixin._store_transition`
    and load saved buffers through their own ``load_replay_buffer``.

    The transition's next observation is not stored: it is the next step's observation (or, after
    an episode's end, not needed: an ended episode is not bootstrapped), except where a time limit
    cut the episode (``handle_timeout_termination``, as SB3's): then the observation it stopped at
    is kept, for the value to bootstrap from. The state is allocated at the first :meth:`add` (its
    size comes from the policy).

    :param buffer_size: steps kept, over all environments (per environment: rounded down to whole
        ``state_stride``)
    :param observation_space: the observation space
    :param action_space: the action space (``Discrete`` actions are kept as integers, ``Box`` ones
        as SB3's off-policy algorithms store them: scaled to [-1, 1])
    :param device: where sampled tensors go
    :param n_envs: environments stepped together
    :param optimize_memory_usage: must be False (SB3's algorithms pass it): each step is kept once already
    :param handle_timeout_termination: bootstrap where a time limit cut an episode (``TimeLimit.truncated``)
    :param sequence_length: steps per sampled sequence (burn-in, trained steps and n-step lookahead)
    :param state_stride: a state is stored every this many steps; sequences start only there, so a
        stride shorter than the sequence makes sampled sequences overlap
    :param compact_states: keep each stored state as its entries that differ from the initial
        state (exact; for sparse cores, whose states differ from a fresh one in the slots their
        episode wrote), see :func:`~sb3_memory.common.buffers.compact_states`
    """

    # One array, or one per key of a Dict space.
    observations: Any
    obs_shape: Any
    states: Optional[np.ndarray]

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: Union[th.device, str] = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        sequence_length: int = 16,
        state_stride: int = 8,
        compact_states: bool = False,
    ) -> None:
        if optimize_memory_usage:
            raise ValueError("SequenceReplayBuffer keeps each step once already: leave optimize_memory_usage=False")
        if sequence_length < 1 or state_stride < 1:
            raise ValueError(f"sequence_length ({sequence_length}) and state_stride ({state_stride}) must be positive")
        super().__init__(buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.handle_timeout_termination = handle_timeout_termination
        # Per environment, as SB3's ReplayBuffer, rounded down to whole strides (a state per stride).
        self.buffer_size = buffer_size // n_envs // state_stride * state_stride
        if self.buffer_size < max(sequence_length, state_stride):
            raise ValueError(
                f"buffer_size={buffer_size} keeps {buffer_size // n_envs} steps per environment ({n_envs} envs), "
                f"fewer than a sequence ({sequence_length} steps) or a state stride ({state_stride}): raise buffer_size"
            )
        self.sequence_length = sequence_length
        self.state_stride = state_stride
        if isinstance(observation_space, spaces.Dict):
            self.observations = {
                key: np.zeros((self.buffer_size, n_envs, *shape), dtype=observation_space[key].dtype)
                for key, shape in self.obs_shape.items()
            }
        else:
            self.observations = np.zeros((self.buffer_size, n_envs, *self.obs_shape), dtype=observation_space.dtype)  # type: ignore[misc]
        # Discrete actions as integers; Box actions as SB3's off-policy algorithms store them (scaled).
        self.action_shape: tuple[int, ...] = (
            () if isinstance(action_space, spaces.Discrete) else (get_action_dim(action_space),)
        )
        action_dtype = np.int64 if isinstance(action_space, spaces.Discrete) else np.float32
        self.actions = np.zeros((self.buffer_size, n_envs, *self.action_shape), dtype=action_dtype)
        self.rewards = np.zeros((self.buffer_size, n_envs), dtype=np.float32)
        self.dones = np.zeros((self.buffer_size, n_envs), dtype=np.float32)
        self.episode_starts = np.zeros((self.buffer_size, n_envs), dtype=np.float32)
        self.timeouts = np.zeros((self.buffer_size, n_envs), dtype=np.float32)
        # (ring position, environment) -> the observation a time limit stopped the episode at (rare:
        # one per truncated episode, so not an array as large as the observations)
        self.terminal_observations: dict[tuple[int, int], Any] = {}
        self.states = None
        self.compact_states = compact_states
        # compact_states: per stored state (ring slot, environment), its entries that differ from the initial one
        self.compact_stored_states: dict[tuple[int, int], CompactState] = {}
        self.initial_state_row: Optional[th.Tensor] = None

    def add(
        self,
        obs: Union[np.ndarray, dict[str, np.ndarray]],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        episode_start: np.ndarray,
        state: th.Tensor,
        infos: Optional[list[dict[str, Any]]] = None,
        initial_state: Optional[th.Tensor] = None,
    ) -> None:
        """
        One step of every environment.

        :param obs: the observation the action was chosen on
        :param done: the episode ended with this transition
        :param episode_start: ``obs`` is its episode's first observation
        :param state: the policy's flat state before this step, ``(n_envs, state_size)`` (kept every
            ``state_stride`` steps)
        :param infos: the environments' infos: ``"TimeLimit.truncated"`` marks a timeout, whose
            ``"terminal_observation"`` (unnormalised) is kept
        :param initial_state: the state an episode starts from, ``(1, state_size)`` (needed with ``compact_states``)
        :raises TypeError: where ``state`` is not a tensor, as when called the way SB3's
            ``ReplayBuffer.add(obs, next_obs, action, reward, done, infos)`` is
        """
        if not isinstance(state, th.Tensor):
            raise TypeError(
                f"state must be the policy's flat memory state, a tensor (n_envs, state_size), got {type(state).__name__}: "
                "SequenceReplayBuffer.add takes (obs, action, reward, done, episode_start, state, infos), not SB3's "
                "ReplayBuffer.add(obs, next_obs, action, reward, done, infos); a memory algorithm stores its steps "
                "through MemoryOffPolicyMixin._store_transition"
            )
        if isinstance(self.observations, dict):
            for key in self.observations:
                self.observations[key][self.pos] = np.asarray(obs[key]).reshape(self.n_envs, *self.obs_shape[key])  # type: ignore[call-overload]
        else:
            self.observations[self.pos] = np.asarray(obs).reshape(self.n_envs, *self.obs_shape)  # type: ignore[misc]
        self.actions[self.pos] = np.asarray(action).reshape(self.n_envs, *self.action_shape)
        self.rewards[self.pos] = np.asarray(reward).reshape(self.n_envs)
        self.dones[self.pos] = np.asarray(done).reshape(self.n_envs)
        self.episode_starts[self.pos] = np.asarray(episode_start).reshape(self.n_envs)
        self.timeouts[self.pos] = 0.0
        for env_index in range(self.n_envs):
            self.terminal_observations.pop((self.pos, env_index), None)
            info = infos[env_index] if infos is not None else {}
            if self.handle_timeout_termination and self.dones[self.pos, env_index] and info.get("TimeLimit.truncated"):
                self.timeouts[self.pos, env_index] = 1.0
                self.terminal_observations[(self.pos, env_index)] = info["terminal_observation"]
        if self.pos % self.state_stride == 0 and self.compact_states:
            if initial_state is None:
                raise ValueError("a buffer with compact_states=True keeps states against the initial one: pass initial_state")
            self.initial_state_row = initial_state.detach().cpu().reshape(-1)
            rows = compact_states(state.detach().cpu(), self.initial_state_row)
            for env_index, row in enumerate(rows):
                self.compact_stored_states[(self.pos // self.state_stride, env_index)] = row
        elif self.pos % self.state_stride == 0:
            flat = state.detach().cpu().numpy()
            if self.states is None:
                self.states = np.zeros((self.buffer_size // self.state_stride, self.n_envs, flat.shape[1]), dtype=np.float32)
            self.states[self.pos // self.state_stride] = flat
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full, self.pos = True, 0

    def extend(self, *args: Any, **kwargs: Any) -> None:
        """Not available: BaseBuffer's ``extend`` adds transitions one by one, a sequence buffer needs whole steps."""
        raise NotImplementedError(
            "SequenceReplayBuffer keeps every environment's steps in order with their memory states: add them one step "
            "(of all environments) at a time with add(), not a batch of transitions with extend()"
        )

    def reset(self) -> None:
        """Forget every stored step (and the timeouts' observations and compact states kept beside them)."""
        super().reset()
        self.terminal_observations.clear()
        self.compact_stored_states.clear()

    def age(self, positions: np.ndarray) -> np.ndarray:
        """How many kept steps come before each ring position (0: the oldest kept step)."""
        return (positions - (self.pos if self.full else 0)) % self.buffer_size

    def valid_starts(self, before: int = 0) -> np.ndarray:
        """
        Ring positions where a sequence can start: a stored state, and ``sequence_length`` steps
        after it, all kept (and ``before`` steps before it, for :meth:`sequences` that start earlier).
        """
        starts = np.arange(0, self.buffer_size, self.state_stride)
        age = self.age(starts)
        return starts[(age >= before) & (age + self.sequence_length <= self.size())]

    def sample(self, batch_size: int, env: Optional[VecNormalize] = None) -> SequenceReplayBufferSamples:
        """
        ``batch_size`` sequences, each of a uniformly drawn environment and valid start.

        :param batch_size: sequences to draw
        :param env: the ``VecNormalize`` to normalise observations and rewards with, if any
        :raises ValueError: while no whole sequence is stored
        """
        candidates = self.valid_starts()
        if len(candidates) == 0:
            raise ValueError(
                f"no sequence of {self.sequence_length} steps is stored yet ({self.size()} steps per environment): "
                "raise learning_starts above sequence_length * n_envs"
            )
        starts = np.random.choice(candidates, size=batch_size)
        env_indices = np.random.randint(0, self.n_envs, size=batch_size)
        return self._get_samples(starts * self.n_envs + env_indices, env)

    def _get_samples(self, batch_inds: np.ndarray, env: Optional[VecNormalize] = None) -> SequenceReplayBufferSamples:  # type: ignore[override]
        """
        The sequences that ``batch_inds`` name, each as ``start * n_envs + env_index``: its first ring
        position (a valid start, see :meth:`valid_starts`) and its environment.

        :raises ValueError: for an index whose sequence does not start at a stored state, or is not all kept
        """
        starts, env_indices = np.divmod(np.asarray(batch_inds), self.n_envs)
        invalid = ~np.isin(starts, self.valid_starts())
        if invalid.any():
            raise ValueError(
                f"sequence indices {np.asarray(batch_inds)[invalid].tolist()} start at ring positions "
                f"{starts[invalid].tolist()}, where no whole sequence of {self.sequence_length} steps starts at a stored "
                "state: draw them from valid_starts() (index = start * n_envs + env_index), or use sample()"
            )
        return self.sequences(starts, env_indices, env)

    def sequences(
        self, starts: np.ndarray, env_indices: np.ndarray, env: Optional[VecNormalize] = None, length: Optional[int] = None
    ) -> SequenceReplayBufferSamples:
        """
        The sequences of ``length`` (default ``sequence_length``) steps at ring positions ``starts``
        (where states are stored) of these environments.
        """
        length = self.sequence_length if length is None else length
        steps = (starts[None, :] + np.arange(length)[:, None]) % self.buffer_size  # (L, B), time-major
        envs = np.broadcast_to(env_indices, steps.shape)

        def per_step(array: np.ndarray) -> np.ndarray:
            return array[steps, envs].reshape(-1, *array.shape[2:])

        if isinstance(self.observations, dict):
            obs: Any = self._normalize_obs({key: per_step(value) for key, value in self.observations.items()}, env)
            observations: Any = {key: self.to_torch(value) for key, value in obs.items()}
        else:
            observations = self.to_torch(self._normalize_obs(per_step(self.observations), env))  # type: ignore[arg-type]
        rewards = self._normalize_reward(self.rewards[steps, envs], env)
        timeouts = self.timeouts[steps, envs]
        return SequenceReplayBufferSamples(
            observations=observations,
            actions=self.to_torch(per_step(self.actions)),
            episode_starts=self.to_torch(per_step(self.episode_starts)),
            rewards=self.to_torch(rewards),
            dones=self.to_torch(self.dones[steps, envs]),
            states=self.stored_states(starts, env_indices),
            timeouts=self.to_torch(timeouts),
            terminal_observations=self._terminal_observations(steps, envs, timeouts, env),
        )

    def stored_states(self, starts: np.ndarray, env_indices: np.ndarray) -> th.Tensor:
        """The states stored before ring positions ``starts`` (multiples of the stride) of these environments."""
        slots = starts // self.state_stride
        if self.compact_states:
            assert self.initial_state_row is not None
            rows = [self.compact_stored_states[(int(slot), int(env))] for slot, env in zip(slots, env_indices)]
            return rebuild_states(self.initial_state_row, rows).to(self.device)
        assert self.states is not None
        return self.to_torch(self.states[slots, env_indices])

    def state_nbytes(self) -> int:
        """Bytes of the stored states."""
        if self.compact_states:
            return compact_nbytes(list(self.compact_stored_states.values()))
        return 0 if self.states is None else self.states.nbytes

    def _terminal_observations(
        self, steps: np.ndarray, envs: np.ndarray, timeouts: np.ndarray, env: Optional[VecNormalize]
    ) -> Any:
        """Flattened like the sequences' observations: where a step timed out, the observation it stopped at."""
        if not timeouts.any():
            return None
        rows = [
            (t * steps.shape[1] + b, self.terminal_observations[(steps[t, b], envs[t, b])])
            for t, b in zip(*np.nonzero(timeouts))
        ]
        if isinstance(self.observations, dict):
            obs: Any = {key: np.zeros((steps.size, *value.shape[2:]), value.dtype) for key, value in self.observations.items()}
            for row, terminal in rows:
                for key in obs:
                    obs[key][row] = np.asarray(terminal[key]).reshape(self.obs_shape[key])
            normalized: Any = self._normalize_obs(obs, env)
            return {key: self.to_torch(value) for key, value in normalized.items()}
        flat = np.zeros((steps.size, *self.observations.shape[2:]), self.observations.dtype)
        for row, terminal in rows:
            flat[row] = np.asarray(terminal).reshape(self.obs_shape)
        return self.to_torch(self._normalize_obs(flat, env))  # type: ignore[arg-type]

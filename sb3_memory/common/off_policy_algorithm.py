"""What the off-policy memory algorithms share: rollouts that carry the memory state, stored-state replay."""

import io
import pathlib
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, TypeVar, Union

import numpy as np
import torch as th
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.save_util import load_from_pkl
from stable_baselines3.common.type_aliases import MaybeCallback, PyTorchObs
from stable_baselines3.common.vec_env import VecNormalize

from sb3_memory.common.replay_buffers import SequenceReplayBuffer
from sb3_memory.common.threads import single_thread_on_cpu
from sb3_memory.common.type_aliases import SequenceReplayBufferSamples
from sb3_memory.memory.checks import check_int

SelfMemoryOffPolicy = TypeVar("SelfMemoryOffPolicy", bound="MemoryOffPolicyMixin")


def split_rows(obs: PyTorchObs, rows: slice) -> PyTorchObs:
    """Rows of flattened time-major observations (a tensor or a dict of them)."""
    return {key: value[rows] for key, value in obs.items()} if isinstance(obs, dict) else obs[rows]


def burn_in_split(data: SequenceReplayBufferSamples, burn_in: int) -> tuple[slice, slice]:
    """The rows of the burn-in steps and of the steps after them, in flattened time-major sequences."""
    split = burn_in * data.states.shape[0]
    return slice(0, split), slice(split, None)


class TimeoutSplice(NamedTuple):
    """One pass of :func:`timeout_splices`: the sequences that hold a timeout, continued past it."""

    observations: PyTorchObs  # (L * n, ...), time-major, the n sequences with a timeout
    episode_starts: th.Tensor  # (L * n,)
    states: th.Tensor  # (n, state_size), their stored states
    rows: th.Tensor  # rows of the replayed outputs that hold the values: step j + 1 of each
    steps: th.Tensor  # the timed-out steps j
    sequences: th.Tensor  # and their sequences in the sampled batch


def timeout_splices(data: SequenceReplayBufferSamples, first_step: int) -> list[TimeoutSplice]:
    """
    The sampled sequences with their episodes continued past a time limit, for the value of where
    each was cut off: for a timeout at step ``j >= first_step`` (``j + 1 < L``), step ``j + 1``
    gets the observation the episode stopped at and no episode start, so a core that replays the
    sequence from its stored state holds, at ``j + 1``, the state it would have had. Only the
    sequences with such a timeout are replayed. A second timeout in one sequence needs a pass of
    its own (the first one's continuation would run into it): pass m continues the m-th ones.
    """
    if data.timeouts is None or data.terminal_observations is None:
        return []
    length, batch = data.timeouts.shape
    cut = data.timeouts.clone()
    cut[:first_step] = 0.0
    cut[length - 1] = 0.0  # a timeout at the last step is bootstrapped by no trained step
    rank = cut.cumsum(dim=0) * cut
    passes = []
    for m in range(1, int(rank.max().item()) + 1):
        steps, sequences = th.nonzero(rank == m, as_tuple=True)  # one step per sequence
        n = len(sequences)
        columns = (th.arange(length, device=steps.device)[:, None] * batch + sequences[None, :]).reshape(-1)
        position = th.arange(n, device=steps.device)
        source, target = steps * batch + sequences, (steps + 1) * n + position
        terminal = data.terminal_observations
        if isinstance(data.observations, dict):
            assert isinstance(terminal, dict)
            spliced = {key: value[columns] for key, value in data.observations.items()}
            for key, value in spliced.items():
                value[target] = terminal[key][source]
            observations: PyTorchObs = spliced
        else:
            assert isinstance(terminal, th.Tensor)
            observations = data.observations[columns]
            observations[target] = terminal[source]
        episode_starts = data.episode_starts[columns]
        episode_starts[target] = 0.0
        passes.append(TimeoutSplice(observations, episode_starts, data.states[sequences], target, steps, sequences))
    return passes


class MemoryOffPolicyMixin:
    """
    Rollouts for an off-policy algorithm whose policy carries a memory state (mixed in before SB3's
    ``DQN`` or ``SAC``): the state goes from step to step through :meth:`_memory_step` (the
    algorithm's choice of action), resets at episode starts, and is stored with every step in a
    :class:`~sb3_memory.common.replay_buffers.SequenceReplayBuffer` (which keeps it every
    ``state_stride`` steps). The state is not saved with the model: ``learn`` starts afresh.
    As the on-policy algorithms, ``learn`` trains on one torch thread on CPU unless the user chose
    a number (see :func:`~sb3_memory.common.threads.single_thread_on_cpu`).
    """

    _last_memory_state: Optional[th.Tensor] = None
    _memory_state_before: Optional[th.Tensor] = None
    _initial_memory_state: Optional[th.Tensor] = None  # what compact stored states are kept against
    burn_in: int
    train_length: int
    return_steps: int
    state_stride: int

    if TYPE_CHECKING:  # provided by SB3's OffPolicyAlgorithm
        policy_kwargs: dict[str, Any]
        replay_buffer_kwargs: dict[str, Any]
        policy: Any
        policy_class: Any
        n_envs: int
        device: th.device
        verbose: int
        replay_buffer: Optional[SequenceReplayBuffer]
        _last_obs: Any
        _last_original_obs: Any
        _last_episode_starts: Optional[np.ndarray]
        _vec_normalize_env: Optional[VecNormalize]

    def _sequence_replay_kwargs(
        self, burn_in: int, train_length: int, n_steps: int, state_stride: Optional[int]
    ) -> dict[str, int]:
        """Check and keep the shape of the replayed sequences; the replay buffer's keyword arguments."""
        self.burn_in = check_int("burn_in", burn_in, 0)
        self.train_length = check_int("train_length", train_length)
        self.return_steps = check_int("n_steps", n_steps)
        self.state_stride = check_int("state_stride", self.train_length if state_stride is None else state_stride)
        return dict(sequence_length=self.sequence_length, state_stride=self.state_stride)

    @property
    def sequence_length(self) -> int:
        """Steps per replayed sequence: burn-in, trained steps and the n-step lookahead."""
        return self.burn_in + self.train_length + self.return_steps

    def _compact_replay_states(self) -> None:
        """Sparse cores' stored states are kept compact (before SB3's ``_setup_model`` builds the buffer)."""
        sparse = (self.policy_kwargs or {}).get("sparse_top_k") is not None
        self.replay_buffer_kwargs = {"compact_states": sparse, **(self.replay_buffer_kwargs or {})}

    def _check_memory_policy(self, base: type, aliases: dict[str, Any], plain: str) -> None:
        """A policy of ``base``'s family, or an error naming them (and SB3's algorithm for plain policies)."""
        if not isinstance(self.policy_class, type) or not issubclass(self.policy_class, base):
            raise TypeError(
                f"{type(self).__name__} needs a memory policy ({', '.join(aliases)}), got {self.policy_class}: "
                f"for SB3's MlpPolicy use stable_baselines3.{plain}"
            )

    def learn(self: SelfMemoryOffPolicy, total_timesteps: int, *args: Any, **kwargs: Any) -> SelfMemoryOffPolicy:
        """SB3's ``learn``, with one torch thread on CPU unless the user chose a number (see :func:`single_thread_on_cpu`)."""
        with single_thread_on_cpu(self.device):
            return super().learn(total_timesteps, *args, **kwargs)  # type: ignore[misc]

    def load_replay_buffer(self, path: Union[str, pathlib.Path, io.BufferedIOBase], truncate_last_traj: bool = True) -> None:
        """
        Load a buffer saved by ``save_replay_buffer`` (SB3's, which pickles it). Replaces SB3's
        ``load_replay_buffer``, which accepts only ``ReplayBuffer`` subclasses.

        :param path: the pickled :class:`~sb3_memory.common.replay_buffers.SequenceReplayBuffer`
        :param truncate_last_traj: ignored (SB3's parameter for ``HerReplayBuffer``): learning goes on
            into the loaded buffer with ``learn(..., reset_num_timesteps=False)``, or starts new
            episodes (marked as such) otherwise
        :raises TypeError: if the file holds another kind of buffer
        :raises ValueError: if the buffer's sequences or environments do not match this model's
        """
        buffer = load_from_pkl(path, self.verbose)
        if not isinstance(buffer, SequenceReplayBuffer):
            raise TypeError(
                f"{type(self).__name__} replays sequences with stored memory states: the file holds a "
                f"{type(buffer).__name__}, not a SequenceReplayBuffer; load one saved by a memory algorithm's "
                "save_replay_buffer (SB3's ReplayBuffers go with SB3's algorithms)"
            )
        expected = dict(n_envs=self.n_envs, sequence_length=self.sequence_length, state_stride=self.state_stride)
        saved = {name: getattr(buffer, name) for name in expected}
        if saved != expected:
            raise ValueError(
                f"the replay buffer was saved with {saved}, this model replays {expected}: load it into a model "
                "with as many environments, the same burn_in + train_length + n_steps and the same state_stride"
            )
        buffer.device = self.device  # as SB3's: the device of this model, not of the one that saved it
        self.replay_buffer = buffer

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)  # type: ignore[misc]
        if self._last_memory_state is None or reset_num_timesteps:
            self._last_memory_state = self.policy.initial_state(self.n_envs)
        self._initial_memory_state = self.policy.initial_state(1)
        return result

    def _memory_step(self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor) -> tuple[np.ndarray, th.Tensor]:
        """The action the algorithm takes (before any warm-up or exploration) and the new state."""
        raise NotImplementedError

    def _step_memory(self) -> np.ndarray:
        """One policy step on the last observations: the action, with the state advanced (the one before kept)."""
        assert self._last_obs is not None and self._last_memory_state is not None and self._last_episode_starts is not None
        self._memory_state_before = self._last_memory_state
        with th.no_grad():
            obs_tensor, _ = self.policy.obs_to_tensor(self._last_obs)
            starts = th.as_tensor(self._last_episode_starts, dtype=th.float32, device=self.device)
            action, self._last_memory_state = self._memory_step(obs_tensor, self._last_memory_state, starts)
        return action

    def _store_transition(
        self,
        replay_buffer: BaseBuffer,
        buffer_action: np.ndarray,
        new_obs: Union[np.ndarray, dict[str, np.ndarray]],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        # Rewritten from SB3 2.9.2's OffPolicyAlgorithm._store_transition: one step with its episode
        # start and the state before it, and no next observation (tests/test_sb3_forks.py watches it).
        if not isinstance(replay_buffer, SequenceReplayBuffer):
            raise TypeError(
                f"{type(self).__name__} stores steps with their memory state in a SequenceReplayBuffer, got "
                f"{type(replay_buffer).__name__}: leave replay_buffer_class as the algorithm sets it"
            )
        assert self._memory_state_before is not None
        assert self._last_episode_starts is not None
        if self._vec_normalize_env is not None:
            new_obs_, reward_ = self._vec_normalize_env.get_original_obs(), self._vec_normalize_env.get_original_reward()
        else:
            self._last_original_obs, new_obs_, reward_ = self._last_obs, new_obs, reward
        if self._vec_normalize_env is not None:  # the buffer keeps unnormalised observations, as SB3's
            infos = [
                {**info, "terminal_observation": self._vec_normalize_env.unnormalize_obs(info["terminal_observation"])}
                if "terminal_observation" in info
                else info
                for info in infos
            ]
        replay_buffer.add(
            self._last_original_obs,
            buffer_action,
            reward_,
            dones,
            self._last_episode_starts,
            self._memory_state_before,
            infos,
            self._initial_memory_state,
        )
        self._last_obs = new_obs
        self._last_episode_starts = dones
        if self._vec_normalize_env is not None:
            self._last_original_obs = new_obs_

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_memory_state", "_memory_state_before", "_initial_memory_state"]  # type: ignore[misc]

"""Rollout collection shared by MemoryPPO and MemoryA2C: the memory state rides along."""

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_memory.common.buffers import ChunkedStateMixin, MemoryDictRolloutBuffer, MemoryRolloutBuffer
from sb3_memory.common.policies import MemoryActorCriticPolicy

# Longer chunks give longer backpropagation through time but slower, more serial updates.
MAX_DEFAULT_SEQUENCE_LENGTH = 32

# torch's intra-op thread count when sb3_memory was imported: still that at learn() means the user
# did not choose one (torch.set_num_threads before importing sb3_memory cannot be told apart: use
# OMP_NUM_THREADS then).
STARTUP_NUM_THREADS = th.get_num_threads()
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def user_chose_num_threads() -> bool:
    """Whether the torch thread count was chosen: an environment variable, or a call to ``torch.set_num_threads``."""
    return any(os.environ.get(name) for name in THREAD_ENV_VARS) or th.get_num_threads() != STARTUP_NUM_THREADS


@contextlib.contextmanager
def single_thread_on_cpu(device: th.device) -> Iterator[None]:
    """
    One torch intra-op thread for the duration (restored afterwards) when training on CPU, unless
    the user chose a number. These models are small: one thread is as fast, and with several,
    OpenMP threads waiting for a core that another process holds slow training 5-100x.
    """
    if device.type != "cpu" or user_chose_num_threads() or th.get_num_threads() == 1:
        yield
        return
    previous = th.get_num_threads()
    th.set_num_threads(1)
    try:
        yield
    finally:
        th.set_num_threads(previous)


def default_sequence_length(n_steps: int, batch_size: Optional[int]) -> int:
    """
    Largest divisor of ``n_steps`` (and of ``batch_size``, if given) that is at most 32.

    With ``batch_size=None`` (A2C: one update on the whole rollout) the answer is at most
    ``n_steps``, so A2C's short rollouts (5 steps by default) backpropagate through all of them.
    """
    common = n_steps if batch_size is None else math.gcd(n_steps, batch_size)
    return max(d for d in range(1, min(common, MAX_DEFAULT_SEQUENCE_LENGTH) + 1) if common % d == 0)


class MemoryOnPolicyAlgorithm(OnPolicyAlgorithm):
    """
    Mixin placed before an SB3 on-policy algorithm (``class MemoryPPO(MemoryOnPolicyAlgorithm, PPO)``)
    that carries the policy's memory state through rollouts and stores it in a chunked buffer.

    Subclasses set ``self.sequence_length`` (validated by :meth:`_check_sequence_length`) before
    calling ``_setup_model``.
    """

    policy: MemoryActorCriticPolicy
    rollout_buffer: MemoryRolloutBuffer
    sequence_length: int

    def _check_sequence_length(self, sequence_length: Optional[int], batch_size: Optional[int]) -> int:
        if sequence_length is None:
            return default_sequence_length(self.n_steps, batch_size)
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 1:
            raise ValueError(f"sequence_length must be a positive integer, got {sequence_length!r}")
        if self.n_steps % sequence_length != 0:
            raise ValueError(
                f"sequence_length={sequence_length} must divide n_steps={self.n_steps}: each env's rollout is cut "
                f"into whole chunks; try sequence_length={default_sequence_length(self.n_steps, batch_size)}"
            )
        if batch_size is not None and batch_size % sequence_length != 0:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of sequence_length={sequence_length}: minibatches are "
                f"whole chunks; try batch_size={max(1, batch_size // sequence_length) * sequence_length}"
            )
        return sequence_length

    def _setup_model(self) -> None:
        self.rollout_buffer_class = (
            MemoryDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else MemoryRolloutBuffer
        )
        self.rollout_buffer_kwargs = {**self.rollout_buffer_kwargs, "sequence_length": self.sequence_length}
        super()._setup_model()
        if not isinstance(self.policy, MemoryActorCriticPolicy):
            raise TypeError(
                f"{type(self).__name__} needs a MemoryActorCriticPolicy (e.g. 'NTMPolicy', 'DNCPolicy'), "
                f"got {type(self.policy).__name__}"
            )
        self._last_memory_state: Optional[th.Tensor] = None

    def _setup_learn(self, *args, **kwargs):
        result = super()._setup_learn(*args, **kwargs)
        if self._last_memory_state is None or self._last_memory_state.shape[0] != self.n_envs:
            self._last_memory_state = self.policy.initial_state(self.n_envs)
        return result

    def learn(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        """SB3's ``learn``, with one torch thread on CPU unless the user chose a number (see :func:`single_thread_on_cpu`)."""
        with single_thread_on_cpu(self.device):
            return super().learn(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_memory_state"]

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect experience as SB3 does, feeding each step the memory state left by the last one.
        The buffer keeps the state at chunk starts; truncated episodes bootstrap from the value of
        the terminal observation under the memory state that observation would have been seen with.
        """
        assert self._last_obs is not None, "No previous observation was provided"
        assert isinstance(rollout_buffer, ChunkedStateMixin), f"{rollout_buffer} does not store memory states"
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)
        callback.on_rollout_start()
        state = self._last_memory_state
        assert state is not None

        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                self.policy.reset_noise(env.num_envs)

            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                episode_starts = th.as_tensor(self._last_episode_starts, dtype=th.float32, device=self.device)
                actions, values, log_probs, new_state = self.policy(obs_tensor, state, episode_starts)
            actions = actions.cpu().numpy()

            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                if self.policy.squash_output:
                    clipped_actions = self.policy.unscale_action(clipped_actions)
                else:
                    clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs

            callback.update_locals(locals())
            if not callback.on_step():
                return False

            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)

            for idx, done in enumerate(dones):
                if done and infos[idx].get("terminal_observation") is not None and infos[idx].get("TimeLimit.truncated", False):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.no_grad():
                        no_start = th.zeros(1, device=self.device)
                        terminal_value = self.policy.predict_values(terminal_obs, new_state[idx : idx + 1], no_start)[0]
                    rewards[idx] += self.gamma * terminal_value

            rollout_buffer.add_state(state)
            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            state = self._last_memory_state = new_state

        with th.no_grad():
            episode_starts = th.as_tensor(dones, dtype=th.float32, device=self.device)
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device), state, episode_starts)  # type: ignore[arg-type]

        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        for key, value in self.policy.memory_diagnostics(state).items():
            self.logger.record(f"memory/{key}", value)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

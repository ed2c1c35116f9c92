"""Rollout collection shared by MemoryPPO and MemoryA2C: the memory state rides along."""

import io
import math
import pathlib
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, Optional, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_memory.common.buffers import ChunkedStateMixin, MemoryDictRolloutBuffer, MemoryRolloutBuffer
from sb3_memory.common.policies import MemoryActorCriticPolicy
from sb3_memory.common.save_util import atomic_write, zip_path
from sb3_memory.common.threads import single_thread_on_cpu
from sb3_memory.memory.checks import check_float, check_int

# Longer chunks give longer backpropagation through time but slower, more serial updates.
MAX_DEFAULT_SEQUENCE_LENGTH = 32
# A default below this backpropagates through too few steps to learn much memory: warn.
MIN_USEFUL_SEQUENCE_LENGTH = 4


def default_sequence_length(n_steps: int, batch_size: Optional[int]) -> int:
    """
    Largest divisor of ``n_steps`` (and of ``batch_size``, if given) that is at most 32.

    With ``batch_size=None`` (A2C: one update on the whole rollout) the answer is at most
    ``n_steps``, so A2C's short rollouts (5 steps by default) backpropagate through all of them.
    """
    common = n_steps if batch_size is None else math.gcd(n_steps, batch_size)
    return max(d for d in range(1, min(common, MAX_DEFAULT_SEQUENCE_LENGTH) + 1) if common % d == 0)


def check_finite_rollout(name: str, values: np.ndarray, num_timesteps: int) -> None:
    """
    Raise before a non-finite reward, return or advantage reaches the update, where it would turn
    every parameter, and then the memory, into NaN and be reported far from its cause.

    :param name: what ``values`` are (reward, return, advantage)
    :param values: the array to check
    :param num_timesteps: the training step, for the message
    :raises ValueError: naming the environments and the likely cause
    """
    finite = np.isfinite(values)
    if finite.all():
        return
    envs = sorted({int(index) for index in np.argwhere(~finite)[:, -1]}) if values.ndim > 0 else []
    cause = (
        "the environment returned it: check its reward (wrap it in VecCheckNan(env, raise_exception=True) to find the step)"
        if name == "reward"
        else "the rewards are finite, so the value estimates or gamma/gae_lambda overflowed: scale the rewards down "
        "(e.g. VecNormalize(norm_reward=True))"
    )
    raise ValueError(f"non-finite {name} (NaN/Inf) in env(s) {envs} at step {num_timesteps}: {cause}")


# sb3-contrib's recurrent policy names and the memory-less policies that match them.
_CONTRIB_LSTM_POLICIES = {
    "MlpLstmPolicy": "LSTMPolicy",
    "CnnLstmPolicy": "CnnLSTMPolicy",
    "MultiInputLstmPolicy": "MultiInputLSTMPolicy",
}


class MemoryOnPolicyAlgorithm(OnPolicyAlgorithm):
    """
    Mixin placed before an SB3 on-policy algorithm (``class MemoryPPO(MemoryOnPolicyAlgorithm, PPO)``)
    that carries the policy's memory state through rollouts and stores it in a chunked buffer.

    Subclasses set ``self.sequence_length`` (validated by :meth:`_check_sequence_length`) before
    calling ``_setup_model``.
    """

    policy: MemoryActorCriticPolicy
    rollout_buffer: MemoryRolloutBuffer
    # Chunked buffers for Box / Dict observations (the maskable algorithm swaps in its own).
    rollout_buffer_classes: ClassVar[tuple[type, type]] = (MemoryRolloutBuffer, MemoryDictRolloutBuffer)
    sequence_length: int
    recall_coef: float
    prediction_coef: float
    recall_horizon: int

    def _set_auxiliary(self, recall_coef: float, prediction_coef: float, recall_horizon: int) -> None:
        """Check and keep the auxiliary-loss arguments (see :mod:`sb3_memory.common.auxiliary`)."""
        self.recall_coef = check_float("recall_coef", recall_coef, low=0.0)
        self.prediction_coef = check_float("prediction_coef", prediction_coef, low=0.0)
        self.recall_horizon = check_int("recall_horizon", recall_horizon)
        self._auxiliary_log: dict[str, list[float]] = {}

    def _auxiliary_loss(self, losses: dict[str, th.Tensor]) -> th.Tensor:
        """The weighted sum of a minibatch's auxiliary losses; keeps their values for the ``aux/`` log."""
        for name, loss in losses.items():
            self._auxiliary_log.setdefault(name, []).append(loss.item())
        return th.stack([getattr(self, f"{name}_coef") * loss for name, loss in losses.items()]).sum()

    def _record_auxiliary_losses(self) -> None:
        for name, values in self._auxiliary_log.items():
            self.logger.record(f"aux/{name}_loss", float(np.mean(values)))
        self._auxiliary_log.clear()

    def _check_sequence_length(self, sequence_length: Optional[int], batch_size: Optional[int]) -> int:
        if sequence_length is None:
            length = default_sequence_length(self.n_steps, batch_size)
            possible = default_sequence_length(self.n_steps, None)
            if batch_size is not None and length < MIN_USEFUL_SEQUENCE_LENGTH <= possible:
                warnings.warn(
                    f"sequence_length defaults to {length}, the largest chunk dividing both n_steps={self.n_steps} and "
                    f"batch_size={batch_size}: backpropagation through time spans only {length} step(s), too few to "
                    f"learn much memory. Use a batch_size that is a multiple of {possible} (e.g. "
                    f"{max(1, round(batch_size / possible)) * possible}), or pass sequence_length",
                    UserWarning,
                    stacklevel=3,
                )
            return length
        sequence_length = check_int("sequence_length", sequence_length)
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

    def _get_policy_from_name(self, policy_name: str) -> type[BasePolicy]:
        """SB3's lookup, with an error that names the aliases there are (and the memory-less ``LSTMPolicy``)."""
        if policy_name in self.policy_aliases:
            return self.policy_aliases[policy_name]
        names = ", ".join(repr(name) for name in self.policy_aliases)
        hint = ""
        if policy_name in _CONTRIB_LSTM_POLICIES:  # a RecurrentPPO user's first try
            match = _CONTRIB_LSTM_POLICIES[policy_name]
            hint = f"; sb3-contrib's {policy_name} is {match!r} here (an LSTM, no external memory)"
        raise ValueError(f"Policy {policy_name!r} unknown to {type(self).__name__}: choose one of {names}{hint}")

    def _setup_model(self) -> None:
        tasks = tuple(task for task in ("recall", "prediction") if getattr(self, f"{task}_coef") > 0)
        if tasks:
            # The decoders are part of the policy: saved, loaded and optimised with it.
            self.policy_kwargs = {**self.policy_kwargs, "auxiliary_tasks": tasks, "recall_horizon": self.recall_horizon}
        box_buffer, dict_buffer = self.rollout_buffer_classes
        self.rollout_buffer_class = dict_buffer if isinstance(self.observation_space, spaces.Dict) else box_buffer
        # Sparse cores change K slots a step: their states are kept as what differs from a fresh one.
        compact = self.policy_kwargs.get("sparse_top_k") is not None
        self.rollout_buffer_kwargs = {
            "compact_states": compact,
            **self.rollout_buffer_kwargs,
            "sequence_length": self.sequence_length,
        }
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

    def learn(self, total_timesteps: int, *args: Any, **kwargs: Any):  # type: ignore[override]
        """SB3's ``learn``, with one torch thread on CPU unless the user chose a number (see :func:`single_thread_on_cpu`)."""
        if isinstance(total_timesteps, (float, np.floating)) and float(total_timesteps).is_integer():
            total_timesteps = int(total_timesteps)  # SB3's habit: learn(1e5)
        total_timesteps = check_int("total_timesteps", total_timesteps, 0, note="a float such as 1e5 is taken if whole")
        with single_thread_on_cpu(self.device):
            return super().learn(total_timesteps, *args, **kwargs)

    def _rollout_state_out(self, state: th.Tensor) -> Optional[th.Tensor]:
        """
        Where a rollout step writes the new state: ``state`` itself, updated in place (the step runs
        under ``torch.no_grad()``, and the rollout buffer has already copied the chunk's first state).
        At 65,536 slots a state is tens of MB per step: a fresh tensor costs more in page faults than
        the step computes, and in place a sparse core's kernels copy nothing and write only the
        rows the step touches. (A callback that keeps the ``state`` of a step must copy it: the
        next step overwrites it.)
        """
        return state

    def _action_masks(self, env: VecEnv) -> Optional[np.ndarray]:
        """The invalid-action masks of the current step (None: no masking; see MaskableMemoryPPO)."""
        return None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_memory_state", "_auxiliary_log"]

    def save(
        self,
        path: Union[str, pathlib.Path, io.BufferedIOBase],
        exclude: Optional[Iterable[str]] = None,
        include: Optional[Iterable[str]] = None,
    ) -> None:
        """
        SB3's ``save``; a file path is written whole or not at all (see :func:`atomic_write`), so a
        run killed while saving a checkpoint keeps the checkpoint's previous version, not a broken zip.

        :param path: path to the file (``.zip`` is appended when it has no suffix) or a file-like
        :param exclude: names of parameters that should be excluded in addition to the default ones
        :param include: names of parameters that might be excluded but should be included anyway
        """
        target = None if isinstance(path, io.BufferedIOBase) else zip_path(path)
        if target is None or target.is_dir():  # a file-like, or a folder (SB3 saves to <path>_2)
            super().save(path, exclude, include)
            return
        with atomic_write(target) as file:
            super().save(file, exclude, include)

    # Fork of stable_baselines3 2.9.2's OnPolicyAlgorithm.collect_rollouts, kept line for line; the changed lines carry
    # "# sb3-memory" (tests/test_sb3_forks.py fails when the installed original changes).
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect experiences using the current policy and fill a ``RolloutBuffer``.
        The term rollout here refers to the model-free notion and should not
        be used with the concept of rollout used in model-based RL or planning.

        :param env: The training environment
        :param callback: Callback that will be called at each step
            (and at the beginning and end of the rollout)
        :param rollout_buffer: Buffer to fill with rollouts
        :param n_rollout_steps: Number of experiences to collect per environment
        :return: True if function returned with at least `n_rollout_steps`
            collected, False if callback terminated rollout prematurely.
        """
        assert self._last_obs is not None, "No previous observation was provided"
        assert isinstance(rollout_buffer, ChunkedStateMixin), f"{rollout_buffer} stores no memory states"  # sb3-memory
        # Switch to eval mode (this affects batch norm / dropout)
        self.policy.set_training_mode(False)

        n_steps = 0
        rollout_buffer.reset()
        # Sample new weights for the state dependent exploration
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)

        callback.on_rollout_start()
        state = self._last_memory_state  # sb3-memory: the memory state rides along
        assert state is not None  # sb3-memory
        initial_state = self.policy.initial_state(1)  # sb3-memory: what compact chunk states are kept against

        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                # Sample a new noise matrix
                self.policy.reset_noise(env.num_envs)

            with th.no_grad():
                # Convert to pytorch tensor or to TensorDict
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                episode_starts = th.as_tensor(self._last_episode_starts, dtype=th.float32, device=self.device)  # sb3-memory
                action_masks = self._action_masks(env)  # sb3-memory: invalid-action masks, with MaskableMemoryPPO
                # sb3-memory: kept once per chunk, before the step updates it
                rollout_buffer.add_state(state, initial_state, self.policy.columns_that_may_differ)
                actions, values, log_probs, new_state = self.policy(  # sb3-memory
                    obs_tensor, state, episode_starts, action_masks=action_masks, state_out=self._rollout_state_out(state)
                )
            actions = actions.cpu().numpy()

            # Rescale and perform action
            clipped_actions = actions

            if isinstance(self.action_space, spaces.Box):
                if self.policy.squash_output:
                    # Unscale the actions to match env bounds
                    # if they were previously squashed (scaled in [-1, 1])
                    clipped_actions = self.policy.unscale_action(clipped_actions)
                else:
                    # Otherwise, clip the actions to avoid out of bound error
                    # as we are sampling from an unbounded Gaussian distribution
                    clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

            new_obs, rewards, dones, infos = env.step(clipped_actions)

            self.num_timesteps += env.num_envs
            check_finite_rollout("reward", rewards, self.num_timesteps)  # sb3-memory: before it poisons an update

            # Give access to local variables
            callback.update_locals(locals())
            if not callback.on_step():
                return False

            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                # Reshape in case of discrete action
                actions = actions.reshape(-1, 1)

            # Handle timeout by bootstrapping with value function
            # see GitHub issue #633
            for idx, done in enumerate(dones):
                if (
                    done
                    and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.no_grad():
                        # sb3-memory: under the memory state the terminal observation would have been seen with
                        no_start = th.zeros(1, device=self.device)
                        terminal_value = self.policy.predict_values(terminal_obs, new_state[idx : idx + 1], no_start)[0]  # type: ignore[arg-type]
                    rewards[idx] += self.gamma * terminal_value

            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
                **({} if action_masks is None else {"action_masks": action_masks}),  # sb3-memory
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            state = self._last_memory_state = new_state  # sb3-memory

        with th.no_grad():
            # Compute value for the last timestep
            episode_starts = th.as_tensor(dones, dtype=th.float32, device=self.device)  # sb3-memory
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device), state, episode_starts)  # type: ignore[arg-type]  # sb3-memory

        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        check_finite_rollout("return", rollout_buffer.returns, self.num_timesteps)  # sb3-memory
        check_finite_rollout("advantage", rollout_buffer.advantages, self.num_timesteps)  # sb3-memory
        self.policy.update_value_normalization(th.as_tensor(rollout_buffer.returns))  # type: ignore[operator]  # sb3-memory
        for key, value in self.policy.memory_diagnostics(state).items():  # sb3-memory: memory/ statistics
            self.logger.record(f"memory/{key}", value)

        callback.update_locals(locals())

        callback.on_rollout_end()

        return True

"""PPO with an external-memory policy."""

import io
import pathlib
from typing import Any, ClassVar, Optional, TypeVar, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from sb3_memory.common.on_policy_algorithm import MemoryOnPolicyAlgorithm
from sb3_memory.common.policies import MemoryActorCriticPolicy
from sb3_memory.common.save_util import check_saved_algorithm
from sb3_memory.ppo.policies import POLICY_ALIASES

SelfMemoryPPO = TypeVar("SelfMemoryPPO", bound="MemoryPPO")


class MemoryPPO(MemoryOnPolicyAlgorithm, PPO):
    """
    Proximal Policy Optimization (clip version) with a memory policy (NTM, DNC or LSTM core).

    Same arguments and behaviour as :class:`stable_baselines3.PPO`, plus ``sequence_length``.
    Each env's rollout is cut into chunks of ``sequence_length`` steps; the memory state is
    stored once per chunk and each minibatch replays ``batch_size // sequence_length`` whole
    chunks from their stored state (truncated backpropagation through time).

    :param sequence_length: chunk length; must divide ``n_steps``, and ``batch_size`` must be a
        multiple of it. Default: the largest divisor of both that is at most 32
    :param recall_coef: weight of the auxiliary recall loss (reconstruct the observation of ``k``
        steps back from the memory core's output; see :mod:`sb3_memory.common.auxiliary`). 0: off
    :param prediction_coef: weight of the auxiliary prediction loss (next observation and reward
        from the core's output and the action). 0: off
    :param recall_horizon: the longest ``k`` of the recall loss
    The other parameters are those of :class:`stable_baselines3.PPO`.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = POLICY_ALIASES
    policy: MemoryActorCriticPolicy

    def __init__(
        self,
        policy: Union[str, type[MemoryActorCriticPolicy]],
        env: Union[GymEnv, str],
        learning_rate: Union[float, Schedule] = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: Union[float, Schedule] = 0.2,
        clip_range_vf: Union[float, Schedule, None] = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        target_kl: Optional[float] = None,
        sequence_length: Optional[int] = None,
        recall_coef: float = 0.0,
        prediction_coef: float = 0.0,
        recall_horizon: int = 8,
        stats_window_size: int = 100,
        tensorboard_log: Optional[str] = None,
        policy_kwargs: Optional[dict[str, Any]] = None,
        verbose: int = 0,
        seed: Optional[int] = None,
        device: Union[th.device, str] = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self.sequence_length = self._check_sequence_length(sequence_length, batch_size)
        self._set_auxiliary(recall_coef, prediction_coef, recall_horizon)
        if _init_setup_model:
            self._setup_model()

    # Fork of stable_baselines3 2.9.2's PPO.train, kept line for line; the changed lines carry
    # "# sb3-memory" (tests/test_sb3_forks.py fails when the installed original changes).
    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer.
        """
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        # Compute current clip range
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        # Optional: clip range for the value function
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []

        continue_training = True
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # Do a complete pass on the rollout buffer
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    # Convert discrete action from float to long
                    actions = rollout_data.actions.long().flatten()

                # sb3-memory: chunks replayed from their stored state, with the auxiliary losses of the replay
                values, log_prob, entropy, auxiliary_losses = self.policy.evaluate_actions_with_auxiliary(
                    rollout_data.observations,
                    actions,
                    rollout_data.states,
                    rollout_data.episode_starts,
                    rollout_data.rewards,
                    action_masks=getattr(rollout_data, "action_masks", None),
                )
                values = values.flatten()
                # Normalize advantage
                advantages = rollout_data.advantages
                # Normalization does not make sense if mini batchsize == 1, see GH issue #325
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # ratio between old and new policy, should be one at the first iteration
                ratio = th.exp(log_prob - rollout_data.old_log_prob)

                # clipped surrogate loss
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()

                # Logging
                pg_losses.append(policy_loss.item())
                clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)

                if self.clip_range_vf is None:
                    # No clipping
                    values_pred = values
                else:
                    # Clip the difference between old and new value
                    # NOTE: this depends on the reward scaling
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                # Value loss using the TD(gae_lambda) target
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                # Entropy loss favor exploration
                if entropy is None:
                    # Approximate entropy when no analytical form
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)

                entropy_losses.append(entropy_loss.item())

                value_scale = self.policy.value_loss_scale  # sb3-memory: 1 / std**2 of the returns, with value normalisation
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss * value_scale  # sb3-memory
                loss = loss + self._auxiliary_loss(auxiliary_losses) if auxiliary_losses else loss  # sb3-memory

                # Calculate approximate form of reverse KL Divergence for early stopping
                # see issue #417: https://github.com/DLR-RM/stable-baselines3/issues/417
                # and discussion in PR #419: https://github.com/DLR-RM/stable-baselines3/pull/419
                # and Schulman blog: http://joschu.net/blog/kl-approx.html
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                # Optimization step
                self.policy.optimizer.zero_grad()
                loss.backward()
                # Clip grad norm
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        # Logs
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        self._record_auxiliary_losses()  # sb3-memory: aux/ losses

    def learn(
        self: SelfMemoryPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "MemoryPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfMemoryPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfMemoryPPO],
        path: Union[str, pathlib.Path, io.BufferedIOBase],
        env: Optional[GymEnv] = None,
        device: Union[th.device, str] = "auto",
        custom_objects: Optional[dict[str, Any]] = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfMemoryPPO:
        """
        SB3's ``load``, after checking that the file holds a model of this algorithm's family: a
        MemoryDQN or MemorySAC file is named as such (SB3 would fail later, on a setting of the
        other algorithm). The parameters are SB3's.
        """
        check_saved_algorithm(path, cls.__name__, {policy.__module__ for policy in cls.policy_aliases.values()})
        return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)

"""A2C with an external-memory policy."""

from typing import Any, ClassVar, Optional, TypeVar, Union

import torch as th
from gymnasium import spaces
from stable_baselines3 import A2C
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from sb3_memory.a2c.policies import POLICY_ALIASES
from sb3_memory.common.on_policy_algorithm import MemoryOnPolicyAlgorithm
from sb3_memory.common.policies import MemoryActorCriticPolicy

SelfMemoryA2C = TypeVar("SelfMemoryA2C", bound="MemoryA2C")


class MemoryA2C(MemoryOnPolicyAlgorithm, A2C):
    """
    Advantage Actor Critic with a memory policy (NTM, DNC or LSTM core).

    Same arguments and behaviour as :class:`stable_baselines3.A2C` (RMSprop by default), plus
    ``sequence_length``. The single update per rollout backpropagates through chunks of
    ``sequence_length`` steps, by default the whole rollout (``n_steps``, if at most 32).

    :param sequence_length: chunk length; must divide ``n_steps``
    :param recall_coef: weight of the auxiliary recall loss (see :class:`~sb3_memory.MemoryPPO`). 0: off
    :param prediction_coef: weight of the auxiliary prediction loss. 0: off
    :param recall_horizon: the longest ``k`` of the recall loss
    The other parameters are those of :class:`stable_baselines3.A2C`.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = POLICY_ALIASES
    policy: MemoryActorCriticPolicy

    def __init__(
        self,
        policy: Union[str, type[MemoryActorCriticPolicy]],
        env: Union[GymEnv, str],
        learning_rate: Union[float, Schedule] = 7e-4,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        rms_prop_eps: float = 1e-5,
        use_rms_prop: bool = True,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        normalize_advantage: bool = False,
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
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            rms_prop_eps=rms_prop_eps,
            use_rms_prop=use_rms_prop,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            normalize_advantage=normalize_advantage,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self.sequence_length = self._check_sequence_length(sequence_length, None)
        self._set_auxiliary(recall_coef, prediction_coef, recall_horizon)
        if _init_setup_model:
            self._setup_model()

    # Fork of stable_baselines3 2.9.2's A2C.train, kept line for line; the changed lines carry
    # "# sb3-memory" (tests/test_sb3_forks.py fails when the installed original changes).
    def train(self) -> None:
        """
        Update policy using the currently gathered
        rollout buffer (one gradient step over whole data).
        """
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)

        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)

        # This will only loop once (get all data in one go)
        for rollout_data in self.rollout_buffer.get(batch_size=None):
            actions = rollout_data.actions
            if isinstance(self.action_space, spaces.Discrete):
                # Convert discrete action from float to long
                actions = actions.long().flatten()

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

            # Normalize advantage (not present in the original implementation)
            advantages = rollout_data.advantages
            if self.normalize_advantage:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

            # Policy gradient loss
            policy_loss = -(advantages * log_prob).mean()

            # Value loss using the TD(gae_lambda) target
            value_loss = F.mse_loss(rollout_data.returns, values)

            # Entropy loss favor exploration
            if entropy is None:
                # Approximate entropy when no analytical form
                entropy_loss = -th.mean(-log_prob)
            else:
                entropy_loss = -th.mean(entropy)

            value_scale = self.policy.value_loss_scale  # sb3-memory: 1 / std**2 of the returns, with value normalisation
            loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss * value_scale  # sb3-memory
            loss = loss + self._auxiliary_loss(auxiliary_losses) if auxiliary_losses else loss  # sb3-memory

            # Optimization step
            self.policy.optimizer.zero_grad()
            loss.backward()

            # Clip grad norm
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/entropy_loss", entropy_loss.item())
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/value_loss", value_loss.item())
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self._record_auxiliary_losses()  # sb3-memory: aux/ losses

    def learn(
        self: SelfMemoryA2C,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "MemoryA2C",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfMemoryA2C:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

"""MemorySAC: SB3's SAC with memory cores in the actor and the critics, on stored-state sequence replay."""

from typing import Any, ClassVar, Optional, Union

import numpy as np
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs, Schedule
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from sb3_memory.common.algorithm_checks import check_action_space, unknown_policy_error
from sb3_memory.common.off_policy_algorithm import MemoryOffPolicyMixin, burn_in_split, split_rows, timeout_splices
from sb3_memory.common.replay_buffers import SequenceReplayBuffer
from sb3_memory.common.type_aliases import SequenceReplayBufferSamples
from sb3_memory.dqn.dqn import n_step_targets
from sb3_memory.sac.policies import POLICY_ALIASES, MemoryActor, MemoryCritic, MemorySACPolicy


class MemorySAC(MemoryOffPolicyMixin, SAC):
    """
    Soft actor-critic with memory policies (``NTMPolicy``, ``DNCPolicy``, ``LSTMPolicy``; ``Cnn`` and
    ``MultiInput`` forms), trained on stored-state sequence replay as :class:`~sb3_memory.MemoryDQN`
    is: sequences start from the stored state of the actor's and the critic's cores, their first
    ``burn_in`` steps run without gradient, then ``train_length`` steps are trained. The actor and
    the critics have a core each (the critics share theirs, which reads observations only; the
    target critic runs its own copy from the stored state). Targets are n-step: the soft value of
    step ``t + n`` (the target critics' minimum, less the entropy term, at the actor's action)
    after the rewards between, cut at an episode's end.

    :param burn_in: steps replayed without gradient before the trained ones
    :param train_length: trained steps per sequence
    :param n_steps: steps of the return before bootstrapping
    :param state_stride: the state is stored every this many steps (default ``train_length``)
    The other parameters are those of SB3's :class:`~stable_baselines3.SAC` (no gSDE);
    ``batch_size`` counts sequences, ``buffer_size`` steps over all environments. Training waits
    until a whole sequence is stored.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = POLICY_ALIASES
    policy: MemorySACPolicy  # type: ignore[assignment]
    actor: MemoryActor  # type: ignore[assignment]
    critic: MemoryCritic  # type: ignore[assignment]
    critic_target: MemoryCritic  # type: ignore[assignment]
    replay_buffer: SequenceReplayBuffer  # type: ignore[assignment]

    def __init__(
        self,
        policy: Union[str, type[MemorySACPolicy]],
        env: Union[GymEnv, str],
        learning_rate: Union[float, Schedule] = 3e-4,
        buffer_size: int = 100_000,
        learning_starts: int = 1000,
        batch_size: int = 32,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: Union[int, tuple[int, str]] = 1,
        gradient_steps: int = 1,
        burn_in: int = 8,
        train_length: int = 16,
        n_steps: int = 1,
        state_stride: Optional[int] = None,
        action_noise: Optional[ActionNoise] = None,
        ent_coef: Union[str, float] = "auto",
        target_update_interval: int = 1,
        target_entropy: Union[str, float] = "auto",
        stats_window_size: int = 100,
        tensorboard_log: Optional[str] = None,
        policy_kwargs: Optional[dict[str, Any]] = None,
        verbose: int = 0,
        seed: Optional[int] = None,
        device: Union[th.device, str] = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        replay_kwargs = self._sequence_replay_kwargs(burn_in, train_length, n_steps, state_stride)
        super().__init__(
            policy,  # type: ignore[arg-type]
            env,
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            action_noise=action_noise,
            replay_buffer_class=SequenceReplayBuffer,  # type: ignore[arg-type]
            replay_buffer_kwargs=replay_kwargs,
            ent_coef=ent_coef,
            target_update_interval=target_update_interval,
            target_entropy=target_entropy,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def _get_policy_from_name(self, policy_name: str) -> type[BasePolicy]:
        """SB3's lookup, with an error that names the aliases there are (and what SB3's names mean here)."""
        if policy_name in self.policy_aliases:
            return self.policy_aliases[policy_name]
        raise unknown_policy_error(type(self).__name__, policy_name, self.policy_aliases, "SAC")

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        # SB3 asserts the action space right after wrapping, without saying which algorithm fits.
        check_action_space("MemorySAC", env.action_space)
        return SAC._wrap_env(env, verbose, monitor_wrapper)

    def _setup_model(self) -> None:
        self._check_memory_policy(MemorySACPolicy, POLICY_ALIASES, "SAC")
        self._compact_replay_states()
        super()._setup_model()

    # --- rollouts -----------------------------------------------------------------------------

    def predict(  # type: ignore[override]
        self,
        observation: Union[np.ndarray, dict[str, np.ndarray]],
        state: Optional[np.ndarray] = None,
        episode_start: Optional[np.ndarray] = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions in the action space's bounds and the new state (see :meth:`MemorySACPolicy.predict`)."""
        return self.policy.predict(observation, state, episode_start, deterministic)

    def _memory_step(self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor) -> tuple[np.ndarray, th.Tensor]:
        actions, state = self.policy._predict(obs, state, episode_starts)
        return actions.cpu().numpy(), state

    def _sample_action(
        self, learning_starts: int, action_noise: Optional[ActionNoise] = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        # Rewritten from SB3 2.9.2's OffPolicyAlgorithm._sample_action around the state: the cores
        # step on every observation, warm-up included (tests/test_sb3_forks.py watches the original).
        scaled_action = self._step_memory()
        if self.num_timesteps < learning_starts:
            scaled_action = self.policy.scale_action(np.array([self.action_space.sample() for _ in range(n_envs)]))
        if action_noise is not None:
            scaled_action = np.clip(scaled_action + action_noise(), -1, 1)
        return self.policy.unscale_action(scaled_action), scaled_action

    # --- training -----------------------------------------------------------------------------

    def sequence_losses(self, data: SequenceReplayBufferSamples, ent_coef: th.Tensor) -> dict[str, th.Tensor]:
        """
        For the trained steps: the critic's loss (graph through the critic), the actor's actions and
        log-probabilities (graph through the actor), and the critic core's output (detached), which
        :meth:`actor_loss` scores the actions with once the critic has stepped.
        """
        batch, steps, n = data.states.shape[0], self.train_length, self.return_steps
        early, late = burn_in_split(data, self.burn_in)
        obs_early, obs_late = split_rows(data.observations, early), split_rows(data.observations, late)
        actor_state, critic_state = self.policy.split_state(data.states)
        target_state = critic_state
        with th.no_grad():
            if self.burn_in:
                starts = data.episode_starts[early]
                _, actor_state = self.actor.latent(obs_early, actor_state, starts)
                _, critic_state = self.critic.latent(obs_early, critic_state, starts)
                _, target_state = self.critic_target.latent(obs_early, target_state, starts)
        starts = data.episode_starts[late]
        latent_pi, _ = self.actor.latent(obs_late, actor_state, starts)
        actions_pi, log_prob = self.actor.action_log_prob(latent_pi)
        with th.no_grad():
            target_latent, _ = self.critic_target.latent(obs_late, target_state, starts)
            rows = slice(n * batch, (n + steps) * batch)  # the steps t + n
            next_q = th.cat(self.critic_target.q_values(target_latent[rows], actions_pi[rows].detach()), dim=1)
            soft_value = next_q.min(dim=1).values - ent_coef * log_prob[rows].detach()
            rewards, dones = data.rewards[self.burn_in :], data.dones[self.burn_in :]
            timeout_values = self.timeout_values(data, ent_coef)
            target = n_step_targets(rewards, dones, soft_value.view(steps, batch), self.gamma, n, timeout_values)
            target = target.reshape(-1, 1)
        trained = slice(0, steps * batch)
        critic_latent, _ = self.critic.latent(obs_late, critic_state, starts)
        replayed = data.actions[late][trained]
        current_q = self.critic.q_values(critic_latent[trained], replayed)
        critic_loss = 0.5 * sum(F.mse_loss(q, target) for q in current_q)
        return dict(
            critic_loss=critic_loss,  # type: ignore[dict-item]
            actions_pi=actions_pi[trained],
            log_prob=log_prob[trained].reshape(-1, 1),
            critic_latent=critic_latent[trained].detach(),
        )

    @th.no_grad()
    def timeout_values(self, data: SequenceReplayBufferSamples, ent_coef: th.Tensor) -> Optional[th.Tensor]:
        """
        ``(L - burn_in, B)``: where a time limit cut an episode after a step, the soft value of the
        observation it stopped at (an action drawn there by the actor, scored by the target critics),
        with the memory the episode had; else 0. None if no sampled step timed out.
        """
        passes = timeout_splices(data, self.burn_in)
        if not passes:
            return None
        values = th.zeros_like(data.rewards)
        for splice in passes:
            actor_state, critic_state = self.policy.split_state(splice.states)
            latent_pi, _ = self.actor.latent(splice.observations, actor_state, splice.episode_starts)
            actions, log_prob = self.actor.action_log_prob(latent_pi[splice.rows])
            target_latent, _ = self.critic_target.latent(splice.observations, critic_state, splice.episode_starts)
            q_values = th.cat(self.critic_target.q_values(target_latent[splice.rows], actions), dim=1)
            values[splice.steps, splice.sequences] = q_values.min(dim=1).values - ent_coef * log_prob.reshape(-1)
        return values[self.burn_in :]

    def actor_loss(self, losses: dict[str, th.Tensor], ent_coef: th.Tensor) -> th.Tensor:
        """SAC's actor loss, ``ent_coef * log pi - min_k Q_k``, with the critics' heads as they are now."""
        q_pi = th.cat(self.critic.q_values(losses["critic_latent"], losses["actions_pi"]), dim=1)
        return (ent_coef * losses["log_prob"] - q_pi.min(dim=1, keepdim=True).values).mean()

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        # Rewritten from SB3 2.9.2's SAC.train for sequences (tests/test_sb3_forks.py watches the
        # original): the same losses and updates, on the trained steps of replayed sequences.
        if len(self.replay_buffer.valid_starts()) == 0:
            return  # warming up: no whole sequence stored yet
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        logs: dict[str, list[float]] = {"ent_coef": [], "actor_loss": [], "critic_loss": [], "ent_coef_loss": []}
        for gradient_step in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            ent_coef = th.exp(self.log_ent_coef.detach()) if self.log_ent_coef is not None else self.ent_coef_tensor
            losses = self.sequence_losses(data, ent_coef)
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                assert isinstance(self.target_entropy, float)
                ent_coef_loss = -(self.log_ent_coef * (losses["log_prob"] + self.target_entropy).detach()).mean()
                logs["ent_coef_loss"].append(ent_coef_loss.item())
                self.ent_coef_optimizer.zero_grad()
                ent_coef_loss.backward()
                self.ent_coef_optimizer.step()
            logs["ent_coef"].append(ent_coef.item())
            logs["critic_loss"].append(losses["critic_loss"].item())
            self.critic.optimizer.zero_grad()
            losses["critic_loss"].backward()
            self.critic.optimizer.step()
            actor_loss = self.actor_loss(losses, ent_coef)
            logs["actor_loss"].append(actor_loss.item())
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()
            if gradient_step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for name, values in logs.items():
            if values:
                self.logger.record(f"train/{name}", np.mean(values))

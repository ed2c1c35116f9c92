"""MemoryDQN: SB3's DQN with a memory core, trained on stored-state sequence replay (R2D2)."""

from typing import Any, ClassVar, Optional, TypeVar, Union

import numpy as np
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs, Schedule
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from sb3_memory.common.algorithm_checks import check_action_space, unknown_policy_error
from sb3_memory.common.off_policy_algorithm import MemoryOffPolicyMixin, burn_in_split, split_rows, timeout_splices
from sb3_memory.common.replay_buffers import SequenceReplayBuffer
from sb3_memory.common.type_aliases import SequenceReplayBufferSamples
from sb3_memory.dqn.policies import POLICY_ALIASES, MemoryDQNPolicy
from sb3_memory.memory.checks import check_int

SelfMemoryDQN = TypeVar("SelfMemoryDQN", bound="MemoryDQN")


def n_step_targets(
    rewards: th.Tensor,
    dones: th.Tensor,
    bootstrap: th.Tensor,
    gamma: float,
    n_steps: int,
    timeout_values: Optional[th.Tensor] = None,
) -> th.Tensor:
    """
    n-step TD targets ``sum_{k<n} gamma^k r_{t+k} + gamma^n Q(t+n)``, the sum cut at an episode's
    end (an ended episode is not bootstrapped, unless a time limit ended it).

    :param rewards: ``(T + n, B)``
    :param dones: ``(T + n, B)``, 1 where the episode ended with that step's transition
    :param bootstrap: ``(T, B)``, the value of step ``t + n``
    :param timeout_values: ``(T + n, B)``, where a time limit cut the episode after step ``t + k``,
        the value of the observation it stopped at (added as ``gamma^(k+1) V``), else 0
    :return: ``(T, B)``
    """
    steps = bootstrap.shape[0]
    target = th.zeros_like(bootstrap)
    alive = th.ones_like(bootstrap)
    for k in range(n_steps):
        target = target + alive * gamma**k * rewards[k : k + steps]
        if timeout_values is not None:
            target = target + alive * gamma ** (k + 1) * timeout_values[k : k + steps]
        alive = alive * (1.0 - dones[k : k + steps])
    return target + alive * gamma**n_steps * bootstrap


class MemoryDQN(MemoryOffPolicyMixin, DQN):
    """
    Deep Q-learning with a memory policy (``NTMPolicy``, ``DNCPolicy``, ``LSTMPolicy``; ``Cnn`` and
    ``MultiInput`` forms), trained as R2D2 (Kapturowski et al., 2019): the replay buffer keeps each
    environment's steps in order with the online core's state stored every ``state_stride`` steps;
    a sampled sequence replays from that stored state, its first ``burn_in`` steps without
    gradient (to move the stale stored state towards what the current network would hold), then
    ``train_length`` trained steps with double-Q n-step targets. The target network runs the same
    sequence from the same stored state with its own parameters, so its state is its own.

    Rollouts carry the online core's state from step to step and reset it at episode starts;
    ``predict`` takes and returns it (``state``, ``episode_start``), so SB3's ``evaluate_policy``
    and rl-zoo3's ``enjoy`` work as with ``RecurrentPPO``. Episode ends are not bootstrapped,
    except a time limit's (``TimeLimit.truncated``, as SB3's ``handle_timeout_termination``): the
    target then bootstraps from the observation the episode stopped at, replayed with the memory
    the episode had.

    :param burn_in: steps replayed without gradient before the trained ones
    :param train_length: trained steps per sequence
    :param n_steps: steps of the return before bootstrapping (SB3's DQN parameter)
    :param state_stride: the state is stored every this many steps (default ``train_length``);
        sequences start there
    :param double_q: choose the bootstrap action with the online network (van Hasselt et al., 2016)
    :param drift_interval: every this many gradient steps, log how far the stored states have
        drifted from what the current network computes (``replay/state_drift``) and what burn-in
        does to the Q-values (``replay/q_drift_at_start``, ``replay/q_drift_after_burn_in``); 0 never
    The other parameters are those of SB3's :class:`~stable_baselines3.DQN`; ``batch_size`` counts
    sequences, and ``buffer_size`` steps over all environments. Training waits until a whole
    sequence is stored, whatever ``learning_starts`` says.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = POLICY_ALIASES
    policy: MemoryDQNPolicy  # type: ignore[assignment]
    replay_buffer: SequenceReplayBuffer  # type: ignore[assignment]

    def __init__(
        self,
        policy: Union[str, type[MemoryDQNPolicy]],
        env: Union[GymEnv, str],
        learning_rate: Union[float, Schedule] = 1e-4,
        buffer_size: int = 100_000,
        learning_starts: int = 1000,
        batch_size: int = 32,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: Union[int, tuple[int, str]] = 4,
        gradient_steps: int = 1,
        burn_in: int = 8,
        train_length: int = 16,
        n_steps: int = 1,
        state_stride: Optional[int] = None,
        double_q: bool = True,
        target_update_interval: int = 2500,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        max_grad_norm: float = 10,
        drift_interval: int = 100,
        stats_window_size: int = 100,
        tensorboard_log: Optional[str] = None,
        policy_kwargs: Optional[dict[str, Any]] = None,
        verbose: int = 0,
        seed: Optional[int] = None,
        device: Union[th.device, str] = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        replay_kwargs = self._sequence_replay_kwargs(burn_in, train_length, n_steps, state_stride)
        self.double_q = bool(double_q)
        self.drift_interval = check_int("drift_interval", drift_interval, 0)
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
            replay_buffer_class=SequenceReplayBuffer,  # type: ignore[arg-type]
            replay_buffer_kwargs=replay_kwargs,
            target_update_interval=target_update_interval,
            exploration_fraction=exploration_fraction,
            exploration_initial_eps=exploration_initial_eps,
            exploration_final_eps=exploration_final_eps,
            max_grad_norm=max_grad_norm,
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
        raise unknown_policy_error(type(self).__name__, policy_name, self.policy_aliases, "DQN")

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        # SB3 asserts the action space right after wrapping, without saying which algorithm fits.
        check_action_space("MemoryDQN", env.action_space)
        return DQN._wrap_env(env, verbose, monitor_wrapper)

    def _setup_model(self) -> None:
        self._check_memory_policy(MemoryDQNPolicy, POLICY_ALIASES, "DQN")
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
        """
        The greedy action, or with probability ``exploration_rate`` (``deterministic=False``) a random
        one; the memory sees the observation either way.

        :return: the action(s) and the new state
        """
        # Rewritten from SB3 2.9.2's DQN.predict: the state advances whether the action explores or not.
        action, state = self.policy.predict(observation, state, episode_start, deterministic)
        if not deterministic and np.random.rand() < self.exploration_rate:
            action = np.array([self.action_space.sample() for _ in range(action.size)]).reshape(action.shape)
        return action, state

    def _memory_step(self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor) -> tuple[np.ndarray, th.Tensor]:
        action, state = self.policy._predict(obs, state, episode_starts)
        return action.cpu().numpy(), state

    def _sample_action(
        self, learning_starts: int, action_noise: Optional[ActionNoise] = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        # Rewritten from SB3 2.9.2's OffPolicyAlgorithm._sample_action, which predicts without a
        # state: here the online core steps on every observation (also during warm-up, so that
        # stored states are the ones the policy would have held).
        actions = self._step_memory()
        if self.num_timesteps < learning_starts or np.random.rand() < self.exploration_rate:
            actions = np.array([self.action_space.sample() for _ in range(n_envs)])
        return actions, actions

    # --- training -----------------------------------------------------------------------------

    def sequence_q_values(self, data: SequenceReplayBufferSamples) -> tuple[th.Tensor, th.Tensor]:
        """
        Online and target Q-values of the steps after the burn-in, ``(L - burn_in, B, n_actions)``
        each. Both networks start from the stored state and replay the burn-in without gradient;
        the online one then keeps its graph (the target network's state is its own throughout).
        """
        batch = data.states.shape[0]
        early, late = burn_in_split(data, self.burn_in)
        obs_early, obs_late = split_rows(data.observations, early), split_rows(data.observations, late)
        with th.no_grad():
            online_state, target_state = data.states, data.states
            if self.burn_in:
                _, online_state = self.q_net(obs_early, data.states, data.episode_starts[early])
                _, target_state = self.q_net_target(obs_early, data.states, data.episode_starts[early])
            target_q, _ = self.q_net_target(obs_late, target_state, data.episode_starts[late])
        online_q, _ = self.q_net(obs_late, online_state, data.episode_starts[late])
        return online_q.view(-1, batch, online_q.shape[-1]), target_q.view(-1, batch, target_q.shape[-1])

    def sequence_loss(self, data: SequenceReplayBufferSamples) -> th.Tensor:
        """Huber loss of the trained steps' Q-values against their double-Q n-step targets."""
        online_q, target_q = self.sequence_q_values(data)
        batch, steps, n = data.states.shape[0], self.train_length, self.return_steps
        actions = data.actions.view(-1, batch)[self.burn_in : self.burn_in + steps].long()
        current = online_q[:steps].gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        with th.no_grad():
            chooser = online_q if self.double_q else target_q
            best = chooser[n : n + steps].argmax(dim=-1, keepdim=True)
            bootstrap = target_q[n : n + steps].gather(-1, best).squeeze(-1)
            rewards, dones = data.rewards[self.burn_in :], data.dones[self.burn_in :]
            target = n_step_targets(rewards, dones, bootstrap, self.gamma, n, self.timeout_values(data))
        return F.smooth_l1_loss(current, target)

    @th.no_grad()
    def timeout_values(self, data: SequenceReplayBufferSamples) -> Optional[th.Tensor]:
        """
        ``(L - burn_in, B)``: where a time limit cut an episode after a step, the (double-Q) target
        value of the observation it stopped at, with the memory the episode had; else 0. None if
        no sampled step timed out.
        """
        passes = timeout_splices(data, self.burn_in)
        if not passes:
            return None
        values = th.zeros_like(data.rewards)
        for splice in passes:
            replay = (splice.observations, splice.states, splice.episode_starts)
            target_q = self.q_net_target(*replay)[0][splice.rows]
            chooser = self.q_net(*replay)[0][splice.rows] if self.double_q else target_q
            best = target_q.gather(-1, chooser.argmax(dim=-1, keepdim=True)).squeeze(-1)
            values[splice.steps, splice.sequences] = best
        return values[self.burn_in :]

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Rewritten from stable_baselines3 2.9.2's DQN.train for sequences (tests/test_sb3_forks.py
        # watches the original, as for the other rewritten methods here).
        if len(self.replay_buffer.valid_starts()) == 0:
            return  # warming up: no whole sequence stored yet (learning_starts below sequence_length * n_envs)
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            loss = self.sequence_loss(data)
            losses.append(loss.item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            self._n_updates += 1
            if self.drift_interval and self._n_updates % self.drift_interval == 0:
                for key, value in self.state_drift(batch_size).items():
                    self.logger.record(f"replay/{key}", value)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))

    @th.no_grad()
    def state_drift(self, batch_size: int) -> dict[str, float]:
        """
        How stale the stored states are (R2D2's measurement): for sequences whose previous stored
        state and the steps since are kept, the state recomputed from there with the current
        network against the stored one (``state_drift``, relative), and the Q-values replayed from
        each, at the first step (``q_drift_at_start``) and after the burn-in
        (``q_drift_after_burn_in``). Empty while no such sequence is stored.
        """
        buffer, stride = self.replay_buffer, self.state_stride
        starts = buffer.valid_starts(before=stride)
        if len(starts) == 0:
            return {}
        starts = np.random.choice(starts, size=batch_size)
        envs = np.random.randint(0, buffer.n_envs, size=batch_size)
        earlier = buffer.sequences((starts - stride) % buffer.buffer_size, envs, length=stride + self.sequence_length)
        stored = buffer.sequences(starts, envs)
        rows = stride * batch_size
        head = (
            {k: v[:rows] for k, v in earlier.observations.items()}
            if isinstance(earlier.observations, dict)
            else earlier.observations[:rows]
        )
        _, recomputed = self.q_net(head, earlier.states, earlier.episode_starts[:rows])
        drift = (recomputed - stored.states).norm(dim=1) / stored.states.norm(dim=1).clamp_min(1e-8)
        # Q-values from the stored and the recomputed state, at the first step and after the burn-in.
        fresh = stored._replace(states=recomputed)
        q_stored, _ = self.q_net(stored.observations, stored.states, stored.episode_starts)
        q_fresh, _ = self.q_net(fresh.observations, fresh.states, fresh.episode_starts)
        gap = (q_stored - q_fresh).abs().view(self.sequence_length, batch_size, -1).mean(dim=(1, 2))
        scale = q_fresh.abs().mean().clamp_min(1e-8)
        return {
            "state_drift": float(drift.mean()),
            "q_drift_at_start": float(gap[0] / scale),
            "q_drift_after_burn_in": float(gap[self.burn_in] / scale),
        }

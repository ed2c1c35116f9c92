"""Actor-critic policies whose features pass through an external-memory core."""

import copy
import inspect
from typing import Any, ClassVar, Optional, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_memory.common.auxiliary import AuxiliaryHeads
from sb3_memory.common.value_normalization import NormalizedValueHead
from sb3_memory.memory import CORES, MemoryCore
from sb3_memory.memory.checks import check_int
from sb3_memory.memory.core import check_state_out

CRITIC_MEMORY_MODES = ("shared", "detached", "separate", "none")
# A core whose state takes at least this many bytes per environment is run one environment at a
# time when the new state has a buffer to go to (rollouts): each row of the flat state is already
# contiguous, so no copy of the state is made to call the kernels, and each call's new state is one
# row, which the allocator hands back from memory it already holds; a whole batch (tens of MB at
# 65,536 slots) would be freshly mapped memory, faulted in one 4 kB page at a time, at every step.
ROW_CALL_MIN_STATE_BYTES = 1 << 20
# Invalid-action masks, as sb3-contrib's maskable distributions take them.
ActionMasks = Union[th.Tensor, np.ndarray]


def check_core_kwargs(policy: str, core_name: str, core_kwargs: dict[str, Any], accepts: str) -> None:
    """Name a keyword argument that neither the policy nor its core takes, and what they take."""
    accepted = set(inspect.signature(CORES[core_name]).parameters) - {"input_dim"}
    unknown = sorted(set(core_kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"{policy} got unexpected keyword argument(s) {unknown}; the {core_name} core accepts {sorted(accepted)}, "
            f"and the policy accepts {accepts}"
        )


def state_and_starts(
    policy: Any, state: Optional[np.ndarray], episode_start: Optional[np.ndarray], n_envs: int
) -> tuple[th.Tensor, th.Tensor]:
    """
    ``predict``'s NumPy state and episode starts as tensors on the policy's device, checked against
    the number of observations (a fresh state for ``state=None``, no starts for ``episode_start=None``).
    """
    if state is None:
        state_tensor = policy.initial_state(n_envs)
    else:
        state_tensor = th.as_tensor(np.asarray(state), dtype=th.float32, device=policy.device)
        if state_tensor.shape != (n_envs, policy.state_size):
            raise ValueError(
                f"state must have shape ({n_envs}, {policy.state_size}) for {n_envs} observation(s), got "
                f"{tuple(state_tensor.shape)}: pass the state returned by the previous predict (or None)"
            )
    if episode_start is None:
        return state_tensor, th.zeros(n_envs, device=policy.device)
    episode_start = np.asarray(episode_start)
    if episode_start.size != n_envs:
        raise ValueError(
            f"episode_start must have one entry per environment ({n_envs}), got shape "
            f"{episode_start.shape}: pass the VecEnv's dones (or np.ones(n_envs) at the first step)"
        )
    return state_tensor, th.as_tensor(episode_start, dtype=th.float32, device=policy.device).reshape(n_envs)


def predict_with_state(
    policy: Any,
    observation: Union[np.ndarray, dict[str, np.ndarray]],
    state: Optional[np.ndarray],
    episode_start: Optional[np.ndarray],
    deterministic: bool,
    **predict_kwargs: Any,
) -> tuple[np.ndarray, bool, np.ndarray]:
    """
    What the memory policies' ``predict`` share (a rewrite of stable_baselines3 2.9.2's
    ``BasePolicy.predict`` around the state, which tests/test_sb3_forks.py watches): SB3's guard
    against a Gym ``(obs, info)`` tuple and its preprocessing, then ``policy._predict`` on the state.

    :return: the actions, batch first, before any rescaling; whether the observation was a batch;
        the new state ``(n_envs, state_size)``
    """
    policy.set_training_mode(False)
    reject_reset_tuple(observation)
    obs_tensor, vectorized_env = policy.obs_to_tensor(observation)
    n_envs = (next(iter(obs_tensor.values())) if isinstance(obs_tensor, dict) else obs_tensor).shape[0]
    with th.no_grad():
        state_tensor, starts = state_and_starts(policy, state, episode_start, n_envs)
        actions, state_tensor = policy._predict(
            obs_tensor, state_tensor, starts, deterministic=deterministic, **predict_kwargs
        )
    return actions.cpu().numpy(), vectorized_env, state_tensor.cpu().numpy()


def reject_reset_tuple(observation: Any) -> None:
    """SB3's guard against a Gym ``(obs, info)`` tuple passed to ``predict``."""
    if isinstance(observation, tuple) and len(observation) == 2 and isinstance(observation[1], dict):
        raise ValueError(
            "predict() got a tuple (obs, info) instead of an observation: that is gymnasium's env.reset(); "
            "pass obs (env.reset()[0]), or the array that a VecEnv's reset() returns"
        )


class PerCallDistribution:
    """
    A policy as SB3's ``_get_action_dist_from_latent`` reads it, with a copy of its ``action_dist`` of
    its own: the distribution then holds one call's parameters, whatever other threads do.

    :param policy: the policy to read everything else from
    """

    def __init__(self, policy: Any) -> None:
        self._policy = policy
        self.action_dist = copy.copy(policy.action_dist)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)


class MemoryActorCriticPolicy(ActorCriticPolicy):
    """
    Actor-critic policy with a memory core between the features extractor and the MLP heads:
    features extractor -> core (NTM, DNC or LSTM) -> ``MlpExtractor(net_arch)`` -> action / value.

    The recurrent state is one flat ``(n_envs, state_size)`` tensor (see
    :meth:`MemoryCore.flatten_state`), so rollout buffers, ``predict`` and ``evaluate_policy``
    handle it as a plain array. All methods that take a state take ``episode_starts`` too: rows
    that start an episode are reset to the initial state before they are processed.

    Sequences are passed flattened time-major: ``obs`` of shape ``(T * B, ...)`` with the state
    of the B sequences at their first step, ``(B, state_size)``; rollouts use T = 1.

    :param critic_memory: ``"separate"`` (default): the critic has its own core of the same
        configuration (twice the state and compute, as sb3-contrib's default
        ``enable_critic_lstm=True``); ``"detached"``: one core feeds both heads, but only the policy
        loss trains it (the critic reads a detached copy, as ``shared_lstm=True``); ``"shared"``: one
        core, trained by both losses; ``"none"``: the critic sees only the current features, through
        a linear layer. The default is the only one that scored well on a generic recipe on all of
        CartPoleNoVel and two public recall tasks (README, "Defaults"): ``"detached"`` scores best on
        CartPoleNoVel but about half as well on the recall tasks, ``"shared"`` does the reverse
    :param value_normalization: predict values in units of a running estimate of the returns' scale,
        rescaling the head as the estimate moves (PopArt), and train it on the normalised error; the
        algorithm updates the estimate after every rollout. It makes the value loss's size the same
        on every task; off by default, as measured (README, "Defaults")
    :param auxiliary_tasks: the auxiliary losses to build decoders for (see
        :mod:`sb3_memory.common.auxiliary`); the algorithm sets it from its ``*_coef`` arguments
    :param recall_horizon: the longest lag of the recall task
    :param core_kwargs: the core's keyword arguments (``memory_units``, ``memory_unit_size``,
        ``num_read_heads``, ``controller_dim``, ``controller``, ``shift_range``, ...); see
        :class:`~sb3_memory.memory.NTMCell`, :class:`~sb3_memory.memory.DNCCell`,
        :class:`~sb3_memory.memory.LSTMCore`
    The other parameters are those of :class:`~stable_baselines3.common.policies.ActorCriticPolicy`;
    ``features_extractor_class`` defaults to the policy class's ``default_features_extractor``.
    """

    core_name: ClassVar[str] = "ntm"
    default_features_extractor: ClassVar[type[BaseFeaturesExtractor]] = FlattenExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: Optional[Union[list[int], dict[str, list[int]]]] = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: Optional[type[BaseFeaturesExtractor]] = None,
        features_extractor_kwargs: Optional[dict[str, Any]] = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: Optional[dict[str, Any]] = None,
        critic_memory: str = "separate",
        value_normalization: bool = False,
        auxiliary_tasks: tuple[str, ...] = (),
        recall_horizon: int = 8,
        **core_kwargs: Any,
    ) -> None:
        if critic_memory not in CRITIC_MEMORY_MODES:
            raise ValueError(f"critic_memory must be one of {CRITIC_MEMORY_MODES}, got {critic_memory!r}")
        if (
            isinstance(observation_space, spaces.Dict)
            and features_extractor_class is None
            and not issubclass(self.default_features_extractor, CombinedExtractor)
        ):
            # As SB3 rejects MlpPolicy on Dict spaces; otherwise torch fails inside the first forward.
            raise ValueError(
                f"{type(self).__name__} takes Box observations; for a Dict observation space use "
                f"'MultiInput{self.core_name.upper()}Policy' (or pass a features_extractor_class that takes dicts)"
            )
        if critic_memory in ("shared", "detached") and not share_features_extractor:
            raise ValueError(
                f"critic_memory={critic_memory!r} feeds one core from one features extractor: set "
                "share_features_extractor=True, or use critic_memory='separate' or 'none'"
            )
        check_core_kwargs(type(self).__name__, self.core_name, core_kwargs, "ActorCriticPolicy's arguments and critic_memory")
        self.critic_memory = critic_memory
        if not isinstance(value_normalization, bool):
            raise TypeError(f"value_normalization must be True or False, got {value_normalization!r}")
        self.value_normalization = value_normalization
        self.auxiliary_tasks = tuple(auxiliary_tasks)
        self.recall_horizon = check_int("recall_horizon", recall_horizon)
        self.core_kwargs = core_kwargs
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            use_sde=use_sde,
            log_std_init=log_std_init,
            full_std=full_std,
            use_expln=use_expln,
            squash_output=squash_output,
            features_extractor_class=features_extractor_class or self.default_features_extractor,
            features_extractor_kwargs=features_extractor_kwargs,
            share_features_extractor=share_features_extractor,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )

    def _build_mlp_extractor(self) -> None:
        # Called by ActorCriticPolicy._build: the cores sit before the MLP, so they are built here.
        self.core: MemoryCore = CORES[self.core_name](input_dim=self.features_dim, **self.core_kwargs)
        self.critic_core: Optional[MemoryCore] = None
        self.critic_projection: Optional[nn.Linear] = None
        if self.critic_memory == "separate":
            self.critic_core = CORES[self.core_name](input_dim=self.features_dim, **self.core_kwargs)
        elif self.critic_memory == "none":
            self.critic_projection = nn.Linear(self.features_dim, self.core.output_dim)
        self._actor_state_size = self.core.state_size
        self.auxiliary: Optional[AuxiliaryHeads] = None
        if self.auxiliary_tasks:
            self.auxiliary = AuxiliaryHeads(
                self.core.output_dim, self.features_dim, self.action_space, self.auxiliary_tasks, self.recall_horizon
            )
        self.features_dim = self.core.output_dim
        super()._build_mlp_extractor()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            critic_memory=self.critic_memory,
            value_normalization=self.value_normalization,
            auxiliary_tasks=self.auxiliary_tasks,
            recall_horizon=self.recall_horizon,
            **self.core_kwargs,
        )
        return data

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        if self.value_normalization:
            # The optimizer already holds the linear layer's parameters: wrapping keeps them.
            self.value_net = NormalizedValueHead(self.value_net)  # type: ignore[assignment]

    @property
    def value_loss_scale(self) -> float:
        """What the algorithm multiplies the value loss by: ``1 / std**2`` of the returns with value normalisation, else 1."""
        return float(self.value_net.std.pow(-2)) if isinstance(self.value_net, NormalizedValueHead) else 1.0

    def update_value_normalization(self, returns: th.Tensor) -> None:
        """Fold a rollout's returns into the value head's statistics (no-op without value normalisation)."""
        if isinstance(self.value_net, NormalizedValueHead):
            self.value_net.update(returns)

    @property
    def state_size(self) -> int:
        """Size of the flat recurrent state of one environment."""
        return self._actor_state_size + (self.critic_core.state_size if self.critic_core is not None else 0)

    def initial_state(self, n_envs: int) -> th.Tensor:
        """Flat initial state, ``(n_envs, state_size)``, on the policy's device."""
        states = [self.core.flatten_state(self.core.initial_state(n_envs, self.device))]
        if self.critic_core is not None:
            states.append(self.critic_core.flatten_state(self.critic_core.initial_state(n_envs, self.device)))
        return th.cat(states, dim=1)

    def split_state(self, state: th.Tensor) -> tuple[th.Tensor, Optional[th.Tensor]]:
        """
        The actor core's and the critic core's parts of a flat policy state.

        :param state: ``(n, state_size)``
        :return: ``(n, core.state_size)`` and ``(n, critic_core.state_size)``, or None without a critic core
        """
        if self.critic_core is None:
            return state, None
        actor, critic = th.split(state, [self._actor_state_size, self.critic_core.state_size], dim=1)
        return actor, critic

    def columns_that_may_differ(self, state: th.Tensor) -> list[Optional[th.Tensor]]:
        """
        Per row of a flat policy state, the columns where it may differ from :meth:`initial_state`,
        or None where any may (the cores' ``columns_that_may_differ``): what the buffers compare
        to keep a state compact.
        """
        actor, critic = self.split_state(state)
        actor_columns = self.core.columns_that_may_differ(actor)
        if self.critic_core is None:
            return actor_columns
        assert critic is not None  # split_state gives the critic's columns when there is a critic core
        critic_columns = self.critic_core.columns_that_may_differ(critic)
        columns: list[Optional[th.Tensor]] = []
        for own, other in zip(actor_columns, critic_columns):
            if own is None or other is None:
                columns.append(None)
            else:
                columns.append(th.cat([own, other + self._actor_state_size]))
        return columns

    def join_state(self, actor: th.Tensor, critic: Optional[th.Tensor]) -> th.Tensor:
        """Inverse of :meth:`split_state`."""
        return actor if critic is None else th.cat([actor, critic], dim=1)

    def memory_diagnostics(self, state: th.Tensor) -> dict[str, float]:
        """Statistics of the actor core's state (usage, weighting entropies), for logging."""
        return self.core.diagnostics(self.core.unflatten_state(self.split_state(state)[0]))

    def _check_state(self, state: th.Tensor, batch: int) -> None:
        if state.dim() != 2 or state.shape[1] != self.state_size:
            raise ValueError(
                f"state must have shape (n_envs, {self.state_size}) for this policy, got {tuple(state.shape)}: "
                "pass the state returned by the previous call (or None to start afresh)"
            )
        if batch % state.shape[0] != 0:
            raise ValueError(f"{batch} observations cannot be split into sequences of {state.shape[0]} environments")

    def _core_forward(
        self, core: MemoryCore, x: th.Tensor, state: th.Tensor, starts: th.Tensor, state_out: Optional[th.Tensor]
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        ``core.forward_flat`` of time-major ``x`` from ``state`` (a core's columns of the flat state,
        maybe a view), with the new state written into ``state_out`` when given.

        :return: the features ``(T, B, output_dim)`` and the new state (``state_out`` when given)
        """
        if state_out is None:
            # The actor's or the critic's columns of a joint state go as they are: the kernels read
            # rows any distance apart (the reference path copies each field anyway).
            return core.forward_flat(x, state, starts)
        n_seq = state.shape[0]
        row_calls = (
            n_seq > 1
            and not th.is_grad_enabled()
            and core.state_size * state.element_size() >= ROW_CALL_MIN_STATE_BYTES
            and core.rows_independent(x)
        )
        if not row_calls:
            if state_out.is_contiguous():
                return core.forward_flat(x, state, starts, state_out=state_out)
            # The actor's or the critic's columns of a joint state: computed, then copied in.
            features, new_state = core.forward_flat(x, state, starts)
            return features, state_out.copy_(new_state)
        # A row of the flat state is contiguous (a column slice of the batch is not), and the kernels
        # compute each row on its own, so these calls give the batched call's numbers to the bit.
        features_per_row = []
        for row in range(n_seq):
            rows = slice(row, row + 1)
            features, _ = core.forward_flat(x[:, rows], state[rows], starts[:, rows], state_out=state_out[rows])
            features_per_row.append(features)
        return th.cat(features_per_row, dim=1), state_out

    def _run_cores(
        self,
        obs: PyTorchObs,
        state: th.Tensor,
        episode_starts: th.Tensor,
        state_out: Optional[th.Tensor] = None,
        keep_state: bool = True,
    ) -> tuple[th.Tensor, th.Tensor, Optional[th.Tensor], th.Tensor]:
        """
        Features of flattened time-major sequences through the core(s).

        :param state_out: where to write the new state (like ``state``: another buffer, or
            ``state`` itself under ``torch.no_grad()``), or None for a new tensor. Rollouts update
            the state in place, so a step writes into memory that is already mapped, without the
            copies of splitting and joining the cores' parts of the state (which at 65,536 slots
            cost more than the step itself)
        :param keep_state: False when the caller has no use for the new state (training, values):
            the cores' parts are then not joined (at 65,536 slots a join copies tens of MB)
        :return: actor latent, critic latent (both ``(T * B, core.output_dim)``), the new state (None
            without ``keep_state``) and
            the actor's features-extractor output (``(T * B, features_dim)``)
        """
        n_seq = state.shape[0]
        features = self.extract_features(obs)
        # SB3 returns one tensor, or (actor's, critic's) without a shared extractor.
        pi_features, vf_features = (features, features) if isinstance(features, th.Tensor) else features
        self._check_state(state, pi_features.shape[0])
        if state_out is not None:
            check_state_out(state, state_out)
        starts = episode_starts.reshape(-1, n_seq)
        actor_state, critic_state = self.split_state(state)
        actor_out, critic_out = (None, None) if state_out is None else self.split_state(state_out)
        latent_pi, actor_state = self._core_forward(
            self.core, pi_features.reshape(-1, n_seq, self.core.input_dim), actor_state, starts, actor_out
        )
        latent_pi = latent_pi.reshape(-1, latent_pi.shape[-1])
        if self.critic_core is not None:
            assert critic_state is not None
            latent_vf, critic_state = self._core_forward(
                self.critic_core,
                vf_features.reshape(-1, n_seq, self.critic_core.input_dim),
                critic_state,
                starts,
                critic_out,
            )
            latent_vf = latent_vf.reshape(-1, latent_vf.shape[-1])
        elif self.critic_projection is not None:
            latent_vf = self.critic_projection(vf_features)
        elif self.critic_memory == "detached":
            # The value loss's large, noisy gradients would otherwise shape the memory the actor reads.
            latent_vf = latent_pi.detach()
        else:
            latent_vf = latent_pi
        new_state = (
            state_out if state_out is not None else (self.join_state(actor_state, critic_state) if keep_state else None)
        )
        return latent_pi, latent_vf, new_state, pi_features

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        # SB3's own method, on a copy of action_dist made for this call: SB3's Distribution objects keep
        # their last call's parameters, so threads predicting with one policy would read each other's.
        return ActorCriticPolicy._get_action_dist_from_latent(PerCallDistribution(self), latent_pi)  # type: ignore[arg-type]

    def _action_distribution(self, latent_pi: th.Tensor, action_masks: Optional[ActionMasks]) -> Distribution:
        """The action distribution of the core's output; masked by a maskable policy (see :mod:`sb3_memory.ppo_mask`)."""
        if action_masks is not None:
            raise ValueError(
                f"{type(self).__name__} takes no action masks: train with MaskableMemoryPPO to use invalid-action masking"
            )
        return self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(latent_pi))

    def forward(  # type: ignore[override]
        self,
        obs: PyTorchObs,
        state: th.Tensor,
        episode_starts: th.Tensor,
        deterministic: bool = False,
        action_masks: Optional[ActionMasks] = None,
        state_out: Optional[th.Tensor] = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """
        One rollout step: actions, values, log-probabilities and the new state.

        :param state_out: a tensor like ``state`` to write the new state into (``state`` itself,
            updated in place, under ``torch.no_grad()``), which is then the state returned; None: a
            new tensor. Rollouts update the state in place, as a large memory's state is costly to
            allocate afresh at every step
        """
        latent_pi, latent_vf, new_state, _ = self._run_cores(obs, state, episode_starts, state_out)
        assert new_state is not None
        distribution = self._action_distribution(latent_pi, action_masks)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf))
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, values, log_prob, new_state

    def get_distribution(  # type: ignore[override]
        self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor, action_masks: Optional[ActionMasks] = None
    ) -> tuple[Distribution, th.Tensor]:
        """Action distribution and the new state."""
        latent_pi, _, new_state, _ = self._run_cores(obs, state, episode_starts)
        assert new_state is not None
        return self._action_distribution(latent_pi, action_masks), new_state

    def predict_values(self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor) -> th.Tensor:  # type: ignore[override]
        """Values of the observations under the given state."""
        _, latent_vf, _, _ = self._run_cores(obs, state, episode_starts, keep_state=False)
        return self.value_net(self.mlp_extractor.forward_critic(latent_vf))

    def evaluate_actions(  # type: ignore[override]
        self, obs: PyTorchObs, actions: th.Tensor, state: th.Tensor, episode_starts: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, Optional[th.Tensor]]:
        """
        Values, log-likelihoods and entropies for flattened time-major sequences (training).

        :param state: state of each sequence at its first step, ``(B, state_size)``
        :param episode_starts: ``(T * B,)``
        """
        values, log_prob, entropy, _ = self.evaluate_actions_with_auxiliary(obs, actions, state, episode_starts, None)
        return values, log_prob, entropy

    def evaluate_actions_with_auxiliary(
        self,
        obs: PyTorchObs,
        actions: th.Tensor,
        state: th.Tensor,
        episode_starts: th.Tensor,
        rewards: Optional[th.Tensor],
        action_masks: Optional[ActionMasks] = None,
    ) -> tuple[th.Tensor, th.Tensor, Optional[th.Tensor], dict[str, th.Tensor]]:
        """
        :meth:`evaluate_actions`, plus the auxiliary losses of the same replay (an empty dict when
        the policy has no auxiliary heads or ``rewards`` is None).

        :param rewards: ``(T * B,)``
        :param action_masks: ``(T * B, mask_size)`` (maskable policies only)
        """
        latent_pi, latent_vf, _, features = self._run_cores(obs, state, episode_starts, keep_state=False)
        distribution = self._action_distribution(latent_pi, action_masks)
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf))
        losses: dict[str, th.Tensor] = {}
        if self.auxiliary is not None and rewards is not None:
            n_seq = state.shape[0]

            def time_major(tensor: th.Tensor) -> th.Tensor:
                return tensor.reshape(-1, n_seq, *tensor.shape[1:])

            losses = self.auxiliary(
                time_major(latent_pi),
                time_major(features.detach()),
                time_major(actions),
                time_major(rewards),
                time_major(episode_starts),
            )
        return values, distribution.log_prob(actions), distribution.entropy(), losses

    def _predict(  # type: ignore[override]
        self,
        observation: PyTorchObs,
        state: th.Tensor,
        episode_starts: th.Tensor,
        deterministic: bool = False,
        action_masks: Optional[ActionMasks] = None,
    ) -> tuple[th.Tensor, th.Tensor]:
        distribution, state = self.get_distribution(observation, state, episode_starts, action_masks)
        return distribution.get_actions(deterministic=deterministic), state

    def predict(  # type: ignore[override]
        self,
        observation: Union[np.ndarray, dict[str, np.ndarray]],
        state: Optional[np.ndarray] = None,
        episode_start: Optional[np.ndarray] = None,
        deterministic: bool = False,
        action_masks: Optional[np.ndarray] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Action for an observation, with the recurrent state passed back and forth as NumPy.

        :param observation: one observation or a batch from a VecEnv
        :param state: the state returned by the previous call, or None to start afresh
        :param episode_start: which environments start a new episode (resets their state)
        :param deterministic: return the mode of the action distribution
        :param action_masks: which actions are valid (maskable policies only)
        :return: the action(s) and the new state, ``(n_envs, state_size)``
        """
        # SB3's guard, preprocessing, reshaping, unscaling and clipping are kept (see predict_with_state).
        action_array, vectorized_env, new_state = predict_with_state(
            self, observation, state, episode_start, deterministic, action_masks=action_masks
        )
        actions = action_array.reshape((-1, *(self.action_space.shape or ())))
        if isinstance(self.action_space, spaces.Box):
            if self.squash_output:
                actions = self.unscale_action(actions)
            else:
                actions = np.clip(actions, self.action_space.low, self.action_space.high)
        if not vectorized_env:
            actions = actions.squeeze(axis=0)
        return actions, new_state


class NTMPolicy(MemoryActorCriticPolicy):
    """:class:`MemoryActorCriticPolicy` with a Neural Turing Machine core, for vector observations."""

    core_name = "ntm"


class DNCPolicy(MemoryActorCriticPolicy):
    """:class:`MemoryActorCriticPolicy` with a Differentiable Neural Computer core, for vector observations."""

    core_name = "dnc"


class LSTMPolicy(MemoryActorCriticPolicy):
    """:class:`MemoryActorCriticPolicy` with a plain LSTM core (no external memory), for control runs."""

    core_name = "lstm"


class CnnNTMPolicy(NTMPolicy):
    """NTM policy for image observations (NatureCNN features)."""

    default_features_extractor = NatureCNN


class CnnDNCPolicy(DNCPolicy):
    """DNC policy for image observations (NatureCNN features)."""

    default_features_extractor = NatureCNN


class CnnLSTMPolicy(LSTMPolicy):
    """LSTM-core policy for image observations (NatureCNN features)."""

    default_features_extractor = NatureCNN


class MultiInputNTMPolicy(NTMPolicy):
    """NTM policy for Dict observations (CombinedExtractor features)."""

    default_features_extractor = CombinedExtractor


class MultiInputDNCPolicy(DNCPolicy):
    """DNC policy for Dict observations (CombinedExtractor features)."""

    default_features_extractor = CombinedExtractor


class MultiInputLSTMPolicy(LSTMPolicy):
    """LSTM-core policy for Dict observations (CombinedExtractor features)."""

    default_features_extractor = CombinedExtractor

"""Actor and critics with memory cores, for :class:`~sb3_memory.MemorySAC`."""

import copy
from typing import Any, ClassVar, Optional, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
    create_mlp,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_memory.common.policies import check_core_kwargs, predict_with_state
from sb3_memory.memory import CORES, MemoryCore

# SB3's SAC actor bounds (stable_baselines3.sac.policies).
LOG_STD_MIN, LOG_STD_MAX = -20, 2


def run_core(
    model: BaseModel, core: MemoryCore, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor
) -> tuple[th.Tensor, th.Tensor]:
    """A model's features of flattened time-major sequences through its core: ``(T * B, output_dim)`` and the new state."""
    n_seq = state.shape[0]
    assert model.features_extractor is not None
    features = model.extract_features(obs, model.features_extractor)
    latent, state = core.forward_flat(features.reshape(-1, n_seq, core.input_dim), state, episode_starts.reshape(-1, n_seq))
    return latent.reshape(-1, latent.shape[-1]), state


class MemoryActor(BasePolicy):
    """
    SAC's squashed-Gaussian actor after a memory core: features extractor -> core -> MLP -> mean
    and log-std (SB3's ``Actor`` with a core before its MLP; no gSDE).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        features_extractor: BaseFeaturesExtractor,
        core_name: str,
        core_kwargs: dict[str, Any],
        net_arch: list[int],
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
            squash_output=True,
        )
        self.core: MemoryCore = CORES[core_name](input_dim=features_extractor.features_dim, **core_kwargs)
        action_dim = get_action_dim(action_space)
        self.latent_pi = nn.Sequential(*create_mlp(self.core.output_dim, -1, net_arch, activation_fn))
        last = net_arch[-1] if net_arch else self.core.output_dim
        self.action_dist = SquashedDiagGaussianDistribution(action_dim)
        self.mu = nn.Linear(last, action_dim)
        self.log_std = nn.Linear(last, action_dim)

    def latent(self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return run_core(self, self.core, obs, state, episode_starts)

    def _params(self, latent: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        hidden = self.latent_pi(latent)
        return self.mu(hidden), th.clamp(self.log_std(hidden), LOG_STD_MIN, LOG_STD_MAX)

    def distribution(self, latent: th.Tensor) -> SquashedDiagGaussianDistribution:
        # A copy per call: the distribution object keeps its last call's parameters, which threads
        # predicting with one policy must not share.
        return copy.copy(self.action_dist).proba_distribution(*self._params(latent))  # type: ignore[return-value]

    def action_log_prob(self, latent: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Sampled actions (in [-1, 1]) and their log-probabilities, from the core's output."""
        return copy.copy(self.action_dist).log_prob_from_params(*self._params(latent))

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        raise NotImplementedError("a memory actor needs its state: use MemorySACPolicy.predict(obs, state, episode_start)")


class MemoryCritic(BaseModel):
    """
    SAC's critics after one memory core: features extractor -> core, then ``n_critics`` MLPs of
    [core output, action] -> Q. The core reads observations only, so a sequence's memory is computed
    once and every action (replayed or the actor's) is scored from it.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        features_extractor: BaseFeaturesExtractor,
        core_name: str,
        core_kwargs: dict[str, Any],
        net_arch: list[int],
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_critics: int = 2,
    ) -> None:
        super().__init__(
            observation_space, action_space, features_extractor=features_extractor, normalize_images=normalize_images
        )
        self.core: MemoryCore = CORES[core_name](input_dim=features_extractor.features_dim, **core_kwargs)
        action_dim = get_action_dim(action_space)
        self.q_networks = nn.ModuleList(
            [
                nn.Sequential(*create_mlp(self.core.output_dim + action_dim, 1, net_arch, activation_fn))
                for _ in range(n_critics)
            ]
        )

    def latent(self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return run_core(self, self.core, obs, state, episode_starts)

    def q_values(self, latent: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        """Each critic's Q-values of the actions, ``(T * B, 1)`` each."""
        inputs = th.cat([latent, actions], dim=1)
        return tuple(q_net(inputs) for q_net in self.q_networks)


class MemorySACPolicy(BasePolicy):
    """
    Policy of :class:`~sb3_memory.MemorySAC`: a :class:`MemoryActor` and a :class:`MemoryCritic`
    (with its target copy), each with a core of its own. The flat state is the actor core's then the
    critic core's, so that rollouts store the critic's memory too (replay starts both from there).
    ``predict`` returns actions in the action space's bounds.

    :param net_arch: hidden layers after the cores, a list for both or ``dict(pi=[...], qf=[...])``
        (default ``[256, 256]``, as SB3's SAC)
    :param n_critics: Q-networks on the critic core (clipped double Q)
    :param share_features_extractor: must stay False: each network extracts its own features
    :param core_kwargs: the cores' keyword arguments (both cores alike)
    The other parameters are those of SB3's ``SACPolicy``.
    """

    core_name: ClassVar[str] = "ntm"
    default_features_extractor: ClassVar[type[BaseFeaturesExtractor]] = FlattenExtractor
    actor: MemoryActor
    critic: MemoryCritic
    critic_target: MemoryCritic

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: Optional[Union[list[int], dict[str, list[int]]]] = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        use_sde: bool = False,
        features_extractor_class: Optional[type[BaseFeaturesExtractor]] = None,
        features_extractor_kwargs: Optional[dict[str, Any]] = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: Optional[dict[str, Any]] = None,
        n_critics: int = 2,
        share_features_extractor: bool = False,
        **core_kwargs: Any,
    ) -> None:
        check_core_kwargs(type(self).__name__, self.core_name, core_kwargs, "SACPolicy's arguments")
        if use_sde:
            raise ValueError("MemorySAC has no gSDE exploration yet: leave use_sde=False")
        if share_features_extractor:
            raise ValueError(
                "each MemorySAC network has its own features extractor and core: leave share_features_extractor=False"
            )
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class or self.default_features_extractor,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
            squash_output=True,
        )
        if net_arch is None:
            net_arch = [256, 256]
        self.net_arch = net_arch
        pi_arch, qf_arch = (net_arch["pi"], net_arch["qf"]) if isinstance(net_arch, dict) else (net_arch, net_arch)
        self.activation_fn = activation_fn
        self.n_critics = n_critics
        self.core_kwargs = core_kwargs
        self._arch = (pi_arch, qf_arch)
        self._build(lr_schedule)

    def _make_critic(self) -> MemoryCritic:
        return MemoryCritic(
            self.observation_space, self.action_space, self.make_features_extractor(), self.core_name,  # type: ignore[arg-type]
            self.core_kwargs, self._arch[1], self.activation_fn, self.normalize_images, self.n_critics,
        ).to(self.device)  # fmt: skip

    def _build(self, lr_schedule: Schedule) -> None:
        self.actor = MemoryActor(
            self.observation_space, self.action_space, self.make_features_extractor(), self.core_name,  # type: ignore[arg-type]
            self.core_kwargs, self._arch[0], self.activation_fn, self.normalize_images,
        ).to(self.device)  # fmt: skip
        self.actor.optimizer = self.optimizer_class(self.actor.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]
        self.critic = self._make_critic()
        self.critic.optimizer = self.optimizer_class(self.critic.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]
        self.critic_target = self._make_critic()
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.set_training_mode(False)

    @property
    def state_size(self) -> int:
        """The actor core's flat state, then the critic core's, for one environment."""
        return self.actor.core.state_size + self.critic.core.state_size

    def initial_state(self, n_envs: int) -> th.Tensor:
        cores = (self.actor.core, self.critic.core)
        return th.cat([core.flatten_state(core.initial_state(n_envs, self.device)) for core in cores], dim=1)

    def split_state(self, state: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """The actor core's and the critic core's parts of a flat state."""
        actor, critic = th.split(state, [self.actor.core.state_size, self.critic.core.state_size], dim=1)
        return actor, critic

    def forward(  # type: ignore[override]
        self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor, deterministic: bool = False
    ) -> tuple[th.Tensor, th.Tensor]:
        return self._predict(obs, state, episode_starts, deterministic)

    def _predict(  # type: ignore[override]
        self, observation: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor, deterministic: bool = False
    ) -> tuple[th.Tensor, th.Tensor]:
        """Actions in [-1, 1] and the new state (both cores step, so rollouts can store the critic's memory)."""
        actor_state, critic_state = self.split_state(state)
        latent, actor_state = self.actor.latent(observation, actor_state, episode_starts)
        _, critic_state = self.critic.latent(observation, critic_state, episode_starts)
        actions = self.actor.distribution(latent).get_actions(deterministic=deterministic)
        return actions, th.cat([actor_state, critic_state], dim=1)

    def predict(  # type: ignore[override]
        self,
        observation: Union[np.ndarray, dict[str, np.ndarray]],
        state: Optional[np.ndarray] = None,
        episode_start: Optional[np.ndarray] = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions in the action space's bounds and the new state, as NumPy."""
        actions, vectorized_env, new_state = predict_with_state(self, observation, state, episode_start, deterministic)
        actions = self.unscale_action(actions.reshape((-1, *(self.action_space.shape or ()))))
        return (actions if vectorized_env else actions.squeeze(axis=0)), new_state

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            lr_schedule=self._dummy_schedule,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
            features_extractor_class=self.features_extractor_class,
            features_extractor_kwargs=self.features_extractor_kwargs,
            n_critics=self.n_critics,
            **self.core_kwargs,
        )
        return data

    def set_training_mode(self, mode: bool) -> None:
        self.actor.set_training_mode(mode)
        self.critic.set_training_mode(mode)
        self.training = mode


class NTMPolicy(MemorySACPolicy):
    """:class:`MemorySACPolicy` with Neural Turing Machine cores, for vector observations."""

    core_name = "ntm"


class DNCPolicy(MemorySACPolicy):
    """:class:`MemorySACPolicy` with Differentiable Neural Computer cores, for vector observations."""

    core_name = "dnc"


class LSTMPolicy(MemorySACPolicy):
    """:class:`MemorySACPolicy` with plain LSTM cores (no external memory), for control runs."""

    core_name = "lstm"


class CnnNTMPolicy(NTMPolicy):
    default_features_extractor = NatureCNN


class CnnDNCPolicy(DNCPolicy):
    default_features_extractor = NatureCNN


class CnnLSTMPolicy(LSTMPolicy):
    default_features_extractor = NatureCNN


class MultiInputNTMPolicy(NTMPolicy):
    default_features_extractor = CombinedExtractor


class MultiInputDNCPolicy(DNCPolicy):
    default_features_extractor = CombinedExtractor


class MultiInputLSTMPolicy(LSTMPolicy):
    default_features_extractor = CombinedExtractor


POLICY_ALIASES: dict[str, type[BasePolicy]] = {
    policy.__name__: policy
    for policy in (
        NTMPolicy,
        DNCPolicy,
        LSTMPolicy,
        CnnNTMPolicy,
        CnnDNCPolicy,
        CnnLSTMPolicy,
        MultiInputNTMPolicy,
        MultiInputDNCPolicy,
        MultiInputLSTMPolicy,
    )
}

"""Q-value policies whose features pass through a memory core, for :class:`~sb3_memory.MemoryDQN`."""

from typing import Any, ClassVar, Optional, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
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


class MemoryQNetwork(BasePolicy):
    """
    Q-values of flattened time-major sequences: features extractor -> memory core -> MLP, one value
    per action (SB3's ``QNetwork`` with a core before its MLP).

    :param features_extractor: this network's own extractor (online and target networks each have one)
    :param features_dim: its output size
    :param core_name: ``"ntm"``, ``"dnc"`` or ``"lstm"``
    :param core_kwargs: the core's keyword arguments
    :param net_arch: hidden layers of the MLP after the core
    :param activation_fn: their activation
    """

    action_space: spaces.Discrete

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        core_name: str,
        core_kwargs: dict[str, Any],
        net_arch: Optional[list[int]] = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(
            observation_space, action_space, features_extractor=features_extractor, normalize_images=normalize_images
        )
        self.net_arch = [64, 64] if net_arch is None else net_arch
        self.activation_fn = activation_fn
        self.core: MemoryCore = CORES[core_name](input_dim=features_dim, **core_kwargs)
        self.q_net = nn.Sequential(*create_mlp(self.core.output_dim, int(action_space.n), self.net_arch, activation_fn))

    def forward(self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor) -> tuple[th.Tensor, th.Tensor]:  # type: ignore[override]
        """
        :param obs: ``(T * B, ...)``, time-major
        :param state: the core's flat state of the B sequences at their first step, ``(B, state_size)``
        :param episode_starts: ``(T * B,)``; rows that start an episode are reset first
        :return: Q-values ``(T * B, n_actions)`` and the state after the last step
        """
        n_seq = state.shape[0]
        features = self.extract_features(obs, self.features_extractor)
        if features.shape[0] % n_seq != 0:
            raise ValueError(f"{features.shape[0]} observations cannot be split into sequences of {n_seq} environments")
        latent, state = self.core.forward_flat(
            features.reshape(-1, n_seq, self.core.input_dim), state, episode_starts.reshape(-1, n_seq)
        )
        return self.q_net(latent.reshape(-1, latent.shape[-1])), state

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        raise NotImplementedError("a memory Q-network needs its state: use MemoryDQNPolicy.predict(obs, state, episode_start)")


class MemoryDQNPolicy(BasePolicy):
    """
    Policy of :class:`~sb3_memory.MemoryDQN`: an online and a target :class:`MemoryQNetwork`, each
    with its own core and state, acting greedily on the online network's Q-values. The state of
    ``predict`` is the online core's flat state, as NumPy (as :class:`MemoryActorCriticPolicy`'s).

    :param net_arch: hidden layers after the core (default ``[64, 64]``, as SB3's DQN)
    :param core_kwargs: the core's keyword arguments (``memory_units``, ``memory_unit_size``,
        ``num_read_heads``, ``controller_dim``, ``controller``, ``sparse_top_k``, ...)
    The other parameters are those of SB3's ``DQNPolicy``.
    """

    core_name: ClassVar[str] = "ntm"
    default_features_extractor: ClassVar[type[BaseFeaturesExtractor]] = FlattenExtractor
    q_net: MemoryQNetwork
    q_net_target: MemoryQNetwork

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: Optional[list[int]] = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: Optional[type[BaseFeaturesExtractor]] = None,
        features_extractor_kwargs: Optional[dict[str, Any]] = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: Optional[dict[str, Any]] = None,
        **core_kwargs: Any,
    ) -> None:
        check_core_kwargs(type(self).__name__, self.core_name, core_kwargs, "DQNPolicy's arguments")
        if (
            isinstance(observation_space, spaces.Dict)
            and features_extractor_class is None
            and not issubclass(self.default_features_extractor, CombinedExtractor)
        ):
            raise ValueError(
                f"{type(self).__name__} takes Box observations; for a Dict observation space use "
                f"'MultiInput{self.core_name.upper()}Policy'"
            )
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class or self.default_features_extractor,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
        )
        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.core_kwargs = core_kwargs
        self._build(lr_schedule)

    def make_q_net(self) -> MemoryQNetwork:
        extractor = self.make_features_extractor()
        return MemoryQNetwork(
            self.observation_space,
            self.action_space,  # type: ignore[arg-type]
            extractor,
            extractor.features_dim,
            self.core_name,
            self.core_kwargs,
            self.net_arch,
            self.activation_fn,
            self.normalize_images,
        ).to(self.device)

    def _build(self, lr_schedule: Schedule) -> None:
        self.q_net = self.make_q_net()
        self.q_net_target = self.make_q_net()
        self.q_net_target.load_state_dict(self.q_net.state_dict())
        self.q_net_target.set_training_mode(False)
        self.optimizer = self.optimizer_class(self.q_net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    @property
    def state_size(self) -> int:
        """Size of the online core's flat state of one environment."""
        return self.q_net.core.state_size

    def initial_state(self, n_envs: int) -> th.Tensor:
        """Flat initial state, ``(n_envs, state_size)``, on the policy's device."""
        core = self.q_net.core
        return core.flatten_state(core.initial_state(n_envs, self.device))

    def forward(  # type: ignore[override]
        self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor, deterministic: bool = True
    ) -> tuple[th.Tensor, th.Tensor]:
        """Greedy actions and the new state."""
        return self._predict(obs, state, episode_starts, deterministic)

    def _predict(  # type: ignore[override]
        self, observation: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor, deterministic: bool = True
    ) -> tuple[th.Tensor, th.Tensor]:
        q_values, state = self.q_net(observation, state, episode_starts)
        return q_values.argmax(dim=1).reshape(-1), state

    def predict(  # type: ignore[override]
        self,
        observation: Union[np.ndarray, dict[str, np.ndarray]],
        state: Optional[np.ndarray] = None,
        episode_start: Optional[np.ndarray] = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Greedy action for an observation, with the state passed back and forth as NumPy.

        :param state: the state returned by the previous call, or None to start afresh
        :param episode_start: which environments start a new episode (resets their state)
        :return: the action(s) and the new state, ``(n_envs, state_size)``
        """
        actions, vectorized_env, new_state = predict_with_state(self, observation, state, episode_start, deterministic)
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
            **self.core_kwargs,
        )
        return data

    def set_training_mode(self, mode: bool) -> None:
        self.q_net.set_training_mode(mode)
        self.training = mode


class NTMPolicy(MemoryDQNPolicy):
    """:class:`MemoryDQNPolicy` with a Neural Turing Machine core, for vector observations."""

    core_name = "ntm"


class DNCPolicy(MemoryDQNPolicy):
    """:class:`MemoryDQNPolicy` with a Differentiable Neural Computer core, for vector observations."""

    core_name = "dnc"


class LSTMPolicy(MemoryDQNPolicy):
    """:class:`MemoryDQNPolicy` with a plain LSTM core (no external memory), for control runs."""

    core_name = "lstm"


class CnnNTMPolicy(NTMPolicy):
    """NTM policy for image observations (SB3's ``NatureCNN`` before the core)."""

    default_features_extractor = NatureCNN


class CnnDNCPolicy(DNCPolicy):
    """DNC policy for image observations."""

    default_features_extractor = NatureCNN


class CnnLSTMPolicy(LSTMPolicy):
    """LSTM policy for image observations."""

    default_features_extractor = NatureCNN


class MultiInputNTMPolicy(NTMPolicy):
    """NTM policy for ``Dict`` observations (SB3's ``CombinedExtractor`` before the core)."""

    default_features_extractor = CombinedExtractor


class MultiInputDNCPolicy(DNCPolicy):
    """DNC policy for ``Dict`` observations."""

    default_features_extractor = CombinedExtractor


class MultiInputLSTMPolicy(LSTMPolicy):
    """LSTM policy for ``Dict`` observations."""

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

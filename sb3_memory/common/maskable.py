"""Invalid-action masking with memory: sb3-contrib's masking pieces on the memory policies and buffers.

The distributions come from ``sb3_contrib.common.maskable`` (``make_masked_proba_distribution``,
``MaskableDistribution.apply_masking``) and the buffers extend sb3-contrib's
``MaskableRolloutBuffer`` with the chunked memory state; nothing of the masking is written anew.
"""

import copy
from functools import partial
from typing import Optional

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.maskable.distributions import MaskableDistribution, make_masked_proba_distribution
from stable_baselines3.common.type_aliases import Schedule

from sb3_memory.common.buffers import ChunkedStateMixin
from sb3_memory.common.policies import (
    ActionMasks,
    CnnDNCPolicy,
    CnnLSTMPolicy,
    CnnNTMPolicy,
    DNCPolicy,
    LSTMPolicy,
    MemoryActorCriticPolicy,
    MultiInputDNCPolicy,
    MultiInputLSTMPolicy,
    MultiInputNTMPolicy,
    NTMPolicy,
)
from sb3_memory.common.type_aliases import MaskableMemoryRolloutBufferSamples


class MaskableMemoryActorCriticPolicy(MemoryActorCriticPolicy):
    """
    :class:`~sb3_memory.common.policies.MemoryActorCriticPolicy` whose action distribution takes
    invalid-action masks (Discrete, MultiDiscrete and MultiBinary actions): every method that
    builds the distribution (rollout steps, training replay, ``predict``) takes ``action_masks``.
    """

    def _build(self, lr_schedule: Schedule) -> None:
        try:
            masked = make_masked_proba_distribution(self.action_space)
        except NotImplementedError:
            raise ValueError(
                f"invalid-action masking supports Discrete, MultiDiscrete and MultiBinary actions, not {self.action_space}"
            ) from None
        # SB3's _build only knows its own distributions: let it build everything, then give the
        # action head the masked distribution's shape (two logits per MultiBinary entry) and the
        # optimizer the final parameters.
        super()._build(lr_schedule)
        self.action_dist = masked
        self.action_net = masked.proba_distribution_net(latent_dim=self.mlp_extractor.latent_dim_pi)
        if self.ortho_init:
            self.action_net.apply(partial(self.init_weights, gain=0.01))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> MaskableDistribution:  # type: ignore[override]
        assert isinstance(self.action_dist, MaskableDistribution)
        # A copy per call: the distribution object keeps its last call's logits and masks, which
        # threads predicting with one policy must not share.
        return copy.copy(self.action_dist).proba_distribution(action_logits=self.action_net(latent_pi))

    def _action_distribution(self, latent_pi: th.Tensor, action_masks: Optional[ActionMasks]) -> MaskableDistribution:
        distribution = self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(latent_pi))
        if action_masks is not None:
            distribution.apply_masking(action_masks)
        return distribution


def mask_groups(action_space: spaces.Space) -> list[int]:
    """The sizes of the mask's groups, one per action dimension, in sb3-contrib's flat mask layout."""
    if isinstance(action_space, spaces.Discrete):
        return [int(action_space.n)]
    if isinstance(action_space, spaces.MultiDiscrete):
        return [int(n) for n in np.asarray(action_space.nvec).reshape(-1)]
    if isinstance(action_space, spaces.MultiBinary):
        return [2] * int(np.prod(action_space.shape))
    raise ValueError(f"invalid-action masking supports Discrete, MultiDiscrete and MultiBinary actions, not {action_space}")


def check_action_masks(masks: np.ndarray, action_space: spaces.Space) -> np.ndarray:
    """
    Check the envs' masks before they are used: every action dimension of every env must allow
    at least one action (a mask that allows none leaves a distribution with no support, and
    sb3-contrib trains on with it silently).

    :param masks: the masks of a step, ``(n_envs, sum(mask_groups))``
    :param action_space: the envs' action space
    :return: the masks, as booleans
    :raises ValueError: a mask of the wrong size, or one that allows no action
    """
    groups = mask_groups(action_space)
    masks = np.asarray(masks, dtype=bool).reshape(len(masks), -1)
    if masks.shape[1] != sum(groups):
        raise ValueError(f"action masks have {masks.shape[1]} entries per env, but {action_space} needs {sum(groups)}")
    starts = np.cumsum([0, *groups[:-1]])
    allowed = np.logical_or.reduceat(masks, starts, axis=1)  # (n_envs, dimensions)
    if not allowed.all():
        env, dimension = (int(i) for i in np.argwhere(~allowed)[0])
        where = f"action dimension {dimension}" if len(groups) > 1 else "the action"
        raise ValueError(
            f"the action mask of env {env} allows no action for {where}: action_masks() must leave at "
            "least one valid action at every step (end the episode instead)"
        )
    return masks


class MaskableNTMPolicy(MaskableMemoryActorCriticPolicy, NTMPolicy):
    """:class:`~sb3_memory.common.policies.NTMPolicy` with action masks."""


class MaskableDNCPolicy(MaskableMemoryActorCriticPolicy, DNCPolicy):
    """:class:`~sb3_memory.common.policies.DNCPolicy` with action masks."""


class MaskableLSTMPolicy(MaskableMemoryActorCriticPolicy, LSTMPolicy):
    """:class:`~sb3_memory.common.policies.LSTMPolicy` with action masks."""


class MaskableCnnNTMPolicy(MaskableMemoryActorCriticPolicy, CnnNTMPolicy):
    """:class:`~sb3_memory.common.policies.CnnNTMPolicy` with action masks."""


class MaskableCnnDNCPolicy(MaskableMemoryActorCriticPolicy, CnnDNCPolicy):
    """:class:`~sb3_memory.common.policies.CnnDNCPolicy` with action masks."""


class MaskableCnnLSTMPolicy(MaskableMemoryActorCriticPolicy, CnnLSTMPolicy):
    """:class:`~sb3_memory.common.policies.CnnLSTMPolicy` with action masks."""


class MaskableMultiInputNTMPolicy(MaskableMemoryActorCriticPolicy, MultiInputNTMPolicy):
    """:class:`~sb3_memory.common.policies.MultiInputNTMPolicy` with action masks."""


class MaskableMultiInputDNCPolicy(MaskableMemoryActorCriticPolicy, MultiInputDNCPolicy):
    """:class:`~sb3_memory.common.policies.MultiInputDNCPolicy` with action masks."""


class MaskableMultiInputLSTMPolicy(MaskableMemoryActorCriticPolicy, MultiInputLSTMPolicy):
    """:class:`~sb3_memory.common.policies.MultiInputLSTMPolicy` with action masks."""


class _MaskableChunks(ChunkedStateMixin):
    per_step_arrays = (*ChunkedStateMixin.per_step_arrays, "action_masks")
    action_masks: np.ndarray
    mask_dims: int

    def _get_chunk_samples(self, chunk_ids: np.ndarray, states: Optional[th.Tensor]) -> MaskableMemoryRolloutBufferSamples:  # type: ignore[override]
        samples = super()._get_chunk_samples(chunk_ids, states)
        masks = self.to_torch(self.action_masks[self._chunk_rows(chunk_ids)].reshape(-1, self.mask_dims))
        return MaskableMemoryRolloutBufferSamples(**samples._asdict(), action_masks=masks)


class MaskableMemoryRolloutBuffer(_MaskableChunks, MaskableRolloutBuffer):  # type: ignore[misc]
    """sb3-contrib's ``MaskableRolloutBuffer`` with the memory state of each chunk (see :class:`ChunkedStateMixin`)."""


class MaskableMemoryDictRolloutBuffer(_MaskableChunks, MaskableDictRolloutBuffer):  # type: ignore[misc]
    """Dict-observation version of :class:`MaskableMemoryRolloutBuffer`."""

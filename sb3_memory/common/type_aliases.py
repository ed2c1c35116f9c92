"""Common aliases and sample types, as SB3's ``common/type_aliases.py`` holds its buffers' samples."""

from typing import NamedTuple, Union

import torch as th
from stable_baselines3.common.type_aliases import TensorDict


class MemoryRolloutBufferSamples(NamedTuple):
    """
    A minibatch of B chunks of T steps. Per-step fields are flattened time-major, ``(T * B, ...)``:
    row ``t * B + b`` is step t of chunk b.
    """

    observations: Union[th.Tensor, TensorDict]
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    episode_starts: th.Tensor
    rewards: th.Tensor  # for the auxiliary prediction loss
    states: th.Tensor  # (B, state_size): the flat memory state before each chunk's first step


class MaskableMemoryRolloutBufferSamples(NamedTuple):
    """:class:`MemoryRolloutBufferSamples` plus the action masks, ``(T * B, mask_size)``."""

    observations: Union[th.Tensor, TensorDict]
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    episode_starts: th.Tensor
    rewards: th.Tensor
    states: th.Tensor
    action_masks: th.Tensor

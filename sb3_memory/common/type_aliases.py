"""Common aliases and sample types, as SB3's ``common/type_aliases.py`` holds its buffers' samples."""

from typing import NamedTuple, Optional, Union

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


class SequenceReplayBufferSamples(NamedTuple):
    """
    B sequences of L consecutive steps of one environment each, with the stored memory state before
    their first step (R2D2's stored-state replay). Observations, actions and episode starts are
    flattened time-major, ``(L * B, ...)``: row ``t * B + b`` is step t of sequence b; rewards and
    dones are ``(L, B)``.
    """

    observations: Union[th.Tensor, TensorDict]
    actions: th.Tensor  # (L * B,) for discrete actions, (L * B, action_dim) for Box ones
    episode_starts: th.Tensor  # (L * B,): the step begins an episode (the core resets before it)
    rewards: th.Tensor  # (L, B)
    dones: th.Tensor  # (L, B): the episode ended with this step's transition
    states: th.Tensor  # (B, state_size)
    # (L, B): the episode was cut by a time limit with this step (its done is set too); the value of
    # where it was cut off is bootstrapped from the observation it stopped at:
    timeouts: Optional[th.Tensor] = None
    # like observations, that last observation at the rows of steps with a timeout (None if there are none)
    terminal_observations: Optional[Union[th.Tensor, TensorDict]] = None

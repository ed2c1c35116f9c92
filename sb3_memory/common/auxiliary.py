"""Auxiliary memory losses, computed on the chunk replay that training already runs.

Memory trained by the RL loss alone learns slowly: the policy gradient says little about what
to store. MERLIN (Wayne et al., 2018) shapes memory by predictive reconstruction, and Memory
Gym (Pleines et al., 2023) finds reconstruction necessary for Transformer-XL agents. Two
self-supervised tasks read the memory core's output at every step of a chunk:

* **recall**: reconstruct the observation of ``k`` steps back, ``k`` drawn per row in
  ``[1, recall_horizon]`` within the episode and the chunk, and given to the decoder;
* **prediction**: predict the next observation (within the episode) and this step's reward from
  the core's output and the action taken.

"Observation" is what the features extractor makes of it (the flattened observation for vector
spaces; the CNN embedding for images, detached), so the targets need no new pass through anything.
"""

from typing import Optional

import torch as th
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

AUXILIARY_TASKS = ("recall", "prediction")


def action_features(actions: th.Tensor, action_space: spaces.Space) -> th.Tensor:
    """
    Actions as decoder inputs: one-hot for Discrete and MultiDiscrete, as they are otherwise.

    :param actions: (n, ...) as the rollout buffer serves them (float)
    :return: (n, action_feature_size(action_space))
    """
    if isinstance(action_space, spaces.Discrete):
        return F.one_hot(actions.reshape(-1).long(), int(action_space.n)).float()
    if isinstance(action_space, spaces.MultiDiscrete):
        columns = actions.reshape(actions.shape[0], -1).long().unbind(-1)
        return th.cat([F.one_hot(c, int(n)).float() for c, n in zip(columns, action_space.nvec)], dim=-1)
    return actions.reshape(actions.shape[0], -1).float()


def action_feature_size(action_space: spaces.Space) -> int:
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        return int(action_space.nvec.sum())
    return int(spaces.flatdim(action_space))


def steps_since_episode_start(episode_starts: th.Tensor) -> th.Tensor:
    """
    For each step of a time-major chunk, how many earlier steps of the same episode it holds.

    :param episode_starts: (T, B), nonzero where an episode starts
    :return: (T, B) long; 0 at the chunk's first step and at every episode start
    """
    steps = th.arange(episode_starts.shape[0], device=episode_starts.device).unsqueeze(1).expand_as(episode_starts)
    last_start = th.where(episode_starts.bool(), steps, th.zeros_like(steps)).cummax(dim=0).values
    return steps - last_start


def recall_targets(history: th.Tensor, max_lag: th.Tensor, horizon: int) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """
    Draw one lag per row and fetch what it points at.

    :param history: (T, B, D) targets of every step
    :param max_lag: (T, B) from :func:`steps_since_episode_start`
    :param horizon: the longest lag drawn
    :return: lags (T, B) in ``[1, horizon]``, the targets ``history[t - lag]`` (T, B, D), and the
        mask of rows with at least one earlier step (T, B)
    """
    limit = max_lag.clamp(max=horizon)
    valid = limit >= 1
    # Uniform in [1, limit]; rows without an earlier step draw lag 1 and are masked out.
    lags = 1 + (th.rand(limit.shape, device=limit.device) * limit.clamp(min=1)).long()
    steps = th.arange(history.shape[0], device=history.device).unsqueeze(1)
    source = (steps - lags).clamp(min=0)
    targets = history.gather(0, source.unsqueeze(-1).expand(-1, -1, history.shape[-1]))
    return lags, targets, valid


def masked_mse(prediction: th.Tensor, target: th.Tensor, mask: th.Tensor) -> th.Tensor:
    """Squared error averaged over the last dimension, then over the rows where ``mask`` holds (0 if none)."""
    errors = (prediction - target).square().mean(dim=-1)
    count = mask.sum()
    return th.where(count > 0, (errors * mask).sum() / count.clamp(min=1), errors.new_zeros(()))


class AuxiliaryHeads(nn.Module):
    """
    Decoders of the auxiliary losses (one hidden layer each), reading the memory core's output.

    :param core_dim: size of the core's output
    :param target_dim: size of the features-extractor output (the reconstruction target)
    :param action_space: the env's action space (prediction decodes from the action taken)
    :param tasks: a subset of :data:`AUXILIARY_TASKS`
    :param recall_horizon: the longest lag of the recall task
    :param hidden_dim: hidden layer size of each decoder
    """

    def __init__(
        self,
        core_dim: int,
        target_dim: int,
        action_space: spaces.Space,
        tasks: tuple[str, ...],
        recall_horizon: int,
        hidden_dim: int = 64,
    ) -> None:
        super().__init__()
        unknown = set(tasks) - set(AUXILIARY_TASKS)
        if unknown:
            raise ValueError(f"unknown auxiliary task(s) {sorted(unknown)}; choose from {AUXILIARY_TASKS}")
        self.action_space = action_space
        self.recall_horizon = recall_horizon
        self.recall: Optional[nn.Module] = None
        self.prediction: Optional[nn.Module] = None
        if "recall" in tasks:
            self.recall = _decoder(core_dim + recall_horizon, hidden_dim, target_dim)
        if "prediction" in tasks:
            self.prediction = _decoder(core_dim + action_feature_size(action_space), hidden_dim, target_dim + 1)

    def forward(
        self, core_output: th.Tensor, targets: th.Tensor, actions: th.Tensor, rewards: th.Tensor, episode_starts: th.Tensor
    ) -> dict[str, th.Tensor]:
        """
        Losses of one minibatch of chunks (per-step tensors time-major, ``(T, B, ...)``).

        :param core_output: the memory core's output
        :param targets: the features-extractor output (detached)
        :param actions: as the rollout buffer serves them, ``(T, B, ...)``
        :param rewards: ``(T, B)``
        :param episode_starts: ``(T, B)``
        :return: ``{"recall": ..., "prediction": ...}`` for the tasks this module has
        """
        losses = {}
        if self.recall is not None:
            lags, history, valid = recall_targets(targets, steps_since_episode_start(episode_starts), self.recall_horizon)
            lag_code = F.one_hot(lags - 1, self.recall_horizon).to(core_output.dtype)
            losses["recall"] = masked_mse(self.recall(th.cat([core_output, lag_code], dim=-1)), history, valid)
        if self.prediction is not None:
            steps, batch = core_output.shape[:2]
            action_code = action_features(actions.reshape(steps * batch, *actions.shape[2:]), self.action_space)
            decoded = self.prediction(th.cat([core_output, action_code.reshape(steps, batch, -1)], dim=-1))
            next_observation, reward = decoded[..., :-1], decoded[..., -1]
            # The next observation is in the chunk and in the same episode.
            same_episode = ~episode_starts[1:].bool()
            observation_loss = masked_mse(next_observation[:-1], targets[1:], same_episode)
            losses["prediction"] = observation_loss + F.mse_loss(reward, rewards)
        return losses


def _decoder(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, output_dim))

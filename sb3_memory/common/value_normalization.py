"""Value normalisation that preserves outputs (PopArt, van Hasselt et al. 2016).

The value head predicts returns in units of a running estimate of their scale, so the value loss
is of the same size on every task (returns of 500 on CartPole or of 1 on a card game) and its
gradient cannot drown the policy gradient in a core that both losses train. When the statistics
move, the head's last layer is rescaled so that its de-normalised outputs stay exactly the same
("preserving outputs precisely").
"""

import torch as th
from torch import nn


def ema_moments(
    first: th.Tensor, second: th.Tensor, weight: th.Tensor, returns: th.Tensor, decay: float
) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """
    One step of exponential moving averages of the returns' first and second moments.

    :param first: running average of the returns (not yet debiased)
    :param second: running average of their squares (not yet debiased)
    :param weight: running total weight; ``first / weight`` is the debiased mean
    :param returns: the new returns, any shape
    :param decay: how much of the old averages each update keeps, in [0, 1)
    :return: the new ``first``, ``second`` and ``weight``
    """
    returns = returns.to(first.dtype)
    return (
        decay * first + (1 - decay) * returns.mean(),
        decay * second + (1 - decay) * returns.pow(2).mean(),
        decay * weight + (1 - decay),
    )


def preserve_outputs(
    weight: th.Tensor, bias: th.Tensor, old_mean: th.Tensor, old_std: th.Tensor, new_mean: th.Tensor, new_std: th.Tensor
) -> tuple[th.Tensor, th.Tensor]:
    """
    The linear layer for new statistics whose de-normalised outputs equal the old ones:
    ``new_std * (x W'^T + b') + new_mean == old_std * (x W^T + b) + old_mean`` for every ``x``.
    """
    return weight * old_std / new_std, (old_std * bias + old_mean - new_mean) / new_std


class NormalizedValueHead(nn.Module):
    """
    A linear value head whose outputs are de-normalised by running statistics of the returns.

    :param linear: the head, ``(latent_dim, 1)``; it predicts normalised values
    :param decay: how much of the old statistics each update keeps
    :param min_std: the smallest scale; it keeps tasks whose returns barely vary (all zero while
        nothing is learnt yet) from blowing their value errors up
    """

    def __init__(self, linear: nn.Linear, decay: float = 0.99, min_std: float = 0.1) -> None:
        super().__init__()
        if linear.out_features != 1:
            raise ValueError(f"the value head must have one output, got {linear.out_features}")
        self.linear = linear
        self.decay = decay
        self.min_std = min_std
        for name, value in (("mean", 0.0), ("std", 1.0), ("first", 0.0), ("second", 0.0), ("weight", 0.0)):
            self.register_buffer(name, th.tensor(value, dtype=linear.weight.dtype))
        self.mean: th.Tensor
        self.std: th.Tensor
        self.first: th.Tensor
        self.second: th.Tensor
        self.weight: th.Tensor

    def forward(self, latent: th.Tensor) -> th.Tensor:
        return self.linear(latent) * self.std + self.mean

    @th.no_grad()
    def update(self, returns: th.Tensor) -> None:
        """Fold new returns into the statistics, rescaling the head so that its outputs do not change."""
        returns = returns.to(self.first.device)
        if not th.isfinite(returns).all():
            raise ValueError("the returns contain NaN or infinity: check the rewards the environment gives")
        first, second, weight = ema_moments(self.first, self.second, self.weight, returns, self.decay)
        mean = first / weight
        std = (second / weight - mean.pow(2)).clamp(min=0).sqrt().clamp(min=self.min_std)
        new_weight, new_bias = preserve_outputs(self.linear.weight, self.linear.bias, self.mean, self.std, mean, std)
        self.linear.weight.copy_(new_weight)
        self.linear.bias.copy_(new_bias)
        for buffer, value in ((self.first, first), (self.second, second), (self.weight, weight)):
            buffer.copy_(value)
        self.mean.copy_(mean)
        self.std.copy_(std)

"""Value normalisation (PopArt): the statistics, the output-preserving rescale, and the algorithms' use of them."""

import numpy as np
import pytest
import torch as th
from test_algorithms import (
    assert_logged_losses_match_buffer,
    assert_rollout_replay_matches,
    changed_parameters,
    make_model,
    short_episode_env,
    snapshot,
)
from torch import nn

from sb3_memory import MemoryA2C, MemoryPPO
from sb3_memory.common.value_normalization import NormalizedValueHead, ema_moments, preserve_outputs


def test_ema_moments_hand_worked():
    # decay 0.5 from zero: first = 0.5 * mean([1, 3]) = 1, second = 0.5 * mean([1, 9]) = 2.5, weight 0.5,
    # so the debiased mean is 2 and the variance 5 - 4 = 1.
    first, second, weight = ema_moments(th.tensor(0.0), th.tensor(0.0), th.tensor(0.0), th.tensor([1.0, 3.0]), 0.5)
    assert (first.item(), second.item(), weight.item()) == (1.0, 2.5, 0.5)
    # A second batch, [5, 5]: first = 0.5 + 2.5 = 3, second = 1.25 + 12.5 = 13.75, weight 0.75 -> mean 4.
    first, second, weight = ema_moments(first, second, weight, th.tensor([5.0, 5.0]), 0.5)
    assert (first.item(), second.item(), weight.item()) == (3.0, 13.75, 0.75)
    assert (first / weight).item() == 4.0


def test_preserve_outputs_hand_worked():
    # Old: 2 * (3x + 1) + 5 = 6x + 7. New mean 1, std 4: W' = 3 * 2 / 4 = 1.5, b' = (2 + 5 - 1) / 4 = 1.5,
    # and 4 * (1.5x + 1.5) + 1 = 6x + 7.
    weight, bias = preserve_outputs(
        th.tensor([[3.0]]), th.tensor([1.0]), th.tensor(5.0), th.tensor(2.0), th.tensor(1.0), th.tensor(4.0)
    )
    assert weight.item() == 1.5 and bias.item() == 1.5


def test_update_preserves_outputs_and_tracks_the_returns():
    th.manual_seed(0)
    head = NormalizedValueHead(nn.Linear(6, 1).double(), decay=0.9)
    latents = th.randn(50, 6, dtype=th.float64)
    before = head(latents)
    returns = 300.0 + 40.0 * th.randn(1000, dtype=th.float64)
    head.update(returns)
    # The first update's debiased statistics are the batch's own.
    assert head.mean.item() == pytest.approx(returns.mean().item(), rel=1e-12)
    assert head.std.item() == pytest.approx(returns.std(unbiased=False).item(), rel=1e-9)
    th.testing.assert_close(head(latents), before, rtol=0, atol=1e-10)
    # The head now works in normalised units: its raw outputs are before / std away from the mean.
    th.testing.assert_close(head.linear(latents), (before - head.mean) / head.std)
    head.update(-returns)
    th.testing.assert_close(head(latents), before, rtol=0, atol=1e-10)


def test_constant_returns_keep_the_smallest_scale():
    head = NormalizedValueHead(nn.Linear(3, 1), min_std=0.1)
    head.update(th.zeros(100))
    assert head.std.item() == pytest.approx(0.1)


def test_non_finite_returns_are_named():
    head = NormalizedValueHead(nn.Linear(3, 1))
    with pytest.raises(ValueError, match="returns contain NaN"):
        head.update(th.tensor([1.0, float("nan")]))


def test_value_loss_scale_is_one_without_normalization():
    model = make_model(MemoryPPO, "NTMPolicy", short_episode_env)
    assert model.policy.value_loss_scale == 1.0 and isinstance(model.policy.value_net, nn.Linear)


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
@pytest.mark.parametrize("policy, critic", [("NTMPolicy", "shared"), ("DNCPolicy", "separate")])
def test_zero_learning_rate_still_replays_with_normalized_values(algo, policy, critic):
    """The statistics move after every rollout, but the values the buffer stored replay exactly."""
    kwargs = dict(batch_size=24, n_epochs=2) if algo is MemoryPPO else {}
    model = make_model(
        algo,
        policy,
        short_episode_env,
        n_envs=3,
        learning_rate=0.0,
        sequence_length=8,
        policy_kwargs=dict(critic_memory=critic, value_normalization=True),
        **kwargs,
    )
    before = snapshot(model)
    model.learn(2 * model.n_steps * model.n_envs)
    # Only the value head changed: its statistics and the rescale that preserves its outputs.
    changed = changed_parameters(before, model)
    assert changed and all(name.startswith("value_net.") for name in changed)
    assert model.policy.value_net.std.item() != 1.0
    assert_rollout_replay_matches(model, model.batch_size if algo is MemoryPPO else None)
    assert_logged_losses_match_buffer(model)


def test_value_loss_is_trained_in_normalized_units():
    """
    The value head's bias gets the gradient of the normalised loss: with v = std * u + mean,
    d/d(bias) of vf_coef * mean((R - v) ** 2) / std**2 is -2 * vf_coef * mean(R - v) / std (without
    the 1 / std**2 it would be std**2 times that).
    """
    model = make_model(
        MemoryA2C, "NTMPolicy", short_episode_env, max_grad_norm=1e9, policy_kwargs=dict(value_normalization=True)
    )
    gradients: list[th.Tensor] = []
    model.policy.value_net.linear.bias.register_hook(lambda grad: gradients.append(grad.clone()))
    model.learn(model.n_steps * model.n_envs)
    std = model.policy.value_net.std.item()
    assert abs(std - 1.0) > 0.1, "the returns' scale is about 1: the check is vacuous"
    assert model.policy.value_loss_scale == pytest.approx(1 / std**2)
    buffer = model.rollout_buffer
    expected = -2 * model.vf_coef * np.mean(buffer.returns - buffer.values) / std
    assert len(gradients) == 1
    assert gradients[0].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_statistics_are_saved_and_loaded(tmp_path):
    model = make_model(MemoryPPO, "DNCPolicy", short_episode_env, policy_kwargs=dict(value_normalization=True))
    model.learn(2 * model.n_steps * model.n_envs)
    model.save(tmp_path / "model")
    loaded = MemoryPPO.load(tmp_path / "model", device="cpu")
    assert isinstance(loaded.policy.value_net, NormalizedValueHead)
    for name in ("mean", "std", "first", "second", "weight"):
        assert th.equal(getattr(loaded.policy.value_net, name), getattr(model.policy.value_net, name))
    obs = th.as_tensor(model.env.reset())
    state, starts = model.policy.initial_state(len(obs)), th.ones(len(obs))
    th.testing.assert_close(
        loaded.policy.predict_values(obs, state, starts), model.policy.predict_values(obs, state, starts), rtol=0, atol=0
    )


def test_value_normalization_must_be_a_bool():
    with pytest.raises(TypeError, match="value_normalization must be True or False"):
        make_model(MemoryPPO, "NTMPolicy", short_episode_env, policy_kwargs=dict(value_normalization="yes"))

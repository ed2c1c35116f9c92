"""Auxiliary memory losses: the pieces by hand, then in training (gradients, replay, saving, learning)."""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from test_algorithms import (
    assert_rollout_replay_matches,
    changed_parameters,
    collect_one_rollout,
    make_model,
    short_continuous_env,
    short_episode_env,
    snapshot,
)

from sb3_memory import MemoryA2C, MemoryPPO
from sb3_memory.common import auxiliary as aux


def test_steps_since_episode_start_by_hand():
    starts = th.tensor([[1, 0], [0, 0], [0, 1], [1, 0], [0, 0]])
    expected = th.tensor([[0, 0], [1, 1], [2, 0], [0, 1], [1, 2]])
    assert th.equal(aux.steps_since_episode_start(starts), expected)


def test_recall_targets_point_inside_the_episode_and_the_horizon():
    th.manual_seed(0)
    steps, batch, horizon = 12, 64, 3
    history = th.arange(steps, dtype=th.float64).reshape(steps, 1, 1).expand(steps, batch, 2)
    starts = th.rand(steps, batch) < 0.2
    max_lag = aux.steps_since_episode_start(starts)
    lags, targets, valid = aux.recall_targets(history, max_lag, horizon)
    rows = th.arange(steps).unsqueeze(1).expand(steps, batch)
    assert th.equal(valid, max_lag >= 1)
    assert ((lags >= 1) & (lags <= horizon)).all()
    assert (lags[valid] <= max_lag[valid]).all()  # never before the episode's or the chunk's first step
    assert th.equal(targets[..., 0][valid], (rows - lags).double()[valid])  # the observation k steps back
    assert set(lags[max_lag >= horizon].tolist()) == {1, 2, 3}  # every lag is drawn


def test_masked_mse_and_action_features_by_hand():
    prediction, target = th.tensor([[1.0, 3.0], [0.0, 0.0]]), th.tensor([[0.0, 1.0], [5.0, 5.0]])
    assert aux.masked_mse(prediction, target, th.tensor([True, False])).item() == pytest.approx(2.5)
    assert aux.masked_mse(prediction, target, th.tensor([False, False])).item() == 0.0
    discrete = aux.action_features(th.tensor([[2.0], [0.0]]), spaces.Discrete(3))
    assert th.equal(discrete, th.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    multi = aux.action_features(th.tensor([[1.0, 0.0]]), spaces.MultiDiscrete([2, 3]))
    assert th.equal(multi, th.tensor([[0.0, 1.0, 1.0, 0.0, 0.0]]))
    box = aux.action_features(th.tensor([[0.5, -0.5]]), spaces.Box(-1, 1, (2,)))
    assert th.equal(box, th.tensor([[0.5, -0.5]]))


AUX = dict(recall_coef=1.0, prediction_coef=1.0, recall_horizon=4)


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_auxiliary_gradient_reaches_the_memory_interface_and_the_controller(algo, policy):
    model = make_model(algo, policy, short_episode_env, sequence_length=8, **AUX)
    collect_one_rollout(model)
    samples = next(model.rollout_buffer.get(None))
    actions = samples.actions.long().flatten()
    model.policy.zero_grad()
    *_, losses = model.policy.evaluate_actions_with_auxiliary(
        samples.observations, actions, samples.states, samples.episode_starts, samples.rewards
    )
    assert set(losses) == {"recall", "prediction"}
    sum(losses.values()).backward()
    core = model.policy.core
    for name, parameter in [("interface", core.interface.weight), ("controller", core.controller.weight_recurrent)]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.policy.action_net.weight.grad is None or model.policy.action_net.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("env", [short_episode_env, short_continuous_env])
def test_zero_learning_rate_still_replays_the_rollout(env):
    model = make_model(MemoryPPO, "DNCPolicy", env, n_envs=3, learning_rate=0.0, batch_size=24, sequence_length=8, **AUX)
    before = snapshot(model)
    model.learn(16 * model.n_envs)
    assert not changed_parameters(before, model)
    assert_rollout_replay_matches(model, model.batch_size)
    assert model.logger.name_to_value["aux/recall_loss"] > 0


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
def test_zero_coefficients_train_bit_for_bit_as_without(algo):
    # Built and trained one after the other: SB3 models draw from the same global generators.
    plain = make_model(algo, "NTMPolicy", short_episode_env)
    plain.learn(96)
    zero = make_model(algo, "NTMPolicy", short_episode_env, recall_coef=0.0, prediction_coef=0.0)
    zero.learn(96)
    assert zero.policy.auxiliary is None
    assert plain.policy.state_dict().keys() == zero.policy.state_dict().keys()
    for name, value in plain.policy.state_dict().items():
        assert th.equal(value, zero.policy.state_dict()[name]), name


def test_auxiliary_losses_are_logged_saved_and_loaded(tmp_path):
    model = make_model(MemoryPPO, "DNCPolicy", short_episode_env, recall_coef=0.5, prediction_coef=0.25, recall_horizon=3)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(64)
    assert {"aux/recall_loss", "aux/prediction_loss"} <= set(model.logger.name_to_value)
    model.logger.close()
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"aux/recall_loss", "aux/prediction_loss"} <= set(header)
    model.save(tmp_path / "model.zip")
    loaded = MemoryPPO.load(tmp_path / "model.zip", env=model.get_env())
    assert (loaded.recall_coef, loaded.prediction_coef, loaded.recall_horizon) == (0.5, 0.25, 3)
    assert loaded.policy.auxiliary is not None and loaded.policy.recall_horizon == 3
    for name, value in model.policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[name]), name
    loaded.learn(32)  # and trains on


def test_auxiliary_losses_fall_on_a_small_task():
    """Random symbols: recalling one from 1-2 steps back needs the memory; the next symbol is mostly noise."""
    th.manual_seed(0)
    env = make_vec_env("sb3_memory/RepeatAfterDelay-v0", n_envs=4, seed=0, env_kwargs=dict(delay=2, num_symbols=3))
    model = MemoryPPO(
        "NTMPolicy", env, n_steps=32, batch_size=64, n_epochs=4, learning_rate=3e-3, seed=0,
        policy_kwargs=dict(memory_units=8, memory_unit_size=8, controller_dim=32),
        recall_coef=1.0, prediction_coef=1.0, recall_horizon=2,
    )  # fmt: skip
    recall, prediction = [], []
    for _ in range(16):
        model.learn(512, reset_num_timesteps=False)
        recall.append(model.logger.name_to_value["aux/recall_loss"])
        prediction.append(model.logger.name_to_value["aux/prediction_loss"])
    assert np.mean(recall[-3:]) < 0.75 * np.mean(recall[:2]), recall
    assert np.mean(prediction[-3:]) < 0.92 * np.mean(prediction[:2]), prediction


def test_bad_auxiliary_arguments_are_named():
    with pytest.raises(ValueError, match="recall_coef must be a finite number"):
        make_model(MemoryPPO, "NTMPolicy", short_episode_env, recall_coef=-1.0)
    with pytest.raises(ValueError, match="recall_horizon must be an integer >= 1"):
        make_model(MemoryA2C, "NTMPolicy", short_episode_env, recall_coef=1.0, recall_horizon=0)
    with pytest.raises(ValueError, match="unknown auxiliary task"):
        aux.AuxiliaryHeads(4, 3, spaces.Discrete(2), ("reconstruct",), 2)

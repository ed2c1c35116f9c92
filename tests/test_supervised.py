"""Tests of the supervised bound (sb3_memory.experiments.supervised)."""

import numpy as np
import pytest
import torch

from sb3_memory.envs import CopyEnv
from sb3_memory.experiments.supervised import (
    accuracy,
    collect_episodes,
    episodes_to,
    make_model,
    make_task,
    table,
    train,
)


def test_collected_labels_are_the_shown_symbols() -> None:
    # Copy: the labels of the recall steps are the symbols of the presentation steps, read back from
    # the one-hot observations (independent of the env's own labels).
    env = CopyEnv(length=4, num_symbols=5)
    observations, labels, scored = collect_episodes(env, 6, np.random.default_rng(0))
    assert observations.shape == (8, 6, 6)
    assert scored[:4].sum() == 0 and bool(scored[4:].all())
    shown = observations[:4, :, :5].argmax(dim=-1)
    assert torch.equal(labels[4:], shown)
    # The recall flag is up exactly on the scored steps.
    assert torch.equal(observations[:, :, 5].bool(), scored)


def test_accuracy_counts_scored_steps_only() -> None:
    labels = torch.tensor([[0, 1], [2, 2]])
    scored = torch.tensor([[False, True], [True, True]])
    logits = torch.zeros(2, 2, 3)
    logits[0, 0, 1] = logits[0, 1, 1] = logits[1, 0, 0] = logits[1, 1, 2] = 1.0  # right, right at (0,1) and (1,1)
    # The wrong answer at (0, 0) is not scored; of the three scored steps two are right.
    assert accuracy(logits, labels, scored) == pytest.approx(2 / 3)


def test_episodes_to_and_table() -> None:
    curve = [(1000, 0.5), (2000, 0.95), (3000, 0.85)]
    assert episodes_to(curve, 0.9) == 2000
    assert episodes_to(curve, 0.99) is None
    text = table({"ntm": [curve, [(1000, 0.7), (2000, 0.75), (3000, 0.95)]]})
    assert "| ntm | 0.60 | 0.85 | 0.90 | 2k, 3k |" in text


def test_training_learns_a_short_delay() -> None:
    # Repeat the symbol of 2 steps ago: chance is 1/4; 1,600 labelled episodes take the LSTM far above it.
    env_kwargs = {"delay": 2, "num_symbols": 4}
    curve = train("lstm", "sb3_memory/RepeatAfterDelay-v0", env_kwargs, episodes=1_600, eval_every=800, eval_episodes=64)
    assert [seen for seen, _ in curve] == [800, 1600]
    assert curve[-1][1] > 0.9


def test_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match="not one of the memory tasks"):
        make_task("CartPole-v1")
    with pytest.raises(ValueError, match="core must be one of"):
        make_model("gru", 3, 2)

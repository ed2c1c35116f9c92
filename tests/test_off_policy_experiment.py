"""The off-policy comparison's table (scripts/off_policy.py), on synthetic results."""

import argparse

import numpy as np
import pytest

from sb3_memory.experiments.compare import welch_p_value
from sb3_memory.experiments.off_policy import (
    TASKS,
    evaluation_env,
    ppo_lstm_entry,
    recurrent_ppo,
    recurrent_ppo_env,
    run_one,
    table,
)


def test_table_scores_solved_counts_and_welch_p_against_the_plain_agent():
    args = argparse.Namespace(task="tmaze", steps=1000, corridor_length=5)
    results = [dict(agent="MemoryDQN-NTM", seed=s, score=v, wall_seconds=10.0) for s, v in enumerate([1.0, 0.96, 0.9])]
    results += [dict(agent="DQN", seed=s, score=v, wall_seconds=5.0) for s, v in enumerate([0.5, 0.6, 0.55])]
    text = table(results, args)
    p = welch_p_value([1.0, 0.96, 0.9], [0.5, 0.6, 0.55])
    row = next(line for line in text.splitlines() if line.startswith("| MemoryDQN-NTM"))
    assert (
        f"| +0.40 (p={p:.3f}) | 2/3 | 1000 | 10 | - | 100 |" in row
    )  # no CPU times recorded  # 0.9 is below the 0.95 that counts as solved
    assert "| DQN | 3 | 0.55 ±" in text and "| 1.00, 0.96, 0.90 |" in row


def test_every_task_compares_memory_agents_with_the_same_algorithm_without_memory():
    for name, task in TASKS.items():
        plain = [agent for agent, (policy, _) in task["agents"].items() if policy is None]
        assert task["plain"].__name__ in plain, name
        assert any(policy is not None for policy, _ in task["agents"].values()), name
    with pytest.raises(KeyError):
        TASKS["atari"]


@pytest.mark.parametrize("task_name", [name for name, task in TASKS.items() if "RecurrentPPO" in task["agents"]])
def test_recurrent_ppo_reference_takes_the_tasks_zoo_entry(task_name):
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_memory.zoo import _evaluate_policy_kwargs

    task = TASKS[task_name]
    entry = ppo_lstm_entry(task["env"])
    env = recurrent_ppo_env(task, seed=0, env_kwargs=task["env_kwargs"])
    model = recurrent_ppo(task["env"], env, seed=0)
    defaults = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", device="cpu")  # for the settings an entry leaves out
    for key in ("n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "use_sde"):
        assert getattr(model, key) == entry.get(key, getattr(defaults, key)), key
    assert env.num_envs == entry["n_envs"] and isinstance(env, VecNormalize) == entry.get("normalize", False)
    policy_kwargs = _evaluate_policy_kwargs(entry["policy_kwargs"])
    assert model.policy.lstm_actor.hidden_size == policy_kwargs["lstm_hidden_size"]
    separate_critic = policy_kwargs.get("enable_critic_lstm", True) and not policy_kwargs.get("shared_lstm", False)
    assert (model.policy.lstm_critic is not None) == separate_critic


def test_a_normalized_reference_is_scored_with_its_frozen_statistics_and_raw_returns():
    task = TASKS["pendulum"]
    train_env = recurrent_ppo_env(task, seed=0, env_kwargs={})
    train_env.reset()
    for _ in range(5):
        train_env.step(np.zeros((train_env.num_envs, 1), dtype=np.float32))
    env = evaluation_env(task, seed=1, env_kwargs={}, frames=1, train_env=train_env)
    assert not env.training and not env.norm_reward
    np.testing.assert_array_equal(env.obs_rms.mean, train_env.obs_rms.mean)
    assert env.obs_rms is not train_env.obs_rms  # a copy: evaluating cannot move the training statistics


def test_equal_time_table_reports_each_runs_steps():
    """At equal time each run trained as many steps as its time allowed: the table gives their median and rate."""
    args = argparse.Namespace(task="tmaze", steps=1000, corridor_length=5, wall_clock=60.0, clock="cpu")
    results = [
        dict(agent="DQN", seed=s, score=0.5, steps=n, wall_seconds=w, cpu_seconds=w - 1)
        for s, (n, w) in enumerate([(6000, 60.0), (3000, 60.0), (4000, 40.0)])
    ]
    text = table(results, args)
    assert "60 s of each run's own cpu time (equal time)" in text
    row = next(line for line in text.splitlines() if line.startswith("| DQN"))
    assert row.endswith("| 4000 | 60 | 59 | 100 |")  # medians: steps 4000, wall 60 s, CPU 59 s, rate of 100, 50, 100


@pytest.mark.slow  # 45 s of RecurrentPPO training
def test_a_recurrent_ppo_run_trains_on_its_entrys_envs_and_records_its_score(tmp_path):
    """One rollout of RecurrentPPO on PendulumNoVel: the entry's 4 envs x 1024 steps, scored and saved."""
    args = argparse.Namespace(task="pendulum", steps=1, wall_clock=None, clock="cpu", out=tmp_path)
    result = run_one("RecurrentPPO", 0, args)
    entry = ppo_lstm_entry("PendulumNoVel-v1")
    assert result["steps"] == entry["n_envs"] * entry["n_steps"]
    # One rollout of training: the pendulum hangs, a raw return of -2000 to -300 (rewards normalized
    # by the return's scale, gamma 0.9, would sum to tens).
    assert -2000 < result["score"] < -300
    assert run_one("RecurrentPPO", 0, args) == result  # the saved run is reused

"""The off-policy comparison's table (scripts/off_policy.py), on synthetic results."""

import argparse

import pytest

from sb3_memory.experiments.compare import welch_p_value
from sb3_memory.experiments.off_policy import TASKS, recurrent_ppo, table


def test_table_scores_solved_counts_and_welch_p_against_the_plain_agent():
    args = argparse.Namespace(task="tmaze", steps=1000, corridor_length=5)
    results = [dict(agent="MemoryDQN-NTM", seed=s, score=v, wall_seconds=10.0) for s, v in enumerate([1.0, 0.96, 0.9])]
    results += [dict(agent="DQN", seed=s, score=v, wall_seconds=5.0) for s, v in enumerate([0.5, 0.6, 0.55])]
    text = table(results, args)
    p = welch_p_value([1.0, 0.96, 0.9], [0.5, 0.6, 0.55])
    row = next(line for line in text.splitlines() if line.startswith("| MemoryDQN-NTM"))
    assert f"| +0.40 (p={p:.3f}) | 2/3 | 1000 | 10 | 100 |" in row  # 0.9 is below the 0.95 that counts as solved
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
    import yaml
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_memory.zoo_configs import config_path

    env_id = TASKS[task_name]["env"]
    entry = yaml.safe_load(config_path("ppo_lstm").read_text())[env_id]
    model = recurrent_ppo(env_id, make_vec_env(env_id, n_envs=2, seed=0), seed=0)
    assert (model.n_steps, model.batch_size, model.n_epochs) == (entry["n_steps"], entry["batch_size"], entry["n_epochs"])
    assert (model.gamma, model.gae_lambda, model.ent_coef) == (entry["gamma"], entry["gae_lambda"], entry["ent_coef"])
    assert model.policy.lstm_actor.hidden_size == 64 and model.policy.lstm_critic is None  # shared_lstm=True


def test_equal_time_table_reports_each_runs_steps():
    """At equal time each run trained as many steps as its time allowed: the table gives their median and rate."""
    args = argparse.Namespace(task="tmaze", steps=1000, corridor_length=5, wall_clock=60.0, clock="cpu")
    results = [
        dict(agent="DQN", seed=s, score=0.5, steps=n, wall_seconds=w)
        for s, (n, w) in enumerate([(6000, 60.0), (3000, 60.0), (4000, 40.0)])
    ]
    text = table(results, args)
    assert "60 s of each run's own cpu time (equal time)" in text
    row = next(line for line in text.splitlines() if line.startswith("| DQN"))
    assert row.endswith("| 4000 | 60 | 100 |")  # medians: steps 4000, wall 60 s, rate of 100, 50 and 100 steps/s

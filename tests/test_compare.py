"""The comparison script's statistics and report, on synthetic runs."""

import math

import pytest

from sb3_memory.experiments.compare import ROOT, derived_config, steps_to_threshold, t_interval, welch_p_value, write_report


@pytest.mark.parametrize("config", ["memory_ppo.yml", "memory_a2c.yml"])
def test_derived_config_only_updates_policy_kwargs(config, tmp_path):
    import yaml
    from torch import nn

    original_path = ROOT / "zoo_configs" / config
    overrides = {"compile_step": True, "critic_memory": "detached"}
    derived_path = derived_config(original_path, tmp_path / "variant.yml", overrides)
    assert derived_path == tmp_path / "variant.yml"
    original = yaml.load(original_path.read_text(), Loader=yaml.UnsafeLoader)
    derived = yaml.load(derived_path.read_text(), Loader=yaml.UnsafeLoader)
    assert list(derived) == list(original)
    for env_id, entry in original.items():
        derived_entry = dict(derived[env_id])
        derived_kwargs = eval(derived_entry.pop("policy_kwargs"), {"nn": nn})
        original_kwargs = eval(entry.pop("policy_kwargs"), {"nn": nn})
        assert original_kwargs["critic_memory"] != "detached"
        assert derived_kwargs == {**original_kwargs, **overrides}
        assert derived_entry == dict(entry)


def test_derived_config_with_mapping_policy_kwargs(tmp_path):
    import yaml

    config = tmp_path / "config.yml"
    config.write_text("CartPole-v1:\n  n_envs: 2\n  policy_kwargs:\n    memory_units: 8\nPendulum-v1:\n  n_envs: 4\n")
    derived = yaml.safe_load(derived_config(config, tmp_path / "out" / "variant.yml", {"compile_step": True}).read_text())
    assert derived == {
        "CartPole-v1": {"n_envs": 2, "policy_kwargs": {"memory_units": 8, "compile_step": True}},
        "Pendulum-v1": {"n_envs": 4, "policy_kwargs": {"compile_step": True}},
    }


def test_t_interval_matches_hand_computation():
    mean, half = t_interval([1.0, 2.0, 3.0])
    # sample std 1, t(0.975, df=2) = 4.3027
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 / 3**0.5, rel=1e-5)


def test_welch_p_value_matches_hand_computation():
    # means 2 and 5, variances 1 and 1, n 3 and 3: t = 3 / sqrt(2/3), Welch df = 4, where the
    # Student-t CDF has the closed form F(t) = 1/2 + 3/8 u (1 - u^2 / 12), u = t / sqrt(1 + t^2 / 4).
    t = 3 / math.sqrt(2 / 3)
    u = t / math.sqrt(1 + t * t / 4)
    two_sided = 2 * (1 - (0.5 + 0.375 * u * (1 - u * u / 12)))
    assert welch_p_value([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(two_sided, rel=1e-9)
    assert welch_p_value([6.0, 4.0, 5.0], [1.0, 2.0, 3.0]) == pytest.approx(two_sided, rel=1e-9)
    assert math.isnan(welch_p_value([1.0], [4.0, 5.0]))  # one seed: no variance estimate
    assert math.isnan(welch_p_value([1.0, 1.0], [1.0, 1.0]))  # no spread on either side


def test_steps_to_threshold_is_first_crossing():
    result = {"timesteps": [10, 20, 30, 40], "mean_returns": [1.0, 5.0, 3.0, 6.0]}
    assert steps_to_threshold(result, 5.0) == 20
    assert steps_to_threshold(result, 7.0) is None
    assert steps_to_threshold(result, None) is None


def test_report_rows(tmp_path):
    def run(algo, seed, returns):
        return dict(
            algo=algo,
            env="CartPoleNoVel-v1",
            seed=seed,
            timesteps=[100, 200],
            mean_returns=returns,
            wall_seconds=10.0 * (seed + 1),
            steps_per_second=20.0,
        )

    results = [run("ppo_lstm", 0, [100.0, 460.0]), run("ppo_lstm", 1, [300.0, 480.0]), run("ppo", 0, [10.0, 20.0])]
    results.append({**run("memory_ppo-ntm", 0, [50.0, 70.0]), "compiled": True})
    write_report(results, tmp_path, "python scripts/compare.py --test")
    table = (tmp_path / "comparison.md").read_text()
    assert "| CartPoleNoVel-v1 | ppo_lstm | 2 | 200 | 470.00 ± 127.06 | - | 450.0 | 200 | 15 | 20 |" in table
    assert "| CartPoleNoVel-v1 | ppo | 1 | 200 | 20.00 ± nan | -450.00 (p=nan) | 450.0 | - (0/1) | 10 | 20 |" in table
    assert (
        "| CartPoleNoVel-v1 | memory_ppo-ntm | 1 | 200 | 70.00 ± nan | -400.00 (p=nan) | 450.0 | - (0/1) | 10 | 20+ |" in table
    )
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"

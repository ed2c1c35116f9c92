"""The comparison script's statistics and report, on synthetic runs."""

import json
import math

import pytest

from sb3_memory.experiments.compare import (
    ALGOS,
    CONTROLS,
    RunsFailedError,
    derived_config,
    run_jobs,
    steps_to_threshold,
    t_interval,
    welch_p_value,
    write_report,
)
from sb3_memory.zoo_configs import config_path


@pytest.mark.parametrize("config", ["memory_ppo.yml", "memory_a2c.yml"])
def test_derived_config_only_updates_policy_kwargs(config, tmp_path):
    import yaml
    from torch import nn

    original_path = config_path(config)
    overrides = {"memory_init": "random", "critic_memory": "shared"}
    derived_path = derived_config(original_path, tmp_path / "variant.yml", overrides)
    assert derived_path == tmp_path / "variant.yml"
    original = yaml.load(original_path.read_text(), Loader=yaml.UnsafeLoader)
    derived = yaml.load(derived_path.read_text(), Loader=yaml.UnsafeLoader)
    assert list(derived) == list(original)
    for env_id, entry in original.items():
        derived_entry = dict(derived[env_id])
        derived_kwargs = eval(derived_entry.pop("policy_kwargs"), {"nn": nn})
        original_kwargs = eval(entry.pop("policy_kwargs"), {"nn": nn})
        assert original_kwargs["critic_memory"] != "shared" and "memory_init" not in original_kwargs
        assert derived_kwargs == {**original_kwargs, **overrides}
        assert derived_entry == dict(entry)


def test_derived_config_removes_keys_for_the_lstm_control(tmp_path):
    import yaml
    from torch import nn

    from sb3_memory.experiments.compare import ALGOS

    _, config, params, overrides = ALGOS["memory_ppo-lstm"]
    assert params == ["policy:'LSTMPolicy'"]
    original = yaml.load((config_path(config)).read_text(), Loader=yaml.UnsafeLoader)
    derived = yaml.load(
        derived_config(config_path(config), tmp_path / "lstm.yml", overrides).read_text(), Loader=yaml.UnsafeLoader
    )
    for env_id, entry in original.items():
        original_kwargs = eval(entry["policy_kwargs"], {"nn": nn})
        derived_kwargs = eval(derived[env_id]["policy_kwargs"], {"nn": nn})
        assert "memory_units" in original_kwargs
        assert derived_kwargs == {k: v for k, v in original_kwargs.items() if k not in overrides}


def test_derived_config_with_mapping_policy_kwargs(tmp_path):
    import yaml

    config = tmp_path / "config.yml"
    config.write_text("CartPole-v1:\n  n_envs: 2\n  policy_kwargs:\n    memory_units: 8\nPendulum-v1:\n  n_envs: 4\n")
    overrides = {"controller_dim": 32, "memory_units": None}
    derived = yaml.safe_load(derived_config(config, tmp_path / "out" / "variant.yml", overrides).read_text())
    assert derived == {
        "CartPole-v1": {"n_envs": 2, "policy_kwargs": {"controller_dim": 32}},
        "Pendulum-v1": {"n_envs": 4, "policy_kwargs": {"controller_dim": 32}},
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


def test_thresholds_follow_the_difficulty(tmp_path):
    from sb3_memory.experiments.compare import run_dir, task_name, threshold_for

    assert threshold_for("sb3_memory/Copy-v0") == pytest.approx(9.0)  # length 10
    assert threshold_for("sb3_memory/Copy-v0", ["length:5"]) == pytest.approx(4.5)
    assert threshold_for("sb3_memory/RepeatAfterDelay-v0", ["delay:3", "episode_length:10"]) == pytest.approx(0.9 * 7)
    assert threshold_for("sb3_memory/PassiveTMaze-v0", ["corridor_length:20"]) == pytest.approx(0.9)
    assert threshold_for("CartPoleNoVel-v1") == 450.0 and threshold_for("Pendulum-v1") is None
    assert task_name("sb3_memory/Copy-v0", ["length:5", "num_symbols:4"]) == "sb3_memory/Copy-v0 length=5 num_symbols=4"
    easy, default = (
        run_dir(tmp_path, "ppo", "sb3_memory/Copy-v0", 0, ["length:5"]),
        run_dir(tmp_path, "ppo", "sb3_memory/Copy-v0", 0),
    )
    assert easy != default and easy.parent.name == "sb3_memory__Copy-v0-length=5"


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
    results += [run("memory_ppo-ntm", 0, [50.0, 70.0]), run("memory_ppo-ntm", 1, [50.0, 90.0])]
    results += [run("memory_ppo-lstm", 0, [50.0, 30.0]), run("memory_ppo-lstm", 1, [50.0, 50.0])]
    write_report(results, tmp_path, "python scripts/compare.py --test")
    table = (tmp_path / "comparison.md").read_text()
    assert "| CartPoleNoVel-v1 | ppo_lstm | 2 | 200 | 470.00 ± 127.06 | - | - | 450 | 200 | 15 | - | 20 |" in table
    assert "| CartPoleNoVel-v1 | ppo | 1 | 200 | 20.00 ± nan | - | -450.00 (p=nan) | 450 | - (0/1) | 10 | - | 20 |" in table
    # Welch with equal variances and two seeds each has df = 2, where p = 1 - t / sqrt(2 + t^2),
    # t = difference / sqrt(200).
    p_control, p_baseline = (1 - t / (2 + t * t) ** 0.5 for t in (40 / 200**0.5, 390 / 200**0.5))
    assert (
        f"| memory_ppo-ntm | 2 | 200 | 80.00 ± 127.06 | +40.00 (p={p_control:.3f}) | -390.00 (p={p_baseline:.3f}) |" in table
    )
    assert "| memory_ppo-lstm | 2 | 200 | 40.00 ± 127.06 | - | -430.00 (p=" in table
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # 45 s starting Ray; the failed-run test covers a 2-worker Ray in the fast suite
def test_grid_runs_on_a_two_worker_ray_and_resumes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    from sb3_memory.experiments import compare

    argv = [
        "compare.py", "--envs", "sb3_memory/PassiveTMaze-v0", "--env-kwargs", "corridor_length:3",
        "--algos", "ppo", "memory_ppo-ntm", "--seeds", "0", "--budget", "512", "--eval-freq", "256",
        "--eval-episodes", "2", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--workers", "2",
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    compare.main()
    printed = capsys.readouterr().out
    results = sorted((tmp_path / "runs").rglob("result.json"))
    assert len(results) == 2
    assert printed.count("ETA") == 2 and "[2/2 done, 0 running, 0 waiting" in printed
    assert (tmp_path / "out" / "comparison.md").exists() and (tmp_path / "out" / "comparison.png").exists()
    # Same folder again: every run is read back, none is trained again.
    stamps = [path.stat().st_mtime_ns for path in results]
    compare.main()
    assert "2 of 2 runs already finished" in capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in results] == stamps
    # Another budget on the same folder would read back runs of the wrong length: refused, with the fix.
    monkeypatch.setattr("sys.argv", [*argv[: argv.index("--budget") + 1], "1024", *argv[argv.index("--budget") + 2 :]])
    with pytest.raises(SystemExit, match=r"2 finished run.*--budget 512, not --budget 1024.*its own --runs folder"):
        compare.main()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_run_does_not_stop_the_others_and_is_named_at_the_end(workers, capsys):
    """``json.loads`` as the run: a JSON text gives a result, other text raises (as a broken run would)."""
    if workers > 1:
        pytest.importorskip("ray")
    result = dict(algo="ppo", env="E", seed=0, mean_returns=[0.5], wall_seconds=1.0)
    jobs = [("broken",), (json.dumps(result),), (json.dumps({**result, "seed": 1}),)]
    with pytest.raises(
        RunsFailedError, match=r"1 of 3 runs failed \(the other 2 finished.*\n\('broken',\): .*JSONDecodeError"
    ):
        run_jobs(json.loads, jobs, workers=workers)
    printed = capsys.readouterr()
    assert printed.out.count("ETA") == 2 and "ppo on E, seed 1" in printed.out
    assert "run ('broken',) failed" in printed.err


@pytest.mark.parametrize("name", [name for name, (algo, *_) in ALGOS.items() if algo.startswith("memory_")])
def test_every_variant_builds_the_model_it_names(tmp_path, name):
    """Each variant's -params and policy_kwargs overrides, applied to a real config entry, give a model
    with those settings (an LSTMPolicy given memory sizes, or a misspelt option, would fail here)."""
    import ast

    import yaml
    from stable_baselines3.common.env_util import make_vec_env
    from torch import nn

    from sb3_memory import MemoryA2C, MemoryPPO

    algo, config, params, overrides = ALGOS[name]
    env_id = "sb3_memory/RepeatAfterDelay-v0"
    derived = derived_config(config_path(config), tmp_path / "variant.yml", overrides)
    entry = yaml.load(derived.read_text(), Loader=yaml.UnsafeLoader)[env_id]
    policy_kwargs = eval(entry["policy_kwargs"], {"nn": nn})
    hyperparams = {key: ast.literal_eval(value) for key, value in (param.split(":", 1) for param in params)}
    policy = hyperparams.pop("policy")
    env = make_vec_env(env_id, n_envs=2, env_kwargs=entry.get("env_kwargs"))
    if algo == "memory_ppo":
        model = MemoryPPO(policy, env, n_steps=8, batch_size=16, policy_kwargs=policy_kwargs, **hyperparams)
    else:
        model = MemoryA2C(policy, env, n_steps=8, policy_kwargs=policy_kwargs, **hyperparams)
    core = model.policy.core
    assert type(core).__name__ == {"NTMPolicy": "NTMCell", "DNCPolicy": "DNCCell", "LSTMPolicy": "LSTMCore"}[policy]
    for key, value in hyperparams.items():
        assert getattr(model, key) == value
    for key, value in overrides.items():
        if key == "critic_memory":
            assert model.policy.critic_memory == value
        elif value is not None and key in ("memory_units", "sparse_top_k"):
            assert getattr(core, key) == value
        elif value is not None:
            assert core.options[key] == value
    if name in CONTROLS:
        control_params = ALGOS[CONTROLS[name]][2]
        assert control_params[1:] == params[1:], "a control must share its agent's hyperparameters"


def test_length_settings_scale_the_longest_trained_length():
    from sb3_memory.experiments.compare import length_settings

    copy = length_settings("sb3_memory/BinaryCopy-v0", {"max_length": 5})
    assert copy == {
        "trained": {"max_length": 5},
        "2x": {"max_length": 10, "min_length": 10},
        "4x": {"max_length": 20, "min_length": 20},
    }
    # The registered default difficulty counts when env_kwargs leave it out.
    assert length_settings("sb3_memory/BinaryAssociativeRecall-v0", {})["4x"] == {"min_items": 24, "max_items": 24}
    assert length_settings("sb3_memory/PassiveTMazeJunction-v0", {})["2x"] == {"corridor_length": 100}
    assert length_settings("CartPoleNoVel-v1", {}) == {}


def test_episode_scores_read_bit_accuracy():
    import numpy as np
    from stable_baselines3 import PPO

    from sb3_memory.experiments.compare import episode_scores

    class AllOnes(PPO):
        def predict(self, observation, state=None, episode_start=None, deterministic=False):
            return np.ones((len(observation), 8), dtype=np.int8), state

    model = AllOnes("MlpPolicy", "sb3_memory/BinaryCopy-v0", n_steps=16, batch_size=16)
    scores = episode_scores(model, "sb3_memory/BinaryCopy-v0", {"min_length": 20, "max_length": 20}, 30)
    # All-ones answers get each random bit right with probability 1/2, over 160 bits an episode.
    assert len(scores) == 30 and all(0.3 < s < 0.7 for s in scores) and abs(np.mean(scores) - 0.5) < 0.03


def test_derived_config_appends_callbacks(tmp_path):
    import yaml

    config = tmp_path / "config.yml"
    config.write_text("A-v0:\n  n_envs: 2\n  callback: x.One\nB-v0:\n  n_envs: 4\n")
    extra = [{"sb3_memory.common.callbacks.StopTrainingOnWallClock": {"seconds": 5}}]
    derived = yaml.safe_load(derived_config(config, tmp_path / "variant.yml", {}, extra).read_text())
    assert derived == {"A-v0": {"n_envs": 2, "callback": ["x.One", *extra]}, "B-v0": {"n_envs": 4, "callback": extra}}


def test_stop_training_on_wall_clock():
    import time

    from sb3_memory.common.callbacks import StopTrainingOnWallClock

    callback = StopTrainingOnWallClock(seconds=0.2)
    callback._on_training_start()
    assert callback._on_step()
    time.sleep(0.25)
    assert not callback._on_step()
    with pytest.raises(ValueError, match="seconds"):
        StopTrainingOnWallClock(seconds=-1.0)
    with pytest.raises(ValueError, match="clock must be one of"):
        StopTrainingOnWallClock(seconds=1.0, clock="gpu")


def test_stop_training_on_cpu_clock_counts_only_this_process_work():
    import time

    from sb3_memory.common.callbacks import StopTrainingOnWallClock

    callback = StopTrainingOnWallClock(seconds=0.2, clock="cpu")
    callback._on_training_start()
    time.sleep(0.3)  # waiting (for a shared core, say) uses no CPU time
    assert callback._on_step()
    start = time.process_time()
    while time.process_time() - start < 0.25:
        pass
    assert not callback._on_step()


def test_report_scores_generalisation_and_equal_time(tmp_path):
    def run(algo, seed, score, wall_clock=None):
        return dict(
            algo=algo, env="sb3_memory/BinaryCopy-v0", seed=seed, timesteps=[100, 200], mean_returns=[1.0, 10 * score],
            wall_seconds=100.0, steps_per_second=2.0, wall_clock=wall_clock,
            scores={"trained": score, "2x": score - 0.1, "4x": score - 0.2},
        )  # fmt: skip

    results = [run("memory_ppo-dnc", 0, 1.0), run("memory_ppo-dnc", 1, 0.98)]
    results += [run("memory_ppo-lstm", 0, 0.6), run("memory_ppo-lstm", 1, 0.62)]
    results += [run("memory_ppo-lstm", 0, 0.64, 100.0), run("memory_ppo-lstm", 1, 0.66, 100.0)]
    write_report(results, tmp_path, "python scripts/compare.py --test")
    table = (tmp_path / "comparison.md").read_text()
    # Equal variances 2e-4, two seeds each: t = difference / sqrt(2e-4), p = 1 - t / sqrt(2 + t^2).
    p_steps, p_time = (1 - t / (2 + t * t) ** 0.5 for t in (0.38 / 2e-4**0.5, 0.34 / 2e-4**0.5))
    dnc_row = next(line for line in table.splitlines() if "| memory_ppo-dnc | 2 | 200 | 0.990 ±" in line)
    assert f"| +0.38 (p={p_steps:.3f}) |" in dnc_row and "| 0.890 | 0.790 |" in dnc_row
    assert dnc_row.endswith(f"memory_ppo-lstm@100s: +0.34 (p={p_time:.3f}) |")
    assert "| memory_ppo-lstm@100s | 2 | 200 | 0.650 ±" in table


def test_report_matches_cpu_clock_runs_by_cpu_seconds(tmp_path):
    """Runs timed on the CPU clock are matched with the memory agent's CPU time, not its wall time."""

    def run(algo, seed, score, wall_clock=None, cpu_seconds=100.0):
        return dict(
            algo=algo, env="sb3_memory/BinaryCopy-v0", seed=seed, timesteps=[100, 200], mean_returns=[1.0, 10 * score],
            wall_seconds=300.0, cpu_seconds=cpu_seconds, steps_per_second=2.0, wall_clock=wall_clock,
            clock="cpu", scores={"trained": score, "2x": score, "4x": score},
        )  # fmt: skip

    results = [run("memory_ppo-dnc", seed, 1.0 - 0.01 * seed) for seed in (0, 1)]
    # Wall time 300 s would pick the 300 s runs; the DNC's CPU time (100 s) must pick the 100 s ones.
    results += [run("memory_ppo-lstm", seed, 0.6 + 0.01 * seed, 100.0) for seed in (0, 1)]
    results += [run("memory_ppo-lstm", seed, 0.9 + 0.01 * seed, 300.0, cpu_seconds=300.0) for seed in (0, 1)]
    write_report(results, tmp_path, "python scripts/compare.py --test")
    table = (tmp_path / "comparison.md").read_text()
    dnc_row = next(line for line in table.splitlines() if "| memory_ppo-dnc | 2 | 200 | 0.995 ±" in line)
    assert "memory_ppo-lstm@100s-cpu: +0.39" in dnc_row
    assert "| memory_ppo-lstm@300s-cpu | 2 |" in table
    assert "| 300 | 100 | 2 |" in table  # wall and CPU seconds side by side


def test_report_of_wall_clock_runs_alone(tmp_path):
    """A runs folder holding only equal-time runs (no step budget) still gets its table and figure."""
    results = [
        dict(
            algo="memory_ppo-lstm",
            env="sb3_memory/BinaryCopy-v0",
            seed=seed,
            timesteps=[100, 200],
            mean_returns=[1.0, 5.0 + seed],
            wall_seconds=100.0,
            steps_per_second=2.0,
            wall_clock=100.0,
            scores={"trained": 0.6 + 0.1 * seed, "2x": 0.5, "4x": 0.5},
        )
        for seed in (0, 1)
    ]
    write_report(results, tmp_path, "python scripts/compare.py --test")
    table = (tmp_path / "comparison.md").read_text()
    assert "| memory_ppo-lstm@100s | 2 | 200 | 0.650 ±" in table
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_report_keeps_its_runs_and_rebuilds_from_them(tmp_path):
    """runs.jsonl holds every counted run; a report made from it alone is the same report."""
    from sb3_memory.experiments.compare import RESULTS_FILE, merge_results, read_results, run_key

    def run(algo, seed, final, wall_clock=None):
        return dict(
            algo=algo, env="sb3_memory/BinaryCopy-v0", env_kwargs=[], seed=seed, timesteps=[100, 200],
            mean_returns=[1.0, final], wall_seconds=100.0 + seed, steps_per_second=2.0, wall_clock=wall_clock,
            scores={"trained": final / 10, "2x": 0.5, "4x": 0.5},
        )  # fmt: skip

    results = [run("memory_ppo-dnc", s, 9.0 + s) for s in (0, 1)] + [run("memory_ppo-lstm", s, 6.0 + s) for s in (0, 1)]
    write_report(results, tmp_path / "first", "first")
    kept = read_results([tmp_path / "first" / RESULTS_FILE])
    assert sorted(kept, key=run_key) == sorted(results, key=run_key)
    write_report(kept, tmp_path / "again", "first")
    assert (tmp_path / "again" / "comparison.md").read_text() == (tmp_path / "first" / "comparison.md").read_text()
    # A new seed joins the kept ones; a rerun of a kept run replaces it instead of counting twice.
    merged = merge_results(kept, [run("memory_ppo-lstm", 2, 8.0), run("memory_ppo-lstm", 1, 5.0)])
    assert sorted((r["algo"], r["seed"], r["mean_returns"][-1]) for r in merged) == [
        ("memory_ppo-dnc", 0, 9.0), ("memory_ppo-dnc", 1, 10.0),
        ("memory_ppo-lstm", 0, 6.0), ("memory_ppo-lstm", 1, 5.0), ("memory_ppo-lstm", 2, 8.0),
    ]  # fmt: skip
    # The same algorithm and seed at equal wall clock is another run.
    assert len(merge_results(kept, [run("memory_ppo-lstm", 0, 6.5, wall_clock=100.0)])) == len(kept) + 1
    with pytest.raises(FileNotFoundError, match=RESULTS_FILE):
        read_results([tmp_path / "missing.jsonl"])


def test_long_lengths_scores_every_finished_seed_at_each_length(tmp_path):
    """scripts/long_lengths.py: a finished run's final model scored at lengths it never saw, seed by seed."""
    import numpy as np
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_memory import MemoryPPO
    from sb3_memory.experiments.compare import episode_scores
    from sb3_memory.experiments.long_lengths import score_lengths

    env = make_vec_env("sb3_memory/BinaryCopy-v0", n_envs=2, env_kwargs=dict(max_length=3))
    models = {}
    for seed in (1, 0):
        model = MemoryPPO("DNCPolicy", env, n_steps=16, batch_size=32, seed=seed, policy_kwargs=dict(memory_units=8))
        folder = tmp_path / "memory_ppo-dnc" / "sb3_memory__BinaryCopy-v0" / f"seed_{seed}"
        model.save(folder / "zoo" / "memory_ppo" / "run_1" / "sb3_memory-BinaryCopy-v0.zip")
        (folder / "result.json").write_text("{}")
        models[seed] = model
    (tmp_path / "memory_ppo-dnc" / "sb3_memory__BinaryCopy-v0" / "seed_2").mkdir()  # unfinished: skipped
    scores = score_lengths(tmp_path, "memory_ppo-dnc", [4, 9], episodes=2)
    for length in (4, 9):
        expected = [
            np.mean(episode_scores(models[s], "sb3_memory/BinaryCopy-v0", dict(min_length=length, max_length=length), 2))
            for s in (0, 1)
        ]
        assert scores[length] == pytest.approx(expected)

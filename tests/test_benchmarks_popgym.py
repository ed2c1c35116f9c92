"""The POPGym benchmark command (python -m sb3_memory.benchmarks.popgym): POPGym's normalised score
against hand-worked values and real episodes, a tiny grid end to end (its table against the stored
runs, resumed without training), and its argument errors."""

import json
import math
import re

import numpy as np
import pytest

pytest.importorskip("popgym")

from sb3_memory.benchmarks import popgym as bench


def play(env_id: str, policy, seed: int = 0) -> float:
    """The return of one episode of ``policy(env, observation)`` on a POPGym environment."""
    import gymnasium as gym

    env = gym.make(env_id)
    observation, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        observation, reward, terminated, truncated, _ = env.step(policy(env.unwrapped, observation))
        total, done = total + float(reward), terminated or truncated
    env.close()
    return total


def test_return_bounds_are_reached_by_real_episodes():
    # RepeatFirst: naming the first card at every step earns +1/51 each time, another suit -1/51.
    first = bench.popgym_envs()["RepeatFirst", "easy"]
    assert bench.return_bounds("RepeatFirst", "easy") == (-1.0, 1.0)
    assert play(first, lambda env, _: env.card) == pytest.approx(1.0)
    assert play(first, lambda env, _: (env.card + 1) % 4) == pytest.approx(-1.0)
    # Battleship Easy: 64 shots, 2+3+3+4 = 12 squares to hit; shooting one empty square all episode
    # misses 64 times at -1/52 each: -64/52 (below POPGym's usual -1).
    low, high = bench.return_bounds("Battleship", "easy")
    assert (low, high) == (pytest.approx(-64 / 52), 1.0)

    def one_empty_square(env, _):
        return np.argwhere(env.board == 0)[0]

    assert play(bench.popgym_envs()["Battleship", "easy"], one_empty_square) == pytest.approx(low)
    # The cart-poles pay 1/200 a step while the pole is up: a fall scores above 0, never below.
    assert bench.return_bounds("PositionOnlyCartPole", "easy") == (0.0, 1.0)
    assert bench.return_bounds("NoisyPositionOnlyCartPole", "hard") == (0.0, 1.0)
    assert bench.return_bounds("PositionOnlyPendulum", "medium") == (-1.0, 1.0)


def test_normalised_score_by_hand():
    assert bench.normalised(0.5, (-1.0, 1.0)) == 0.75
    assert bench.normalised(-1.0, (-1.0, 1.0)) == 0.0
    assert bench.normalised(0.25, (0.0, 1.0)) == 0.25
    # Battleship Easy: a return of 0 (every square shot once) is 64/52 above the worst, of 1 + 64/52.
    assert bench.normalised(0.0, (-64 / 52, 1.0)) == pytest.approx(64 / 116)


def test_paired_comparison_by_hand():
    scores = {"dnc": [0.5, 0.7, 0.9], "lstm": [0.4, 0.5, 0.6]}
    results = [
        dict(agent=agent, env=env, seed=seed, score=score)
        for agent, values in scores.items()
        for score, (env, seed) in zip(values, [("A", 0), ("A", 1), ("B", 0)])
    ]
    # Differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3); two-sided p with
    # 2 degrees of freedom is 1 - t / sqrt(2 + t^2).
    t = 0.2 / (0.1 / math.sqrt(3))
    assert bench.paired(results, "dnc", "lstm") == f"+0.200 (p={1 - t / math.sqrt(2 + t * t):.3f})"
    assert bench.paired(results, "lstm", "lstm") == "-"
    assert bench.paired(results[:1] + results[3:4], "dnc", "lstm") == "+0.100 (p=nan)"  # one pair: no test


def test_still_rising_counts_the_seeds_whose_best_window_is_the_last():
    runs = [
        dict(agent="dnc", env="A", mean_returns=[0.1, 0.3, 0.5]),  # best last: rising
        dict(agent="dnc", env="A", mean_returns=[0.1, 0.6, 0.5]),  # best earlier: levelled off
        dict(agent="dnc", env="A", mean_returns=[0.2, 1.0, 1.0]),  # solved and flat: the last only ties
        dict(agent="lstm", env="A", mean_returns=[0.4]),  # one window: no curve to judge
    ]
    assert [bench.still_rising(run) for run in runs] == [True, False, False, False]
    assert bench.rising_table(runs, ["A"], ["dnc", "lstm", "ppo"])[2] == "| A | 1/3 | 0/1 |"


def table_rows(text: str, section: str) -> dict[str, list[str]]:
    """The rows of a report's table under ``## <section>``: first cell -> the other cells."""
    block = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in block.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_tiny_grid_end_to_end_then_resumed(tmp_path, capsys):
    argv = [
        "--envs", "RepeatPrevious", "--difficulty", "easy", "--agents", "lstm", "ppo", "--seeds", "0",
        "--steps", "1024", "--eval-freq", "512", "--wall-clock", "1.5", "--out", str(tmp_path),
    ]  # fmt: skip
    bench.main(argv)
    printed = capsys.readouterr().out
    assert "n_envs=8, n_steps=64, batch_size=256" in printed and "`lstm`: MemoryPPO('LSTMPolicy'" in printed
    assert "[4/4 done, 0 running, 0 waiting" in printed
    files = sorted((tmp_path / "runs").rglob("seed0.json"))
    results = {(r["agent"], bool(r["wall_clock"])): r for r in (json.loads(path.read_text()) for path in files)}
    assert len(files) == 4 and len(results) == 4

    for (_, timed), result in results.items():
        # RepeatPrevious Easy: 51-step episodes, 8 envs of 64 steps a rollout: each env ends one
        # episode in the first 512 steps and one more by step 1024.
        if not timed:
            assert result["num_timesteps"] == 1024
            assert result["timesteps"] == [512, 1024] and result["episodes"] == [8, 8]
        # An episode's return is (right - wrong) / 48 over 48 scored steps, an even multiple of 1/48:
        # a window's mean of n episodes is a multiple of 2 / (48 n).
        for mean, n in zip(result["mean_returns"], result["episodes"]):
            assert mean * 48 * n / 2 == pytest.approx(round(mean * 48 * n / 2), abs=1e-3)
        assert result["bounds"] == [-1.0, 1.0]
        assert result["score"] == pytest.approx((max(result["mean_returns"]) + 1) / 2)
    assert 1024 < results["ppo", True]["num_timesteps"] <= 4 * 1024  # more steps in its time, at most the cap

    report = (tmp_path / "popgym.md").read_text()
    assert "Made by `python -m sb3_memory.benchmarks.popgym --envs RepeatPrevious" in report
    for section, timed in (("At equal steps (1024 steps)", False), ("At equal CPU time (1.5 s", True)):
        rows = table_rows(report, section)
        lstm, ppo = results["lstm", timed], results["ppo", timed]
        assert rows["env"] == ["lstm", "ppo"]
        assert rows["RepeatPreviousEasy"] == [f"{lstm['score']:.3f}", f"{ppo['score']:.3f}"]
        assert rows["**mean over envs**"] == [f"**{lstm['score']:.3f}**", f"**{ppo['score']:.3f}**"]
        assert rows["vs lstm (paired)"] == ["-", f"{ppo['score'] - lstm['score']:+.3f} (p=nan)"]
        assert rows["CPU s per run (median)"] == [f"{lstm['cpu_seconds']:.0f}", f"{ppo['cpu_seconds']:.0f}"]
        if timed:
            assert rows["steps reached (median)"] == [str(lstm["num_timesteps"]), str(ppo["num_timesteps"])]
    assert (tmp_path / "popgym.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 4

    # The same command again trains nothing: every run is read back and the report is the same.
    stamps = [path.stat().st_mtime_ns for path in files]
    bench.main(argv)
    assert "4 of 4 runs already finished" in capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in files] == stamps
    assert (tmp_path / "popgym.md").read_text() == report


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--envs", "RepeatPrevius"], "no such POPGym environment; did you mean RepeatPrevious?"),
        (
            ["--envs", "RepeatFirstEasy"],
            "give the name without its difficulty (RepeatFirst) and the difficulty with --difficulty",
        ),
        (["--difficulty", "extreme"], "invalid choice: 'extreme'"),
        (["--agents", "transformer"], "invalid choice: 'transformer'"),
        (["--steps", "0"], "0 is not a positive integer"),
        (["--wall-clock", "-5"], "-5.0 is not a positive number of seconds"),
        (["--seeds", "0", "0"], "a seed is repeated"),
        (["--setting", "a2c"], "settings with algo= are for recipe.py"),
        (["--setting", "gama=0.5"], "MemoryPPO has no argument gama"),
        (["--setting", "chunk=64+env.previous_action=True"], "'env.previous_action=True' is not an environment option"),
        (["--setting", "env.previous_action_reward=yes"], "is not an environment option"),
    ],
)
def test_argument_errors_name_the_problem(tmp_path, capsys, argv, message):
    defaults = {"--steps": ["512"], "--out": [str(tmp_path)], "--envs": ["RepeatPrevious"]}
    for flag, value in defaults.items():
        if flag not in argv:
            argv = [*argv, flag, *value]
    with pytest.raises(SystemExit) as error:
        bench.parse_args(argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing is run or written


def test_every_agent_builds_its_model_with_the_one_recipe():
    """Each agent is the algorithm, policy and core it names, with every recipe value (a recipe key
    that an algorithm ignored, or a GRU control that builds an LSTM, would fail here)."""
    env = bench.make_env("Autoencode", "easy", bench.RECIPE["n_envs"], seed=0)  # tuple observations, flattened
    for agent, spec in bench.AGENTS.items():
        model = bench.make_model(agent, env, seed=0)
        assert type(model).__name__ == spec.algorithm and model.n_envs == bench.RECIPE["n_envs"]
        for key, value in bench.RECIPE.items():
            if key in ("n_envs", "learning_rate", "clip_range"):
                continue
            assert getattr(model, key) == value, (agent, key)
        assert model.learning_rate == bench.RECIPE["learning_rate"] and model.clip_range(1.0) == bench.RECIPE["clip_range"]
        if spec.algorithm == "MemoryPPO":
            core = model.policy.core
            assert core.controller.kind == spec.policy_kwargs.get("controller", "lstm")
            assert core.controller_dim == 128
            if "sparse_top_k" in spec.policy_kwargs:
                assert core.memory_units == 1024 and core.sparse_top_k == 8
    env.close()
    setting_model = bench.make_model(
        "dnc", bench.make_env("RepeatFirst", "easy", 8, 0), 0, setting="gamma=0.5+policy.critic_memory=shared"
    )
    assert setting_model.gamma == 0.5 and setting_model.policy.critic_memory == "shared"
    baseline = bench.make_model("ppo", bench.make_env("RepeatFirst", "easy", 8, 0), 0, setting="gamma=0.5")
    assert baseline.gamma == 0.99  # settings are for the memory agents; the baselines keep the recipe


def test_previous_action_reward_setting_reaches_the_memory_agents_envs_only(tmp_path, monkeypatch):
    """``env.previous_action_reward=True`` appends the one-hot previous action and the reward to what
    the MemoryPPO agents observe (a discrete observation made one-hot first); the baselines, which
    have no settings, observe the plain environment."""
    assert bench.split_setting("chunk=64+env.previous_action_reward=True") == ("chunk=64", {"previous_action_reward": True})
    assert bench.split_setting("env.previous_action_reward=True") == ("library", {"previous_action_reward": True})
    assert bench.check_setting("env.previous_action_reward=True+gamma=0.5") == ({"gamma": 0.5}, {})

    plain = bench.make_env("RepeatPrevious", "easy", 2, seed=3)
    extended = bench.make_env("RepeatPrevious", "easy", 2, seed=3, previous_action_reward=True)
    n_actions = int(plain.action_space.n)
    width = int(plain.observation_space.n)  # a card: Discrete, which SB3 would make one-hot
    assert extended.observation_space.shape == (width + n_actions + 1,)
    first_plain, first = plain.reset(), extended.reset()
    np.testing.assert_array_equal(first[:, :width], np.eye(width)[first_plain])
    assert not first[:, width:].any()  # no action or reward before the first step
    actions = np.array([1, n_actions - 1])
    observed_plain, rewards, _, _ = plain.step(actions)
    observed, rewards_extended, _, _ = extended.step(actions)
    np.testing.assert_array_equal(rewards_extended, rewards)
    np.testing.assert_array_equal(observed[:, :width], np.eye(width)[observed_plain])
    np.testing.assert_array_equal(observed[:, width : width + n_actions], np.eye(n_actions)[actions])
    np.testing.assert_allclose(observed[:, -1], rewards)
    plain.close(), extended.close()

    seen = {}

    def record(agent, env, seed, setting="library"):
        seen[agent] = env.observation_space.shape
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(bench, "make_model", record)
    for agent in ("dnc", "ppo"):
        with pytest.raises(KeyboardInterrupt):
            bench.run_one(tmp_path, "RepeatPrevious", "easy", agent, 0, 64, 64, setting="env.previous_action_reward=True")
    assert seen == {"dnc": (width + n_actions + 1,), "ppo": ()}


@pytest.mark.slow
def test_grid_runs_on_a_two_worker_ray(tmp_path, capsys):
    pytest.importorskip("ray")
    argv = [
        "--envs", "RepeatFirst", "--agents", "dnc", "lstm", "--seeds", "0", "1", "--steps", "512",
        "--eval-freq", "512", "--workers", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    bench.main(argv)
    assert "[4/4 done, 0 running, 0 waiting" in capsys.readouterr().out
    rows = table_rows((tmp_path / "popgym.md").read_text(), "At equal steps")
    assert re.fullmatch(r"\d\.\d{3} ± \d+\.\d{3}", rows["RepeatFirstEasy"][0])


def test_several_settings_give_each_memory_agent_a_column_compared_with_the_first(tmp_path):
    """A defaults search: the MemoryPPO agents run under every setting, the baselines once."""

    def run(agent: str, setting: str, env: str, seed: int, score: float) -> dict:
        return dict(
            agent=agent, algo=agent, setting=setting, env=env, seed=seed, score=score, wall_clock=None, steps=1024,
            eval_freq=512, timesteps=[512, 1024], mean_returns=[2 * score - 1.5, 2 * score - 1], bounds=[-1.0, 1.0],
            num_timesteps=1024, cpu_seconds=10.0, steps_per_second=100.0,
        )  # fmt: skip

    scores = {("dnc", "library"): 0.5, ("dnc", "chunk=64"): 0.6, ("lstm", "library"): 0.4, ("lstm", "chunk=64"): 0.4}
    results = [
        run(agent, setting, env, seed, score + 0.01 * seed + (0.1 if env == "B" else 0.0))
        for (agent, setting), score in scores.items()
        for env in ("A", "B")
        for seed in (0, 1)
    ] + [run("ppo", "library", env, seed, 0.3) for env in ("A", "B") for seed in (0, 1)]
    assert bench.columns(["dnc", "lstm", "ppo"], ["library", "chunk=64"]) == [
        "dnc",
        "dnc chunk=64",
        "lstm",
        "lstm chunk=64",
        "ppo",
    ]
    bench.write_report(results, tmp_path, "search", ["dnc", "lstm", "ppo"], ["library", "chunk=64"])
    report = (tmp_path / "popgym.md").read_text()
    assert "each of the settings `library`, `chunk=64`" in report
    rows = table_rows(report, "At equal steps")
    assert rows["env"] == ["dnc", "dnc chunk=64", "lstm", "lstm chunk=64", "ppo"]
    assert rows["A"][:2] == ["0.505 ± 0.064", "0.605 ± 0.064"]
    # chunk=64 adds 0.1 to the DNC in every (env, seed) pair and nothing to the control.
    assert rows["vs the first setting (paired)"] == ["-", "+0.100 (p=nan)", "-", "+0.000 (p=nan)", "-"]
    assert rows["vs lstm (paired)"][1] == "+0.200 (p=nan)"
    # runs.jsonl keeps the runs as they were written: agent and setting apart.
    kept = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["agent"], r["setting"]) for r in kept) == sorted((r["agent"], r["setting"]) for r in results)

"""The recipe study (scripts/recipe.py): settings build the algorithm they name, runs resume, the table averages seeds."""

import functools
import json

import pytest

from sb3_memory.experiments import recipe


def test_table_averages_seeds_and_marks_missing_cells():
    results = [
        dict(setting="fast", policy="NTMPolicy", mean=10.0),
        dict(setting="fast", policy="NTMPolicy", mean=20.0),
        dict(setting="library", policy="PPO", mean=30.0),
    ]
    lines = recipe.table(results, ["fast", "library"], ["NTMPolicy", "PPO"]).splitlines()
    assert lines[2] == "| fast | 15.0 (10, 20) | - |"
    assert lines[3] == "| library | - | 30.0 (30) |"
    # Scores of a few units (card games in [-1, 1]) keep two decimals, the seeds' too.
    small = [dict(setting="fast", policy="NTMPolicy", mean=0.5), dict(setting="fast", policy="NTMPolicy", mean=-0.25)]
    assert recipe.table(small, ["fast"], ["NTMPolicy"]).splitlines()[2] == "| fast | 0.12 (0.50, -0.25) |"


def test_table_gives_memory_cores_a_welch_p_against_the_control():
    from scipy import stats

    dnc, lstm, rppo = [8.0, 9.0, 7.5], [4.0, 5.0, 4.5], [6.0, 3.0]
    results = [dict(setting="s", policy=p, mean=m) for p, ms in (("DNCPolicy", dnc), ("LSTMPolicy", lstm)) for m in ms]
    results += [dict(setting="library", policy="RecurrentPPO", mean=m) for m in rppo]
    row = recipe.table(results, ["s", "library"], ["DNCPolicy", "LSTMPolicy", "RecurrentPPO"]).splitlines()[2:]
    p_value = stats.ttest_ind(dnc, lstm, equal_var=False).pvalue
    assert row[0] == f"| s | 8.17 (8.00, 9.00, 7.50) p={p_value:.3f} | 4.50 (4.00, 5.00, 4.50) | - |"
    assert row[1] == "| library | - | - | 4.50 (6.00, 3.00) |"  # no control in its setting: no p


def test_settings_are_named_or_written_as_key_value_pairs():
    named = recipe.setting_overrides("a2c+n_steps=32+adam")
    assert named == recipe.SETTINGS["a2c+n_steps=32+adam"]
    named[0].pop("algo")  # run_one pops from what it gets: the table must not change
    assert recipe.SETTINGS["a2c+n_steps=32+adam"][0]["algo"] == "a2c"
    assert recipe.setting_overrides("gamma=0.5+learning_rate=2e-3+policy.critic_memory=shared+policy.net_arch=[16]") == (
        dict(gamma=0.5, learning_rate=0.002),
        dict(critic_memory="shared", net_arch=[16]),
    )
    assert recipe.setting_overrides("algo=a2c+normalize_advantage=True") == (dict(algo="a2c", normalize_advantage=True), {})
    with pytest.raises(ValueError, match=r"MemoryPPO has no argument lr .*learning_rate"):
        recipe.setting_overrides("lr=5e-4")
    with pytest.raises(ValueError, match="MemoryA2C has no argument n_epochs"):  # a PPO argument
        recipe.setting_overrides("algo=a2c+n_epochs=4")
    with pytest.raises(ValueError, match=r"'fastest' is neither a named setting .* nor key=value"):
        recipe.setting_overrides("fastest")
    # a misspelt named setting reads as key=value: the error names the setting it resembles
    with pytest.raises(
        ValueError, match=r"did you mean the named setting 'critic=separate'\? MemoryPPO has no argument critic"
    ):
        recipe.setting_overrides("critic=seperate")


@pytest.mark.parametrize(
    "setting, algo",
    [
        ("a2c+n_steps=32+adam", "MemoryA2C"),
        ("fast+aux", "MemoryPPO"),
        ("algo=a2c+n_steps=8+policy.critic_memory=none", "MemoryA2C"),
    ],
)
def test_a_setting_trains_the_algorithm_it_names_and_the_run_resumes(tmp_path, monkeypatch, setting, algo):
    import sb3_memory

    built = []
    for name in ("MemoryA2C", "MemoryPPO"):
        original = getattr(sb3_memory, name)

        @functools.wraps(original)  # keeps the signature that settings are checked against
        def spy(*args, _original=original, _name=name, **kwargs):
            built.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(sb3_memory, name, spy)
    first = recipe.run_one("CartPoleNoVel-v1", "LSTMPolicy", setting, 0, 256, tmp_path)
    assert [name for name, _ in built] == [algo]
    kwargs = built[0][1]
    if setting.startswith("algo=a2c"):
        assert kwargs["n_steps"] == 8 and kwargs["policy_kwargs"]["critic_memory"] == "none"
    elif algo == "MemoryA2C":
        assert kwargs["n_steps"] == 32 and kwargs["policy_kwargs"]["optimizer_class"].__name__ == "Adam"
    else:
        assert kwargs["recall_coef"] == 0.1 and kwargs["n_epochs"] == 4 and kwargs["batch_size"] == 256
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert saved == first and saved["setting"] == setting
    assert recipe.run_one("CartPoleNoVel-v1", "LSTMPolicy", setting, 0, 256, tmp_path) == first
    assert len(built) == 1, "a finished run must be read back, not trained again"
    longer = recipe.run_one("CartPoleNoVel-v1", "LSTMPolicy", setting, 0, 512, tmp_path)
    assert len(built) == 2 and longer["steps"] == 512, "a run of another length is another run"

"""The recipe study (scripts/recipe.py): settings build the algorithm they name, runs resume, the table averages seeds."""

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


@pytest.mark.parametrize("setting, algo", [("a2c+n_steps=32+adam", "MemoryA2C"), ("fast+aux", "MemoryPPO")])
def test_a_setting_trains_the_algorithm_it_names_and_the_run_resumes(tmp_path, monkeypatch, setting, algo):
    import sb3_memory

    built = []
    for name in ("MemoryA2C", "MemoryPPO"):
        original = getattr(sb3_memory, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            built.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(sb3_memory, name, spy)
    first = recipe.run_one("CartPoleNoVel-v1", "LSTMPolicy", setting, 0, 256, tmp_path)
    assert [name for name, _ in built] == [algo]
    kwargs = built[0][1]
    if algo == "MemoryA2C":
        assert kwargs["n_steps"] == 32 and kwargs["policy_kwargs"]["optimizer_class"].__name__ == "Adam"
    else:
        assert kwargs["recall_coef"] == 0.1 and kwargs["n_epochs"] == 4 and kwargs["batch_size"] == 256
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert saved == first and saved["setting"] == setting
    assert recipe.run_one("CartPoleNoVel-v1", "LSTMPolicy", setting, 0, 256, tmp_path) == first
    assert len(built) == 1, "a finished run must be read back, not trained again"
    longer = recipe.run_one("CartPoleNoVel-v1", "LSTMPolicy", setting, 0, 512, tmp_path)
    assert len(built) == 2 and longer["steps"] == 512, "a run of another length is another run"

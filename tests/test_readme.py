"""The README's examples run as written and do what they say."""

import re
from pathlib import Path
from typing import Optional

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def run_example(source: str, capsys, namespace: Optional[dict] = None) -> float:
    exec(compile(source, "README.md", "exec"), {} if namespace is None else namespace)
    printed = capsys.readouterr().out
    match = re.search(r"mean return (-?\d+\.\d+)", printed)
    assert match, f"the example printed no score: {printed!r}"
    return float(match.group(1))


def test_top_example_trains_and_prints_its_score(capsys):
    """
    The example as written solves the task (0.50 is the best a memoryless policy can do). Its
    recipe solves it in 18 of 20 seeds (the comment in it); rounding differs between CPUs, so if seed 0's
    trajectory here is one of the misses, seed 1 must solve it.
    """
    source = python_blocks()[0]
    score = run_example(source, capsys)
    if score < 0.9:
        score = run_example(source.replace("seed=0", "seed=1"), capsys)
    assert score >= 0.9


def test_onnx_deployer_loop_scores_as_the_trained_model(capsys, tmp_path, monkeypatch):
    """The deployer's loop, run on the top example's model, solves the task the model solved."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)
    (deployer,) = [block for block in python_blocks() if "onnxruntime" in block]
    namespace: dict = {}
    assert run_example(python_blocks()[0], capsys, namespace) >= 0.9 or (
        run_example(python_blocks()[0].replace("seed=0", "seed=1"), capsys, namespace) >= 0.9
    )
    assert run_example(deployer, capsys, namespace) == 1.0
    assert (tmp_path / "tmaze_policy.onnx").is_file()


def test_memory_dqn_example_trains_as_written():
    """The MemoryDQN example runs as written, past its warm-up: updates happen and the policy moves."""
    (source,) = [block for block in python_blocks() if "MemoryDQN(" in block]
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert 5_000 <= model.num_timesteps < 5_000 + 4 * model.n_envs and model._n_updates > 0  # whole train_freq rounds
    assert model.replay_buffer.size() == model.num_timesteps // model.n_envs

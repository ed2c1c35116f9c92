"""The package as a user installs it: a wheel, outside the checkout, runs the comparison harness."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_comparison_runs_from_an_installed_wheel(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("sb3_memory-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sb3_memory/zoo_configs/memory_ppo.yml" in names and "sb3_memory/memory/csrc/memory_kernels.cpp" in names
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]

    # A folder with nothing of the checkout in it; the installed copy comes first on the path
    # (and reaches the zoo runs the harness starts, through the environment).
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import sb3_memory.experiments.compare as c; print(c.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    command = [
        sys.executable, "-m", "sb3_memory.experiments.compare", "--envs", "CartPoleNoVel-v1",
        "--algos", "memory_ppo-lstm", "--seeds", "0", "--budget", "512", "--eval-freq", "256", "--eval-episodes", "2",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The defaults are relative to where it runs: runs/compare and docs/results.
    run = json.loads(next((work / "runs" / "compare").rglob("result.json")).read_text())
    assert (run["algo"], run["env"], run["seed"], run["budget"]) == ("memory_ppo-lstm", "CartPoleNoVel-v1", 0, 512)
    assert run["timesteps"][-1] == 512
    table = (work / "docs" / "results" / "comparison.md").read_text()
    assert "| CartPoleNoVel-v1 | memory_ppo-lstm | 1 | 512 |" in table

"""Faults survived, nothing lost: kill and resume through rl-zoo3, and bit-identical seeded runs."""

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_memory import MemoryPPO

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "sb3_memory/PassiveTMaze-v0"
TINY = dict(memory_units=4, memory_unit_size=3, controller_dim=8, net_arch=[8])


def zoo_train(*args: str, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "sb3_memory.zoo", "train", "--algo", "memory_ppo", "--env", ENV_ID, "--seed", "0",
               "--eval-freq", "-1", "--env-kwargs", "corridor_length:3", *args]  # fmt: skip
    with log.open("w") as output:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)


def checkpoints(folder: Path) -> list[Path]:
    """The checkpoints rl-zoo3's callback saved, oldest first."""
    return sorted(folder.rglob("rl_model_*_steps.zip"), key=lambda p: int(p.stem.split("_")[2]))


def is_whole_save(path: Path) -> bool:
    """
    Whether SB3 finished writing this zip. A save cut short just after a ``.pth`` entry still opens
    as a valid zip: the entry is torch's own zip archive, whose end record ``zipfile`` then finds.
    Only SB3's first and last entries together prove the save ended.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return {"data", "system_info.txt"} <= set(archive.namelist()) and archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


class FirstRolloutState(BaseCallback):
    def _on_rollout_start(self) -> None:
        if not hasattr(self, "state"):
            assert isinstance(self.model, MemoryPPO) and self.model._last_memory_state is not None
            self.state = self.model._last_memory_state.clone()

    def _on_step(self) -> bool:
        return True


def test_training_killed_mid_run_resumes_from_its_last_checkpoint(tmp_path):
    config = tmp_path / "memory_ppo.yml"
    entry = dict(
        n_envs=2, n_timesteps=10**6, policy="NTMPolicy", n_steps=16, batch_size=32, n_epochs=1, policy_kwargs=str(TINY)
    )
    config.write_text(yaml.safe_dump({ENV_ID: entry}))
    first = zoo_train(
        "-conf", str(config), "--save-freq", "64", "--log-folder", str(tmp_path / "run"), log=tmp_path / "run.log"
    )
    try:
        deadline = time.monotonic() + 120
        while len(checkpoints(tmp_path / "run")) < 2:
            assert first.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "no checkpoints were written"
            time.sleep(0.2)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    # Saves are atomic: wherever the kill landed, every checkpoint under its final name is whole.
    saved = checkpoints(tmp_path / "run")
    assert all(is_whole_save(path) for path in saved)
    checkpoint = saved[-1]

    # The checkpoint loads with a clean memory state: the state at the kill was not saved.
    env = make_vec_env(ENV_ID, n_envs=2, env_kwargs=dict(corridor_length=3))
    loaded = MemoryPPO.load(checkpoint, env=env)
    assert loaded._last_memory_state is None
    recorder = FirstRolloutState()
    loaded.learn(32, callback=recorder)
    torch.testing.assert_close(recorder.state, loaded.policy.initial_state(2), rtol=0, atol=0)

    # rl-zoo3's own resume (-i) goes on training from it and saves the result.
    resumed = zoo_train("-conf", str(config), "-i", str(checkpoint), "-n", "256", "--log-folder", str(tmp_path / "resumed"),
                        log=tmp_path / "resumed.log")  # fmt: skip
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    assert "Loading pretrained agent" in (tmp_path / "resumed.log").read_text()
    final = MemoryPPO.load(next((tmp_path / "resumed").rglob(f"{ENV_ID.replace('/', '-')}.zip")))
    before = MemoryPPO.load(checkpoint).policy.state_dict()
    assert final.num_timesteps >= 256
    assert any(not torch.equal(before[name], value) for name, value in final.policy.state_dict().items())


def tiny_model() -> MemoryPPO:
    env = make_vec_env(ENV_ID, n_envs=2, env_kwargs=dict(corridor_length=3))
    return MemoryPPO("NTMPolicy", env, n_steps=16, batch_size=32, policy_kwargs=TINY)


def assert_same_parameters(first: MemoryPPO, second: MemoryPPO) -> None:
    for (name, value), other in zip(first.policy.state_dict().items(), second.policy.state_dict().values()):
        assert torch.equal(value, other), name


def test_a_save_that_dies_midway_leaves_the_previous_file_as_it_was(tmp_path, monkeypatch):
    model = tiny_model()
    path = tmp_path / "model.zip"
    model.save(path)
    before = path.read_bytes()
    with torch.no_grad():
        next(model.policy.parameters()).add_(1.0)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after SB3 wrote the zip's first entry, before the parameters

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path], "the temporary file was left behind"
    monkeypatch.undo()
    model.save(path)
    assert_same_parameters(MemoryPPO.load(path), model)


def test_saves_land_where_sb3_puts_them(tmp_path):
    memory, plain = tiny_model(), PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16)
    for name, model in (("memory", memory), ("plain", plain)):
        folder = tmp_path / name
        model.save(folder / "no_suffix")
        model.save(str(folder / "named.zip"))
        model.save(folder / "parents" / "made" / "model")  # SB3 warns and creates them; we create them
        (folder / "taken.zip").mkdir()
        with pytest.warns(UserWarning, match="is a folder"):
            model.save(folder / "taken.zip")

    def files(root: Path) -> list[tuple[str, int]]:
        return sorted((str(path.relative_to(root)), path.stat().st_mode) for path in root.rglob("*") if path.is_file())

    assert files(tmp_path / "memory") == files(tmp_path / "plain")  # names and permissions
    assert_same_parameters(MemoryPPO.load(tmp_path / "memory" / "no_suffix"), memory)
    buffer = io.BytesIO()
    memory.save(buffer)
    buffer.seek(0)
    assert_same_parameters(MemoryPPO.load(buffer), memory)


def train_seeded(seed: int) -> dict[str, torch.Tensor]:
    env = make_vec_env(ENV_ID, n_envs=2, seed=seed, env_kwargs=dict(corridor_length=3))
    model = MemoryPPO("DNCPolicy", env, n_steps=16, batch_size=16, n_epochs=2, seed=seed, policy_kwargs=TINY)
    model.learn(256)
    return {name: value.clone() for name, value in model.policy.state_dict().items()}


def test_same_seed_gives_bit_identical_parameters():
    first, second, other = train_seeded(0), train_seeded(0), train_seeded(1)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(not torch.equal(first[name], other[name]) for name in first)  # the seed matters
    assert all(np.isfinite(value.numpy()).all() for value in first.values())

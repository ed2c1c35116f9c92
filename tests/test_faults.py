"""Faults survived, nothing lost: kill and resume through rl-zoo3, and bit-identical seeded runs."""

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml
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


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints whose zip is whole (a kill can land in the middle of a save), oldest first.

    A save cut short just after a ``.pth`` entry still opens as a valid zip: the entry is torch's own
    zip archive, whose end record ``zipfile`` then finds. Only SB3's last entry proves the save ended.
    """
    found = []
    for path in folder.rglob("rl_model_*_steps.zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                if {"data", "system_info.txt"} <= set(archive.namelist()) and archive.testzip() is None:
                    found.append(path)
        except (zipfile.BadZipFile, OSError):
            continue
    return sorted(found, key=lambda p: int(p.stem.split("_")[2]))


class FirstRolloutState(BaseCallback):
    def _on_rollout_start(self) -> None:
        if not hasattr(self, "state"):
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
        while len(complete_checkpoints(tmp_path / "run")) < 2:
            assert first.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "no checkpoints were written"
            time.sleep(0.2)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    checkpoint = complete_checkpoints(tmp_path / "run")[-1]

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

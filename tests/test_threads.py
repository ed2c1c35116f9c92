"""CPU training runs on one torch thread unless the user chose a number (issue: 5-100x slowdowns
on a busy machine with torch's default of one thread per core)."""

import sys
from typing import Any

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_memory import MemoryA2C, MemoryDQN, MemoryPPO, MemorySAC
from sb3_memory.common import threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    previous = torch.get_num_threads()
    for name in threads.THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(previous)


class ThreadCount(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def _on_step(self) -> bool:
        self.seen.add(torch.get_num_threads())
        return True


TINY_CORE = dict(memory_units=4, memory_unit_size=2, controller_dim=4)
# Off-policy: short sequences and an early start, so that learn(32) also trains (train() runs
# between the callback's steps, so its thread count is the one observed at the next step).
OFF_POLICY = dict(learning_starts=8, buffer_size=64, batch_size=2, burn_in=1, train_length=2, n_steps=1)
SETTINGS: dict[type, dict[str, Any]] = {
    MemoryPPO: dict(n_steps=8, batch_size=16),
    MemoryA2C: dict(n_steps=8),
    MemoryDQN: dict(**OFF_POLICY, train_freq=2),
    MemorySAC: dict(**OFF_POLICY, train_freq=2, policy_kwargs=dict(**TINY_CORE, net_arch=[8])),
}


def train_and_count_threads(algo) -> set[int]:
    # SAC needs continuous actions: a pendulum (its observation is a Box as well)
    env_id = "Pendulum-v1" if algo is MemorySAC else "sb3_memory/PassiveTMaze-v0"
    env_kwargs = None if algo is MemorySAC else dict(corridor_length=2)
    env = make_vec_env(env_id, n_envs=2, env_kwargs=env_kwargs)
    settings: dict[str, Any] = dict(policy_kwargs=TINY_CORE, seed=0, device="cpu")
    settings.update(SETTINGS[algo])
    model = algo("NTMPolicy", env, **settings)
    counter = ThreadCount()
    model.learn(32, callback=counter)
    if algo in (MemoryDQN, MemorySAC):
        assert model._n_updates > 0  # the training steps ran under the same rule
    return counter.seen


ALGORITHMS = [MemoryPPO, MemoryA2C, MemoryDQN, MemorySAC]


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_training_uses_one_thread_unless_chosen(algo, monkeypatch):
    # torch's start-up default, never changed since sb3_memory was imported: not a user's choice
    monkeypatch.setattr(threads, "STARTUP_NUM_THREADS", 3)
    torch.set_num_threads(3)
    assert train_and_count_threads(algo) == {1}
    assert torch.get_num_threads() == 3  # restored after learn()


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_a_chosen_thread_count_is_kept(algo, monkeypatch):
    monkeypatch.setattr(threads, "STARTUP_NUM_THREADS", 2)
    torch.set_num_threads(3)  # set after import: the user's choice
    assert train_and_count_threads(algo) == {3}


@pytest.mark.parametrize("variable", threads.THREAD_ENV_VARS)
@pytest.mark.parametrize("algo", [MemoryPPO, MemoryDQN])
def test_thread_environment_variables_are_a_choice(algo, variable, monkeypatch):
    monkeypatch.setattr(threads, "STARTUP_NUM_THREADS", 3)
    monkeypatch.setenv(variable, "3")
    torch.set_num_threads(3)
    assert train_and_count_threads(algo) == {3}


def test_the_thread_count_is_restored_when_learn_raises(monkeypatch):
    monkeypatch.setattr(threads, "STARTUP_NUM_THREADS", 3)
    torch.set_num_threads(3)

    class Failing(ThreadCount):
        def _on_step(self) -> bool:
            super()._on_step()
            raise RuntimeError("stop")

    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=1, env_kwargs=dict(corridor_length=2))
    model = MemoryDQN("NTMPolicy", env, **OFF_POLICY, policy_kwargs=TINY_CORE, device="cpu")
    failing = Failing()
    with pytest.raises(RuntimeError, match="stop"):
        model.learn(8, callback=failing)
    assert failing.seen == {1} and torch.get_num_threads() == 3


def test_zoo_wrapper_defaults_to_one_thread(monkeypatch):
    import sb3_memory.zoo as zoo

    seen = []
    monkeypatch.setitem(zoo.SUBCOMMANDS, "train", lambda: seen.append(list(sys.argv[1:])))
    zoo.main(["train", "--algo", "memory_ppo"])
    zoo.main(["train", "--algo", "memory_ppo", "--num-threads", "4"])
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    zoo.main(["train", "--algo", "memory_ppo"])
    assert seen == [
        ["--algo", "memory_ppo", "--num-threads", "1"],
        ["--algo", "memory_ppo", "--num-threads", "4"],
        ["--algo", "memory_ppo"],
    ]

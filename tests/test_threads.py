"""CPU training runs on one torch thread unless the user chose a number (issue: 5-100x slowdowns
on a busy machine with torch's default of one thread per core)."""

import sys

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_memory import MemoryA2C, MemoryPPO
from sb3_memory.common import on_policy_algorithm


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    previous = torch.get_num_threads()
    for name in on_policy_algorithm.THREAD_ENV_VARS:
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


def train_and_count_threads(algo) -> set[int]:
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=2, env_kwargs=dict(corridor_length=2))
    sizes = dict(n_steps=8, batch_size=16) if algo is MemoryPPO else dict(n_steps=8)
    model = algo("NTMPolicy", env, **sizes, policy_kwargs=dict(memory_units=4, memory_unit_size=2, controller_dim=4), seed=0)
    counter = ThreadCount()
    model.learn(32, callback=counter)
    return counter.seen


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
def test_training_uses_one_thread_unless_chosen(algo, monkeypatch):
    # torch's start-up default, never changed since sb3_memory was imported: not a user's choice
    monkeypatch.setattr(on_policy_algorithm, "STARTUP_NUM_THREADS", 3)
    torch.set_num_threads(3)
    assert train_and_count_threads(algo) == {1}
    assert torch.get_num_threads() == 3  # restored after learn()


def test_a_chosen_thread_count_is_kept(monkeypatch):
    monkeypatch.setattr(on_policy_algorithm, "STARTUP_NUM_THREADS", 2)
    torch.set_num_threads(3)  # set after import: the user's choice
    assert train_and_count_threads(MemoryPPO) == {3}


@pytest.mark.parametrize("variable", on_policy_algorithm.THREAD_ENV_VARS)
def test_thread_environment_variables_are_a_choice(variable, monkeypatch):
    monkeypatch.setattr(on_policy_algorithm, "STARTUP_NUM_THREADS", 3)
    monkeypatch.setenv(variable, "3")
    torch.set_num_threads(3)
    assert train_and_count_threads(MemoryPPO) == {3}


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

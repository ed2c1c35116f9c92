"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test: these models are small, and with more, tests on a busy 2-core
    machine run many times slower (see sb3_memory.common.on_policy_algorithm.single_thread_on_cpu)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

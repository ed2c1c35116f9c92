"""One torch thread while training on CPU, for every algorithm (on- and off-policy) unless the user chose a number."""

import contextlib
import os
from collections.abc import Iterator

import torch as th

# torch's intra-op thread count when sb3_memory was imported: still that at learn() means the user
# did not choose one (torch.set_num_threads before importing sb3_memory cannot be told apart: use
# OMP_NUM_THREADS then).
STARTUP_NUM_THREADS = th.get_num_threads()
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def user_chose_num_threads() -> bool:
    """Whether the torch thread count was chosen: an environment variable, or a call to ``torch.set_num_threads``."""
    return any(os.environ.get(name) for name in THREAD_ENV_VARS) or th.get_num_threads() != STARTUP_NUM_THREADS


@contextlib.contextmanager
def single_thread_on_cpu(device: th.device) -> Iterator[None]:
    """
    One torch intra-op thread for the duration (restored afterwards) when training on CPU, unless
    the user chose a number. These models are small: one thread is as fast, and with several,
    OpenMP threads waiting for a core that another process holds slow training 5-100x.

    :param device: the device the model trains on (another than the CPU: nothing changes)
    """
    if device.type != "cpu" or user_chose_num_threads() or th.get_num_threads() == 1:
        yield
        return
    previous = th.get_num_threads()
    th.set_num_threads(1)
    try:
        yield
    finally:
        th.set_num_threads(previous)

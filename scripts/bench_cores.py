"""Time forward + backward of the memory cores over a sequence (the hot loop of training).

Usage: python scripts/bench_cores.py [--repeats 7] [--threads 1] [--reference] [--compile]

Configurations follow the public NTM/DNC implementations' defaults so the numbers compare:
DNC with a 64-unit LSTM controller, N=64, W=32, R=4, input 16; NTM with a 100-unit LSTM
controller, N=128, W=20, one read and one write head, input 9; T=50 steps at batch 16.
Rows: the default path (the native kernels), and on request the PyTorch reference path, eager
(``--reference``) and with ``compile_step=True`` (``--compile``). The paths alternate repeat by
repeat, so machine noise hits them alike.
"""

import argparse
import statistics
import time
from typing import Any

import torch

from sb3_memory.memory import DNCCell, LSTMCore, NTMCell

CONFIGS = {
    "dnc": (DNCCell, dict(input_dim=16, controller_dim=64, memory_units=64, memory_unit_size=32, num_read_heads=4)),
    "ntm": (NTMCell, dict(input_dim=9, controller_dim=100, memory_units=128, memory_unit_size=20)),
    "lstm": (LSTMCore, dict(input_dim=16, controller_dim=64)),
}
PATHS = {
    "default": {},
    "reference": dict(backend="reference"),
    "reference+compile": dict(backend="reference", compile_step=True),
}


def time_once(core: torch.nn.Module, x: torch.Tensor, starts: torch.Tensor) -> float:
    core.zero_grad(set_to_none=True)
    start = time.perf_counter()
    features, _ = core.forward_sequence(x, core.initial_state(x.shape[1]), starts)
    features.square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cores", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--reference", action="store_true", help="also time the eager reference path")
    parser.add_argument("--compile", action="store_true", help="also time the reference path with compile_step=True")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = ["default"] + ["reference"] * args.reference + ["reference+compile"] * args.compile
    print(f"T={args.steps} batch={args.batch} threads={args.threads}, forward+backward, median of {args.repeats}")
    for name in args.cores:
        cls, kwargs = CONFIGS[name]
        torch.manual_seed(0)
        cores: dict[str, Any] = {path: cls(**kwargs, **PATHS[path]) for path in paths}
        x = torch.randn(args.steps, args.batch, kwargs["input_dim"])
        starts = torch.zeros(args.steps, args.batch, dtype=torch.bool)
        times: dict[str, list[float]] = {path: [] for path in paths}
        for path in paths:  # first call: builds or compiles, warms caches
            time_once(cores[path], x, starts)
        for _ in range(args.repeats):
            for path in paths:
                times[path].append(time_once(cores[path], x, starts))
        params = sum(p.numel() for p in cores["default"].parameters())
        for path in paths:
            median, best = statistics.median(times[path]) * 1000, min(times[path]) * 1000
            print(f"{name:5s} {path:18s} params={params:7d}  median={median:7.1f} ms  min={best:7.1f} ms")


if __name__ == "__main__":
    main()

"""Time forward + backward of the memory cores over a sequence (the hot loop of training).

Usage: python scripts/bench_cores.py [--repeats 7] [--threads 1] [--reference] [--compile]
       python scripts/bench_cores.py --cores ntm dnc --steps 32 --batch 8 --memory-unit-size 16 \
           --memory-units 32 1024 8192 65536 --sparse-top-k 8 --dense-up-to 1024 [--huge-pages]

Configurations follow the public NTM/DNC implementations' defaults so the numbers compare:
DNC with a 64-unit LSTM controller, N=64, W=32, R=4, input 16; NTM with a 100-unit LSTM
controller, N=128, W=20, one read and one write head, input 9; T=50 steps at batch 16.
Each call runs from a flat state, as the policies replay one from their buffer. Rows: the
default path (the native kernels), and on request the PyTorch reference path, eager
(``--reference``) and with ``compile_step=True`` (``--compile``), and sparse reads and writes
(``--sparse-top-k K``, the cores' ``sparse_top_k``: their sparse kernels). ``--memory-units``
makes the memory size an axis (NTM and DNC), ``--memory-unit-size`` sets W. The paths alternate
repeat by repeat, so machine noise hits them alike. Each row also gives the bytes of one
environment's state (float32), what a rollout buffer stores per chunk.
"""

import argparse
import os
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
PATHS: dict[str, dict[str, Any]] = {
    "default": {},
    "reference": dict(backend="reference"),
    "reference+compile": dict(backend="reference", compile_step=True),
}


# A state this large (the dense DNC's N x N link at N >= 8192) is not timed: it does not fit.
MAX_STATE_BYTES = 2**30


def time_once(core: Any, x: torch.Tensor, starts: torch.Tensor) -> float:
    # From a flat state, as training replays one from the buffer: building it is not timed.
    flat = core.flatten_state(core.initial_state(x.shape[1]))
    core.zero_grad(set_to_none=True)
    start = time.perf_counter()
    features, _ = core.forward_flat(x, flat, starts)
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
    parser.add_argument("--memory-units", type=int, nargs="+", help="N for the NTM and the DNC (default: their configs')")
    parser.add_argument("--memory-unit-size", type=int, help="W for the NTM and the DNC (default: their configs')")
    parser.add_argument("--sparse-top-k", type=int, help="also time sparse_top_k=K (reads and writes touch K slots)")
    parser.add_argument(
        "--dense-up-to", type=int, default=2**31, help="time the dense paths only up to this N (they grow as N or N^2)"
    )
    parser.add_argument(
        "--huge-pages",
        action="store_true",
        help="back large tensors with transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE=1): at N >= 10^4 a "
        "call's fresh flat state (megabytes per environment) otherwise costs a page fault every 4 kB",
    )
    args = parser.parse_args()
    if args.huge_pages:  # read by PyTorch at its first allocation of 2 MB or more, none of which came before
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    torch.set_num_threads(args.threads)
    paths = ["default"] + ["reference"] * args.reference + ["reference+compile"] * args.compile
    if args.sparse_top_k is not None:
        PATHS[f"sparse K={args.sparse_top_k}"] = dict(sparse_top_k=args.sparse_top_k)
        paths.append(f"sparse K={args.sparse_top_k}")
    pages = ", transparent huge pages" if args.huge_pages else ""
    print(f"T={args.steps} batch={args.batch} threads={args.threads}{pages}, forward+backward, median of {args.repeats}")
    for name in args.cores:
        cls, base = CONFIGS[name]
        sizes = [base.get("memory_units")] if name == "lstm" or not args.memory_units else args.memory_units
        for units in sizes:
            kwargs = dict(base) if units is None else {**base, "memory_units": units}
            if args.memory_unit_size and name != "lstm":
                kwargs["memory_unit_size"] = args.memory_unit_size
            chosen = [p for p in paths if p.startswith("sparse") or (units or 0) <= args.dense_up_to]
            bench(name, cls, kwargs, [p for p in chosen if name != "lstm" or not p.startswith("sparse")], args)


def bench(name: str, cls: type, kwargs: dict[str, Any], paths: list[str], args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    label = name if "memory_units" not in kwargs else f"{name} N={kwargs['memory_units']}"
    cores: dict[str, Any] = {}
    for path in paths:
        core = cls(**kwargs, **PATHS[path])
        state_bytes = core.state_size * 4
        if state_bytes * args.batch > MAX_STATE_BYTES:
            print(f"{label:12s} {path:18s} state={state_bytes / 1024:11.1f} kB/env  not timed (a batch's state exceeds 1 GB)")
            continue
        cores[path] = core
    x = torch.randn(args.steps, args.batch, kwargs["input_dim"])
    starts = torch.zeros(args.steps, args.batch, dtype=torch.bool)
    times: dict[str, list[float]] = {path: [] for path in cores}
    for path in cores:  # first call: builds or compiles, warms caches
        time_once(cores[path], x, starts)
    for _ in range(args.repeats):
        for path in cores:
            times[path].append(time_once(cores[path], x, starts))
    for path, core in cores.items():
        params = sum(p.numel() for p in core.parameters())
        median, best = statistics.median(times[path]) * 1000, min(times[path]) * 1000
        state_kb = core.state_size * 4 / 1024
        timing = f"median={median:9.1f} ms  min={best:9.1f} ms"
        print(f"{label:12s} {path:18s} params={params:7d}  {timing}  state={state_kb:11.1f} kB/env")


if __name__ == "__main__":
    main()

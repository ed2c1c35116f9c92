"""Time forward + backward of the memory cores over a sequence (the hot loop of training).

Usage: python scripts/bench_cores.py [--repeats 7] [--threads 1]

Configurations follow the public NTM/DNC implementations' defaults so the numbers compare:
DNC with a 64-unit LSTM controller, N=64, W=32, R=4, input 16; NTM with a 100-unit LSTM
controller, N=128, W=20, one read and one write head, input 9; T=50 steps at batch 16.
"""

import argparse
import statistics
import time

import torch

from sb3_memory.memory import DNCCell, LSTMCore, NTMCell

CONFIGS = {
    "dnc": (DNCCell, dict(input_dim=16, controller_dim=64, memory_units=64, memory_unit_size=32, num_read_heads=4)),
    "ntm": (NTMCell, dict(input_dim=9, controller_dim=100, memory_units=128, memory_unit_size=20)),
    "lstm": (LSTMCore, dict(input_dim=16, controller_dim=64)),
}


def time_core(core: torch.nn.Module, steps: int, batch: int, repeats: int) -> list[float]:
    x = torch.randn(steps, batch, core.input_dim)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    times = []
    for _ in range(repeats + 1):  # the first run warms up allocators and caches
        core.zero_grad(set_to_none=True)
        start = time.perf_counter()
        features, _ = core.forward_sequence(x, core.initial_state(batch), starts)
        features.square().mean().backward()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cores", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--compile", action="store_true", help="also time the cores with compile_step=True")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"T={args.steps} batch={args.batch} threads={args.threads}, forward+backward, median of {args.repeats}")
    for name in args.cores:
        cls, kwargs = CONFIGS[name]
        for compiled in [False, True] if args.compile else [False]:
            core = cls(**kwargs, compile_step=compiled)
            times = time_core(core, args.steps, args.batch, args.repeats)
            params = sum(p.numel() for p in core.parameters())
            label = f"{name}{'+compile' if compiled else ''}"
            print(f"{label:13s} params={params:7d}  median={statistics.median(times) * 1000:7.1f} ms  min={min(times) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()

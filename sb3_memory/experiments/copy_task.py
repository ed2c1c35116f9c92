"""Train the memory cores on the copy task of Graves et al. (2014) and print learning curves.

A sequence of random 8-bit vectors is shown, then a delimiter; the model must then output the
same vectors in order, with no input. Error is counted in wrong bits per sequence (outputs
thresholded at 0.5), averaged over a batch, as in the NTM paper's figures.

Several ``--max-length`` values train in stages, a length curriculum, each stage for its own
number of ``--steps``: with ``--memory-units 2048 --sparse-top-k 8`` the sparse DNC learns copies
of more than a thousand vectors, which the dense DNC (an N x N link per sequence) cannot be
trained on at that size.

Usage (``scripts/copy_task.py`` runs :func:`main`):
    python scripts/copy_task.py --core ntm --steps 20000 --max-length 20 --eval-length 40
    python scripts/copy_task.py --core dnc lstm --steps 20000
    python scripts/copy_task.py --core dnc --memory-units 2048 --sparse-top-k 8 --lr 3e-3 \
        --max-length 20 100 300 --steps 2000 1200 600 --eval-length 500 1000 2000 --eval-batch-size 8
"""

import argparse
import time
from typing import Any, Optional

import torch
from torch import nn

from sb3_memory.memory import CORES

BITS = 8

# Parameter counts are kept close (58-62k) so the comparison isolates the memory.
CORE_KWARGS = {
    "ntm": dict(controller_dim=100, memory_units=128, memory_unit_size=20, num_read_heads=1, num_write_heads=1),
    "dnc": dict(controller_dim=100, memory_units=64, memory_unit_size=20, num_read_heads=1),
    "lstm": dict(controller_dim=115),
}


def copy_batch(batch_size: int, length: int, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    One batch of copy sequences, time-major.

    :return: inputs (2L+1, B, BITS+1) and targets (L, B, BITS) for the recall steps
    """
    bits = torch.randint(0, 2, (length, batch_size, BITS), generator=generator).float()
    inputs = torch.zeros(2 * length + 1, batch_size, BITS + 1)
    inputs[:length, :, :BITS] = bits
    inputs[length, :, BITS] = 1.0  # delimiter
    return inputs, bits


class CoreWithReadout(nn.Module):
    """A memory core followed by a linear read-out (of the bits here; of action logits in ``supervised``)."""

    def __init__(self, core_name: str, input_dim: int = BITS + 1, output_dim: int = BITS, **core_kwargs) -> None:
        super().__init__()
        self.core = CORES[core_name](input_dim=input_dim, **core_kwargs)
        self.readout = nn.Linear(self.core.output_dim, output_dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features, _ = self.core.forward_sequence(inputs, self.core.initial_state(inputs.shape[1]))
        return self.readout(features)


def bit_errors(
    model: CoreWithReadout, length: int, batch_size: int = 64, generator: Optional[torch.Generator] = None
) -> float:
    """Mean number of wrong bits per sequence at a given length."""
    with torch.no_grad():
        inputs, targets = copy_batch(batch_size, length, generator)
        logits = model(inputs)[length + 1 :]
        return float(((logits > 0).float() != targets).sum(dim=(0, 2)).float().mean())


def train(
    core_name: str,
    steps: int,
    max_length: int,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
    eval_every: int = 250,
    log=print,
    model: Optional[CoreWithReadout] = None,
    **core_kwargs,
) -> tuple[CoreWithReadout, list[tuple[int, float]]]:
    """
    Train on lengths drawn uniformly from 1..max_length; return the model and the curve of
    (step, bit errors per sequence at max_length).

    :param model: a model to train further (a curriculum's next stage); None builds a new one
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    eval_generator = torch.Generator().manual_seed(seed + 1)
    if model is None:
        model = CoreWithReadout(core_name, **{**CORE_KWARGS[core_name], **core_kwargs})
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    curve = []
    for step in range(1, steps + 1):
        length = int(torch.randint(1, max_length + 1, (1,), generator=generator))
        inputs, targets = copy_batch(batch_size, length, generator)
        loss = loss_fn(model(inputs)[length + 1 :], targets)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, bit_errors(model, max_length, generator=eval_generator)))
            log(f"{core_name} step {step:6d}  loss {loss.item():.4f}  bit errors/seq @L={max_length}: {curve[-1][1]:.3f}")
    return model, curve


def time_one_sequence(core_name: str, length: int, repeats: int = 2, **core_kwargs: Any) -> None:
    """Print the fastest of ``repeats`` forward + backward passes over one copy sequence, and the state's size."""
    model = CoreWithReadout(core_name, **{**CORE_KWARGS[core_name], **core_kwargs})
    inputs, _ = copy_batch(1, length)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(inputs).square().mean().backward()
        seconds.append(time.perf_counter() - start)
    settings = " ".join(f"{key}={value}" for key, value in core_kwargs.items())
    print(
        f"TIME {core_name} {settings}: length {length} ({inputs.shape[0]} steps), batch 1, forward + backward "
        f"{min(seconds):.3f} s; state {model.core.state_size * 4 / 1e6:.2f} MB per sequence"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", nargs="+", default=["ntm", "dnc", "lstm"], choices=list(CORE_KWARGS))
    parser.add_argument("--steps", type=int, nargs="+", default=[20000], help="steps of each curriculum stage")
    parser.add_argument("--max-length", type=int, nargs="+", default=[20], help="longest length of each stage")
    parser.add_argument("--eval-length", type=int, nargs="*", default=[40], help="lengths to test generalisation on")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.1, help="bit errors per sequence counted as solved")
    parser.add_argument("--compile", action="store_true", help="compile the core step (faster after ~30 s)")
    parser.add_argument("--memory-units", type=int, help="N, the memory's slots (default: each core's own)")
    parser.add_argument("--sparse-top-k", type=int, help="sparse reads and writes over the top K slots (NTM, DNC)")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="sequences per generalisation length")
    parser.add_argument(
        "--time-length", type=int, help="only time one forward + backward of one sequence of this length (no training)"
    )
    args = parser.parse_args()
    if len(args.steps) != len(args.max_length):
        parser.error(f"--steps has {len(args.steps)} values and --max-length {len(args.max_length)}: give one per stage")
    memory_kwargs: dict[str, Any] = {}
    if args.memory_units is not None:
        memory_kwargs["memory_units"] = args.memory_units
    if args.sparse_top_k is not None:
        memory_kwargs["sparse_top_k"] = args.sparse_top_k
    torch.set_num_threads(1)
    if args.time_length is not None:
        for core_name in args.core:
            time_one_sequence(core_name, args.time_length, **({} if core_name == "lstm" else memory_kwargs))
        return
    for core_name in args.core:
        start = time.perf_counter()
        extra = {} if core_name == "lstm" else memory_kwargs
        model: Optional[CoreWithReadout] = None
        for stage, (steps, max_length) in enumerate(zip(args.steps, args.max_length)):
            model, curve = train(
                core_name,
                steps,
                max_length,
                args.batch_size,
                args.lr,
                args.seed + stage,
                model=model,
                compile_step=args.compile,
                **extra,
            )
            if stage == 0:
                solved = next((step for step, error in curve if error < args.threshold), None)
        assert model is not None
        params = sum(p.numel() for p in model.parameters())
        generator = torch.Generator().manual_seed(args.seed + 2)
        generalisation = {length: bit_errors(model, length, args.eval_batch_size, generator) for length in args.eval_length}
        print(
            f"RESULT {core_name}: params={params} steps_to_{args.threshold}_bits="
            f"{solved if solved is not None else f'>{args.steps[0]}'} final_bits@{args.max_length[-1]}={curve[-1][1]:.3f} "
            + " ".join(f"bits@{length}={error:.2f}" for length, error in generalisation.items())
            + f" wall={time.perf_counter() - start:.0f}s"
        )


if __name__ == "__main__":
    main()

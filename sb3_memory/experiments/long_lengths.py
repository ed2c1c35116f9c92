"""How far finished copy agents generalise in length: their final models on much longer episodes.

``scripts/compare.py`` scores a length task's final model at the trained lengths and at 2x and 4x
the longest. This goes further, for the runs of a ``--runs`` folder: every sequence of an episode
``L`` items long (``min_length = max_length = L``) for each ``--lengths`` L, never trained. A model
can only copy what fits in its memory: a DNC of 64 slots cannot hold 80 vectors, a sparse one of
1,024 can. Scores are mean ``bit_accuracy`` over deterministic episodes (0.5 is chance).

Usage (``scripts/long_lengths.py`` runs :func:`main`):
    python scripts/long_lengths.py --runs runs/capacity3m_v2 --algos memory_ppo-dnc memory_ppo-dnc-sparse \\
        --lengths 40 80 160 500 --table docs/results/capacity_long_lengths.md
"""

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from sb3_memory.experiments.compare import ALGOS, episode_scores, load_final_model, print_table, t_interval

ENV = "sb3_memory/BinaryCopy-v0"


def score_lengths(runs: Path, algo: str, lengths: list[int], episodes: int) -> dict[int, list[float]]:
    """Per length, the score of every finished seed of ``algo`` (in seed order)."""
    scores: dict[int, list[float]] = {length: [] for length in lengths}
    task = ENV.replace("/", "__")
    for folder in sorted((runs / algo / task).glob("seed_*"), key=lambda f: int(f.name.split("_")[1])):
        if not (folder / "result.json").exists():
            continue
        model = load_final_model(folder, ALGOS[algo][0])
        for length in lengths:
            kwargs = dict(min_length=length, max_length=length)
            scores[length].append(float(np.mean(episode_scores(model, ENV, kwargs, episodes))))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="a scripts/compare.py --runs folder")
    parser.add_argument("--algos", nargs="+", required=True, choices=list(ALGOS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[40, 80, 160])
    parser.add_argument("--episodes", type=int, default=10, help="episodes per length and seed")
    parser.add_argument("--table", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    lines = [
        "# Copying far longer sequences than trained",
        "",
        f"Made by `python scripts/long_lengths.py {shlex.join(sys.argv[1:])}`.",
        f"{ENV}, trained on lengths 1-20; every episode here holds exactly L vectors. Mean bit accuracy of "
        f"{args.episodes} deterministic episodes per seed (0.5 is chance), mean over seeds ± half-width of the 95% "
        "t-interval, then per seed.",
        "",
        "| agent | seeds | " + " | ".join(f"L = {length}" for length in args.lengths) + " |",
        "|---|---|" + "---|" * len(args.lengths),
    ]
    for algo in args.algos:
        scores = score_lengths(args.runs, algo, args.lengths, args.episodes)
        seeds = len(scores[args.lengths[0]])
        if not seeds:
            continue
        cells = []
        for length in args.lengths:
            mean, half = t_interval(scores[length])
            cells.append(f"{mean:.3f} ± {half:.3f} ({', '.join(f'{s:.2f}' for s in scores[length])})")
        lines.append(f"| {algo} | {seeds} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print_table(text, args.table)


if __name__ == "__main__":
    main()

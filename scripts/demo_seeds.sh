#!/usr/bin/env bash
# Counts the seeds on which scripts/demo.py (the README's top example) solves the T-maze: a mean return
# of at least 0.9 over its 100 deterministic evaluation episodes (the best memoryless policy scores 0.5).
# One run at a time on one torch thread, each in a fresh process, as a user runs the demo.
#   bash scripts/demo_seeds.sh [FIRST_SEED] [LAST_SEED]     (default: seeds 0-19)
# Prints one line per seed, then "solved: K of N seeds" and the CPU model the runs used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
first="${1:-0}"
last="${2:-19}"
solved=0
total=0
for seed in $(seq "$first" "$last"); do
    line="$(OMP_NUM_THREADS=1 "$PYTHON" scripts/demo.py --seed "$seed" | grep '^Mean return')"
    score="$(echo "$line" | sed -E 's/^Mean return over 100 episodes: (-?[0-9.]+).*/\1/')"
    total=$((total + 1))
    if "$PYTHON" -c "import sys; sys.exit(0 if float('$score') >= 0.9 else 1)"; then
        solved=$((solved + 1))
    fi
    echo "seed $seed: $line"
done
echo "solved: $solved of $total seeds (mean return >= 0.9)"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"

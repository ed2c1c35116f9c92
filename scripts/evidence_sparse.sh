#!/usr/bin/env bash
# Sparse reads and writes on the capacity task (issue: memory that scales): BinaryCopy-v0 (lengths
# 1-20, 8 bits) at the zoo entry's 3M steps, the sparse NTM and DNC with 1,024 slots and K = 8
# against the dense cores' 64 slots (their runs come from scripts/evidence_capacity.sh, linked in
# below). About 10-25
# CPU-minutes a run; WORKERS=2 on an otherwise idle machine. Resumable. Writes
# docs/results/capacity_sparse/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WORKERS=${WORKERS:-2}
SEEDS=${SEEDS:-"0 1 2 3 4"}
# The sparse runs get their own folder (the sparse cores changed since the first report: unwritten
# slots count once in a lookup); the dense runs of scripts/evidence_capacity.sh are linked in.
DENSE=runs/capacity3m_v2
RUNS=runs/capacity3m_v3
mkdir -p $RUNS
for algo in memory_ppo-dnc memory_ppo-ntm memory_ppo-lstm memory_ppo-lstm@600s-cpu; do
    ln -sfn "../$(basename $DENSE)/$algo" "$RUNS/$algo"
done
COMMON="--envs sb3_memory/BinaryCopy-v0 --budget 3000000 --eval-freq 100000 --score-episodes 50 --workers $WORKERS --runs $RUNS"
$PYTHON scripts/compare.py $COMMON --seeds $SEEDS --algos memory_ppo-ntm-sparse memory_ppo-dnc-sparse --out $RUNS/sparse
$PYTHON scripts/compare.py --report-only --envs sb3_memory/BinaryCopy-v0 --seeds $SEEDS \
    --algos memory_ppo-dnc memory_ppo-dnc-sparse memory_ppo-ntm memory_ppo-ntm-sparse memory_ppo-lstm \
    --runs $RUNS --out docs/results/capacity_sparse

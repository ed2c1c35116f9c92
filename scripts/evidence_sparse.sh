#!/usr/bin/env bash
# Sparse reads and writes on the capacity task (issue: memory that scales): BinaryCopy-v0 (lengths
# 1-20, 8 bits) at the zoo entry's 3M steps, the sparse NTM and DNC with 1,024 slots and K = 8
# against the dense cores' 64 slots (their runs come from scripts/evidence_capacity.sh, in the same
# runs folder), and the sparse DNC with the dense entry's 64 slots (sparsity alone). About 10-25
# CPU-minutes a run; WORKERS=2 on an otherwise idle machine. Resumable. Writes
# docs/results/capacity_sparse/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WORKERS=${WORKERS:-2}
SEEDS=${SEEDS:-"0 1 2 3 4"}
COMMON="--envs sb3_memory/BinaryCopy-v0 --budget 3000000 --eval-freq 100000 --score-episodes 50 --workers $WORKERS --runs runs/capacity3m_v2"
$PYTHON scripts/compare.py $COMMON --seeds $SEEDS --algos memory_ppo-ntm-sparse memory_ppo-dnc-sparse --out runs/capacity3m_v2/sparse
$PYTHON scripts/compare.py $COMMON --seeds ${DIAGNOSTIC_SEEDS:-0} --algos memory_ppo-dnc-sparse-n64 --out runs/capacity3m_v2/sparse_n64
$PYTHON scripts/compare.py --report-only --envs sb3_memory/BinaryCopy-v0 --seeds $SEEDS \
    --algos memory_ppo-dnc memory_ppo-dnc-sparse memory_ppo-dnc-sparse-n64 memory_ppo-ntm memory_ppo-ntm-sparse memory_ppo-lstm \
    --runs runs/capacity3m_v2 --out docs/results/capacity_sparse

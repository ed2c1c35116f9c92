#!/usr/bin/env bash
# The memory tasks at their default difficulty and the configs' full budgets, with today's
# defaults: NTM, DNC, the LSTMPolicy control, RecurrentPPO and PPO, 3 seeds. RepeatAfterDelay
# (delay 5, 500k steps) and Copy (length 10, 1M) take about 50 min on 2 cores (--workers 2);
# AssociativeRecall and the T-maze are left out here (see the README). Resumable.
# Writes docs/results/default/comparison.{md,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WORKERS=${WORKERS:-2}
ALGOS="memory_ppo-ntm memory_ppo-dnc memory_ppo-lstm ppo_lstm ppo"
COMPARE="$PYTHON scripts/compare.py --algos $ALGOS --seeds 0 1 2 --workers $WORKERS --eval-episodes 20 --runs runs/evidence_default --out runs/evidence_default/out"
$COMPARE --envs sb3_memory/RepeatAfterDelay-v0 --eval-freq 25000
$COMPARE --envs sb3_memory/Copy-v0 --eval-freq 50000
$PYTHON scripts/compare.py --report-only --algos $ALGOS --seeds 0 1 2 --runs runs/evidence_default --out docs/results/default

#!/usr/bin/env bash
# The memory tasks at an easy difficulty: NTM, DNC, the LSTMPolicy control, RecurrentPPO and PPO,
# 5 seeds, the zoo configs' recipes (critic and auxiliary settings as the configs say: the same
# for every recurrent agent of ours). Resumable: finished runs are kept in runs/evidence_easy.
# Writes docs/results/easy/comparison.{md,png}. About 75 min on 2 cores (--workers 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WORKERS=${WORKERS:-2}
ALGOS="memory_ppo-ntm memory_ppo-dnc memory_ppo-lstm ppo_lstm ppo"
COMPARE="$PYTHON scripts/compare.py --algos $ALGOS --seeds 0 1 2 3 4 --workers $WORKERS --eval-episodes 20 --runs runs/evidence_easy --out runs/evidence_easy/out"
$COMPARE --envs sb3_memory/PassiveTMaze-v0 --env-kwargs corridor_length:10 --budget 100000 --eval-freq 10000
$COMPARE --envs sb3_memory/RepeatAfterDelay-v0 --env-kwargs delay:3 --budget 300000 --eval-freq 25000
$COMPARE --envs sb3_memory/Copy-v0 --env-kwargs length:5 --budget 300000 --eval-freq 25000
$COMPARE --envs sb3_memory/AssociativeRecall-v0 --env-kwargs num_pairs:4 --budget 300000 --eval-freq 25000
$PYTHON scripts/compare.py --report-only --algos $ALGOS --seeds 0 1 2 3 4 --runs runs/evidence_easy --out docs/results/easy

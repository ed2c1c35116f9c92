#!/usr/bin/env bash
# The memory tasks at an easy difficulty: NTM, DNC, the LSTMPolicy control, RecurrentPPO and PPO,
# 5 seeds, the zoo configs' recipes (critic and auxiliary settings as the configs say: the same
# for every recurrent agent of ours). Resumable: finished runs are kept in runs/evidence_easy.
# Then the same with the auxiliary losses (recall and prediction at 0.1) on RepeatAfterDelay and
# Copy, MemoryA2C (its zoo entry: n_steps 32) and the DNC with its repairs on RepeatAfterDelay.
# Writes docs/results/easy/comparison.{md,png}. About 2.5 hours on 2 cores (--workers 2).
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
AUX="memory_ppo-ntm-aux memory_ppo-dnc-aux memory_ppo-lstm-aux"
A2C="memory_a2c-dnc memory_a2c-lstm"
for algos in "$AUX" "$A2C"; do
    SUBSET="$PYTHON scripts/compare.py --algos $algos --seeds 0 1 2 3 4 --workers $WORKERS --eval-episodes 20 --runs runs/evidence_easy --out runs/evidence_easy/out"
    $SUBSET --envs sb3_memory/RepeatAfterDelay-v0 --env-kwargs delay:3 --budget 300000 --eval-freq 25000
    [ "$algos" = "$A2C" ] || $SUBSET --envs sb3_memory/Copy-v0 --env-kwargs length:5 --budget 300000 --eval-freq 25000
done
# The DNC repairs run on the reference path (~480 steps/s): 3 seeds, about 20 min.
$PYTHON scripts/compare.py --algos memory_ppo-dnc-repairs --seeds 0 1 2 --workers $WORKERS --eval-episodes 20 --runs runs/evidence_easy --out runs/evidence_easy/out --envs sb3_memory/RepeatAfterDelay-v0 --env-kwargs delay:3 --budget 300000 --eval-freq 25000
$PYTHON scripts/compare.py --report-only --algos $ALGOS $AUX $A2C memory_ppo-dnc-repairs --seeds 0 1 2 3 4 --runs runs/evidence_easy --out docs/results/easy

#!/usr/bin/env bash
# The capacity evidence of the README ("Capacity tasks in RL"): BinaryCopy-v0 (lengths 1-20,
# 8 bits) at the zoo entries' 3M steps, 5 seeds; every agent at equal steps, and the LSTMPolicy
# control and RecurrentPPO at equal time: 600 s of their own CPU time each (--clock cpu), a little
# over the DNC's median, so runs sharing the machine stay comparable. Then Copy L=10 at 2M steps
# (the earlier pilot's recipe, 5 seeds). About 10 CPU-hours; run two at a time (WORKERS=2) on an
# otherwise idle machine. Resumable. Writes docs/results/capacity_3m_v2/ and
# docs/results/recipe_copy10_2m_5seeds.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WORKERS=${WORKERS:-2}
SEEDS="0 1 2 3 4"
COMMON="--envs sb3_memory/BinaryCopy-v0 --budget 3000000 --eval-freq 100000 --score-episodes 50 --seeds $SEEDS --workers $WORKERS --runs runs/capacity3m_v2"
$PYTHON scripts/compare.py $COMMON --algos memory_ppo-dnc memory_ppo-ntm memory_ppo-lstm ppo --out runs/capacity3m_v2/steps
$PYTHON scripts/compare.py $COMMON --algos ppo_lstm memory_ppo-lstm --wall-clock 600 --clock cpu --out runs/capacity3m_v2/time
$PYTHON scripts/compare.py --report-only --envs sb3_memory/BinaryCopy-v0 --seeds $SEEDS \
    --algos memory_ppo-dnc memory_ppo-ntm memory_ppo-lstm ppo_lstm ppo \
    --runs runs/capacity3m_v2 --out docs/results/capacity_3m_v2
$PYTHON scripts/recipe.py --env sb3_memory/Copy-v0 --env-kwargs length:10 --policies DNCPolicy LSTMPolicy \
    --settings gamma=0.5+lr=2e-3+clip=10 --seeds $SEEDS --steps 2000000 --workers $WORKERS --out runs/copy10_2m \
    --table docs/results/recipe_copy10_2m_5seeds.md

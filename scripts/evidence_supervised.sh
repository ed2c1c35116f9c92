#!/usr/bin/env bash
# The supervised bound: the recipe's NTM, DNC and LSTM cores trained on the memory tasks' optimal
# actions (cross-entropy, Adam lr 3e-3, clip 10, batch 16, 32k episodes, seeds 0-2), at the default
# and the easy difficulty. Writes docs/results/supervised.md. About 45 minutes on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=docs/results/supervised.md
printf '# The memory cores with the answers given\n\nMade by `bash scripts/evidence_supervised.sh` (sb3_memory/experiments/supervised.py).\n' > $OUT
RUN="$PYTHON scripts/supervised.py --table $OUT"
$RUN --env sb3_memory/Copy-v0 --env-kwargs length:10
$RUN --env sb3_memory/RepeatAfterDelay-v0 --env-kwargs delay:5
$RUN --env sb3_memory/AssociativeRecall-v0 --env-kwargs num_pairs:4
$RUN --env sb3_memory/Copy-v0 --env-kwargs length:5
$RUN --env sb3_memory/RepeatAfterDelay-v0 --env-kwargs delay:3
$RUN --env sb3_memory/AssociativeRecall-v0 --env-kwargs num_pairs:8

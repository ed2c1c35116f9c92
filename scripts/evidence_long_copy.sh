#!/usr/bin/env bash
# Copies of more than a thousand vectors, which only the sparse DNC can be trained on (issue 19's
# long task): the sparse DNC (N=2048 slots, K=8) is trained on the copy task with a length
# curriculum (lengths 1-20, then 1-100, then 1-300) and tested on 500, 1000 and 2000 vectors;
# then one sequence of length 300 is timed, sparse against dense, with the state each carries.
# About 15 minutes on one core. Writes docs/results/copy_long_sparse.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=docs/results/copy_long_sparse.md
TRAIN="--core dnc --memory-units 2048 --sparse-top-k 8 --lr 3e-3 --max-length 20 100 300 --steps 2000 1200 600 --eval-length 500 1000 2000 --eval-batch-size 8"
{
    echo "# Copying more than a thousand vectors: the sparse DNC"
    echo
    echo "Made by \`bash scripts/evidence_long_copy.sh\`: \`python scripts/copy_task.py $TRAIN\`, then"
    echo "\`--time-length 300\` for the sparse and the dense DNC of 2,048 slots. One thread, seed 0."
    echo "Bits per sequence: wrong bits (of 8 per vector), mean over the test batch."
    echo
    echo '```'
    $PYTHON scripts/copy_task.py $TRAIN | grep RESULT
    $PYTHON scripts/copy_task.py --core dnc --memory-units 2048 --sparse-top-k 8 --time-length 300
    $PYTHON scripts/copy_task.py --core dnc --memory-units 2048 --time-length 300
    echo '```'
} > "$OUT"
echo "wrote $OUT"

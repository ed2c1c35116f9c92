#!/usr/bin/env bash
# Creates ./.venv if needed and installs sb3-memory into it, editable, with the given extras
# (default "dev": tests, rl-zoo3, Optuna, matplotlib).
# torch is installed first and pinned to the CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[${extras}]"

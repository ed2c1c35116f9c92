#!/usr/bin/env bash
# Creates ./.venv if needed and installs sb3-memory into it, editable, with the given extras
# (default "dev": tests, rl-zoo3, Optuna, matplotlib, Sphinx), compiling the native kernels.
# torch is installed first and pinned to the CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
# pip's own progress is shown (a fresh set-up downloads a few hundred MB). A second run with the same
# extras, pyproject.toml, setup.py and kernel sources installs nothing (a stamp in .venv records them).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
pip_install() { .venv/bin/python -m pip install --disable-pip-version-check --progress-bar on "$@"; }
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: [1/2] PyTorch 2.13.0, CPU build"
    pip_install "torch==2.13.0"
fi
stamp=.venv/sb3_memory_setup.stamp
inputs="$(cat pyproject.toml setup.py build_support/*.py sb3_memory/memory/kernel_build.py sb3_memory/memory/csrc/* | sha256sum | cut -c1-16) [$extras]"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ] && .venv/bin/python -m pip show --quiet sb3-memory 2>/dev/null; then
    echo "setup: sb3-memory[${extras}] is installed and up to date"
    exit 0
fi
echo "setup: [2/2] sb3-memory and its [${extras}] extras (compiles the native kernels: a minute or two)"
rm -f "$stamp"
if .venv/bin/python -m pip show --quiet sb3-memory 2>/dev/null; then
    pip_install --quiet -e ".[${extras}]"  # already installed: only what changed, without the listing
else
    pip_install -e ".[${extras}]" | { grep -v -e "^Requirement already satisfied" -e "^  Using cached" || true; }
fi
echo "$inputs" > "$stamp"
echo "setup: done"

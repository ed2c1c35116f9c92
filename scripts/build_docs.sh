#!/usr/bin/env bash
# Builds the documentation site into docs/_build/html with warnings as errors (as CI does).
# Needs the docs extra: bash scripts/setup.sh installs it with dev; otherwise pip install -e ".[docs]".
#   bash scripts/build_docs.sh [extra sphinx-build options, e.g. -E to rebuild every page]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m sphinx -W --keep-going -b html "$@" docs docs/_build/html
echo "build_docs: open docs/_build/html/index.html"

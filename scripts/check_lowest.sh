#!/usr/bin/env bash
# Tests the lower bounds that pyproject.toml declares: installs sb3-memory with its [dev] extras into a
# throwaway venv with every [project] dependency pinned to its `>=` bound (stable-baselines3, sb3-contrib,
# gymnasium, numpy and torch at the oldest releases the range admits), then runs the fast test suite there.
# A dependency without a `>=` bound stops the check: its range would be untested.
#
#   bash scripts/check_lowest.sh                      # the fast suite (pyproject's addopts: -m 'not slow')
#   bash scripts/check_lowest.sh tests/test_algorithms.py -k ppo   # arguments go to pytest instead of -x -q
#
# The extras' own dependencies (rl-zoo3, Optuna, ONNX, ...) resolve to whatever suits the pins.
# torch comes from the CPU wheel scripts/setup.sh uses: any other torch version would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
base_python="${PYTHON:-python3}"
work=$(mktemp -d "${TMPDIR:-/tmp}/sb3-memory-lowest.XXXXXX")
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# The checkout's files (tracked, and untracked ones git does not ignore) copied into the venv's folder:
# installing writes next to the sources (the kernel libraries, build/, egg-info), and those must not land
# in the checkout that .venv runs from.
repo="$work/src"
mkdir "$repo"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$repo"
cd "$repo"

"$base_python" -m venv "$work/venv"
py="$work/venv/bin/python"
# This machine's pip.conf names local indexes that hold only some packages; pip warns for every other one.
pip_install() {
    "$py" -m pip install --disable-pip-version-check --quiet "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
}
torch_wheel=2.13.0
echo "lowest: [1/3] PyTorch $torch_wheel, CPU build, on $("$py" --version)"
pip_install "torch==$torch_wheel"

# name>=X[,<Y] -> name==X (environment markers kept), one line per [project] dependency.
"$py" - "$repo/pyproject.toml" "$torch_wheel" >"$work/constraints.txt" <<'EOF'
import re
import sys
import tomllib

pyproject, torch_wheel = sys.argv[1:]

with open(pyproject, "rb") as file:
    dependencies = tomllib.load(file)["project"]["dependencies"]
unbounded = []
for dependency in dependencies:
    requirement, _, marker = dependency.partition(";")
    name, specifiers = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^]]*\])?\s*(.*?)\s*", requirement).groups()
    lowest = [spec[2:].strip() for spec in specifiers.split(",") if spec.strip().startswith(">=")]
    if len(lowest) != 1:
        unbounded.append(dependency)
        continue
    if name == "torch" and lowest[0].split("+")[0].removesuffix(".0") != torch_wheel.removesuffix(".0"):
        # Any torch but the CPU wheel on disk would make pip download a multi-GB CUDA build.
        sys.exit(f"lowest: torch's bound {lowest[0]} is not the CPU wheel this check installs ({torch_wheel})")
    print(f"{name}=={lowest[0]}" + (f" ; {marker.strip()}" if marker else ""))
if unbounded:
    sys.exit(f"lowest: give each of these a single `>=` lower bound in pyproject.toml: {unbounded}")
EOF
echo "lowest: [2/3] sb3-memory[dev] with $(paste -sd' ' "$work/constraints.txt")"
# Editable, as scripts/setup.sh installs it: the tests import the copy they run from.
pip_install --constraint "$work/constraints.txt" -e "$repo[dev]"
# What the suite runs against, for the log (a constraint pip could not meet has already failed above).
"$py" -m pip list --disable-pip-version-check 2>/dev/null |
    grep -i -E "^(torch|stable.baselines3|sb3.contrib|gymnasium|numpy|rl.zoo3) " || true

echo "lowest: installed in ${SECONDS} s; [3/3] pytest ${*:--x -q}"
if [ "$#" -eq 0 ]; then set -- -x -q; fi
tests_started=$SECONDS
status=0
"$py" -m pytest "$@" || status=$?
echo "lowest: tests took $((SECONDS - tests_started)) s, ${SECONDS} s in all"
exit "$status"

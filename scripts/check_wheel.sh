#!/usr/bin/env bash
# The wheel as a user gets it (run by .ci/run):
#  1. `pip wheel --no-deps .` makes a platform-tagged wheel that holds the compiled kernels (every
#     instruction-set level, both scalar types) and the rl-zoo3 configs;
#  2. installed into a fresh virtual environment, with no C++ compiler on PATH and an empty kernel
#     cache, it loads its own kernels and trains a rollout with backend="native";
#  3. from a folder with nothing of the checkout in it, the comparison harness runs a tiny grid
#     through rl-zoo3 with the configs the wheel ships, and writes its runs and table relative to
#     that folder (runs/compare, docs/results).
# The fresh environment takes its dependencies (torch, SB3...) from .venv through a .pth file: the
# wheel itself is installed with --no-deps, so nothing of the checkout can stand in for it.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

.venv/bin/python -m pip wheel --no-deps --no-build-isolation --quiet --disable-pip-version-check -w "$work/dist" .
wheel="$(ls "$work"/dist/sb3_memory-*.whl)"
echo "check_wheel: built $(basename "$wheel")"
.venv/bin/python - "$wheel" <<'PY'
import sys, zipfile
from sb3_memory.memory import kernel_build

wheel = sys.argv[1]
if wheel.endswith("-none-any.whl"):
    sys.exit(f"{wheel} is not platform-tagged: it holds no compiled kernels")
names = zipfile.ZipFile(wheel).namelist()
missing = [
    kernel_build.library_stem(level, dtype)
    for level in kernel_build.levels()
    for dtype in kernel_build.DTYPE_MACROS
    if not any(name.startswith(f"sb3_memory/memory/{kernel_build.library_stem(level, dtype)}.") for name in names)
]
if missing:
    sys.exit(f"{wheel} lacks the kernels {missing}")
if not any(name.startswith("sb3_memory/zoo_configs/") and name.endswith(".yml") for name in names):
    sys.exit(f"{wheel} lacks the rl-zoo3 configs")
print(f"check_wheel: the wheel holds {2 * len(kernel_build.levels())} kernel libraries and the rl-zoo3 configs")
PY

python3 -m venv "$work/venv"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
deps="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$work/venv/bin/python" -m pip install --no-deps --quiet --disable-pip-version-check "$wheel"
echo "$deps" > "$site/zz_dependencies_from_dev_venv.pth"

# Outside the checkout (so the checkout's sb3_memory is not on sys.path), with PATH holding the fresh
# environment's bin/ only (python, pip): no c++, g++ or clang++ to build with.
mkdir "$work/run"
cd "$work/run"
env -u CXX PATH="$work/venv/bin" SB3_MEMORY_CACHE="$work/empty-cache" OMP_NUM_THREADS=1 python - "$root" <<'PY'
import os, sys
from pathlib import Path

import sb3_memory
from sb3_memory import MemoryPPO
from sb3_memory.envs import PassiveTMazeEnv
from sb3_memory.memory import native

root = Path(sys.argv[1])
assert root not in Path(sb3_memory.__file__).parents, f"imported the checkout, not the wheel: {sb3_memory.__file__}"
assert native._compiler() is None, "a compiler is on PATH"
library = native.load_library()
assert library.origin == "package", library
model = MemoryPPO(
    "DNCPolicy", PassiveTMazeEnv(corridor_length=3), n_steps=64, batch_size=64, n_epochs=1, seed=0,
    policy_kwargs=dict(backend="native"),
)
model.learn(128)
assert model.num_timesteps == 128
assert not Path(os.environ["SB3_MEMORY_CACHE"]).exists(), "the kernels were built at run time"
print(f"check_wheel: the installed wheel trained with its {library.level} kernels, no compiler, nothing built")
PY
env -u CXX PATH="$work/venv/bin" SB3_MEMORY_CACHE="$work/empty-cache" OMP_NUM_THREADS=1 \
    python -m sb3_memory.experiments.compare --envs CartPoleNoVel-v1 --algos memory_ppo-lstm --seeds 0 \
    --budget 512 --eval-freq 256 --eval-episodes 2 >"$work/compare.log" 2>&1 || { cat "$work/compare.log"; exit 1; }
python3 - <<'PY'
import json
from pathlib import Path

(result,) = Path("runs/compare").rglob("result.json")
run = json.loads(result.read_text())
assert (run["algo"], run["env"], run["seed"], run["budget"]) == ("memory_ppo-lstm", "CartPoleNoVel-v1", 0, 512), run
assert run["timesteps"][-1] == 512, run["timesteps"]
table = Path("docs/results/comparison.md").read_text()
assert "| CartPoleNoVel-v1 | memory_ppo-lstm | 1 | 512 |" in table, table
print("check_wheel: the installed wheel's comparison harness ran a grid through rl-zoo3 with its own configs")
PY

#!/usr/bin/env bash
# Every code path a user's CPU may take, on this one machine (run by .ci/run):
#  - tests/test_native.py against the kernels of each instruction-set level this CPU can run but
#    does not load by default (SB3_MEMORY_ISA forces one; the default level is the main test run's;
#    a level the CPU lacks is reported, not run: its code would stop with an illegal instruction);
#  - at the baseline level, PyTorch's and MKL's own dispatch forced down as well
#    (ATEN_CPU_CAPABILITY=default, MKL_ENABLE_INSTRUCTIONS=SSE4_2), so the float32 reference the
#    kernels are compared with takes another BLAS path than the default run's.
set -euo pipefail
cd "$(dirname "$0")/.."
levels="$(.venv/bin/python -c 'from sb3_memory.memory import kernel_build; print(*kernel_build.levels())')"
supported="$(.venv/bin/python -c 'from sb3_memory.memory import kernel_build; print(*kernel_build.supported_levels())')"
default="${supported##* }"  # the widest this CPU runs: the main test run loads it already
for level in $levels; do
    if [ "$level" = "$default" ]; then
        echo "check_isa: the $level kernels are this CPU's default: the main test run covers them"
        continue
    fi
    if [[ " $supported " != *" $level "* ]]; then
        echo "check_isa: this CPU cannot run the $level kernels; they are built (check_wheel.sh) but not tested here"
        continue
    fi
    extra=()
    if [ "$level" = baseline ]; then
        extra=(ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2)
    fi
    echo "check_isa: tests/test_native.py with SB3_MEMORY_ISA=$level ${extra[*]}"
    env SB3_MEMORY_ISA="$level" "${extra[@]}" OMP_NUM_THREADS=1 \
        .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_native.py tests/test_native_ops.py "$@"
done

#!/usr/bin/env bash
# The native kernels under a strict compiler and under sanitizers (run by .ci/run).
#  1. compile the shipped library's translation unit for both scalar types, and the tests' own
#     (testing_api.cpp, the primitives one by one), with -Wall -Wextra -Werror;
#  2. run tests/test_native.py and tests/test_native_ops.py (4 threads predicting on one model) once
#     against kernels built with AddressSanitizer and
#     UndefinedBehaviorSanitizer, in a private cache, so an out-of-bounds tape or scratch
#     access fails CI instead of corrupting memory quietly (the tests compile testing_api.cpp and
#     the per-instruction-set builds with the same flags, from $SB3_MEMORY_CXXFLAGS). Left out here, run
#     by the main test run: the bitwise test across instruction-set levels and the check of the shipped
#     library's exports (both build every level: more sanitized builds of the same code),
#     the tests of the build machinery (forced levels and the cache: more sanitized builds of code
#     the other tests run already) and the operator and torch.compile checks (PyTorch's own tracing,
#     no kernel code of ours). Two test processes (-n 2): a report still fails the run, through the
#     test whose process aborted, and ASan writes it to the process's stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
cxx="${CXX:-c++}"
csrc=sb3_memory/memory/csrc
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
strict=(-O2 -std=c++17 -shared -fPIC -fopenmp-simd -Wall -Wextra -Werror)
# The three compiles run side by side (one per core on a 2-core runner): wait reports each failure.
pids=()
for dtype in SMEM_FLOAT32 SMEM_FLOAT64; do
    "$cxx" "${strict[@]}" -D"$dtype" "$csrc/memory_kernels.cpp" -o "$out/$dtype.so" &
    pids+=($!)
done
"$cxx" "${strict[@]}" -DSMEM_FLOAT64 "$csrc/testing_api.cpp" -o "$out/testing_api.so" &
pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done
echo "kernels compile cleanly with -Wall -Wextra -Werror"

# -O1 -g1 (last, so they override the build's -O3): AddressSanitizer's recommended level, with line
# tables for the reports' stacks; an -O3 sanitized build takes 4x as long to compile (170 s against
# 40 s per library here) and these tests run small shapes.
sanitizers="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1 -g1"
# Python itself is not built with ASan: preload the runtime and ignore the interpreter's leaks;
# --capture=sys leaves file descriptor 2 alone, so a sanitizer report reaches the log.
# SB3_MEMORY_BUILD=1: build from csrc/ with these flags even where the package holds built kernels.
CI=true SB3_MEMORY_BUILD=1 SB3_MEMORY_CACHE="$out/cache" SB3_MEMORY_CXXFLAGS="$sanitizers" \
    LD_PRELOAD="$("$cxx" -print-file-name=libasan.so):$("$cxx" -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    .venv/bin/python -m pytest -q -n 2 -p no:cacheprovider --capture=sys tests/test_native.py tests/test_native_ops.py \
    -k "not instruction_set_level and not shipped_library_exports and not torch_compile and not pytorchs_checks and not forced_level and not cached_library" "$@"
echo "tests/test_native.py and test_native_ops.py (threads included) pass under AddressSanitizer and UndefinedBehaviorSanitizer"

"""
How the native kernels are built and which build a CPU runs: written once, for ``setup.py`` (which
compiles them into the wheel) and for :mod:`sb3_memory.memory.native` (which picks one at load time
and, in a source checkout without a build, compiles it on first use).

This module imports nothing but the standard library: ``setup.py`` loads it by path in pip's
isolated build environment, where neither torch nor sb3_memory is installed.

The kernels are built once per scalar type and instruction-set level. The levels are portable
targets, never ``-march=native``: ``baseline`` runs on every x86-64 CPU, ``avx2`` and ``avx512``
add wider vectors. The C++ sums in a fixed order whatever the vector width, so every level gives
the same bits; the level only changes the speed.
"""

import hashlib
import os
import platform
from pathlib import Path
from typing import Optional

CSRC = Path(__file__).with_name("csrc")
# The one translation unit of the shipped library; it includes the other files in csrc/.
SOURCE = CSRC / "memory_kernels.cpp"
# Only the tests compile this one (sb3_memory never loads it).
TESTING_SOURCE = CSRC / "testing_api.cpp"
DTYPE_MACROS = {"float32": "SMEM_FLOAT32", "float64": "SMEM_FLOAT64"}
# -ffp-contract=off: no fused multiply-adds, so a level with FMA units rounds as the baseline does.
COMPILE_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-ffp-contract=off")
# Levels from the most portable up; the flags name each extension rather than a CPU model, so the
# code runs on any CPU that reports the features in X86_CPU_FEATURES.
X86_LEVELS = ("baseline", "avx2", "avx512")
X86_LEVEL_FLAGS = {
    "baseline": ("-march=x86-64", "-mtune=generic"),
    "avx2": ("-march=x86-64", "-mtune=generic", "-mavx2"),
    "avx512": ("-march=x86-64", "-mtune=generic", "-mavx2", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"),
}
# What /proc/cpuinfo must list for a level (the operating system saves the wider registers whenever it lists them).
X86_CPU_FEATURES = {
    "baseline": frozenset(),
    "avx2": frozenset({"avx", "avx2"}),
    "avx512": frozenset({"avx", "avx2", "avx512f", "avx512vl", "avx512bw", "avx512dq"}),
}
# Forces a level, e.g. to test every code path a user's CPU may take on one machine.
ISA_ENV = "SB3_MEMORY_ISA"


def is_x86_64(machine: Optional[str] = None) -> bool:
    """Whether ``machine`` (default: this one) is an x86-64 CPU."""
    return (machine or platform.machine()).lower() in ("x86_64", "amd64")


def levels(machine: Optional[str] = None) -> tuple[str, ...]:
    """The instruction-set levels built for ``machine``: three on x86-64, one (``baseline``) elsewhere."""
    return X86_LEVELS if is_x86_64(machine) else ("baseline",)


def level_flags(level: str, machine: Optional[str] = None) -> tuple[str, ...]:
    """Compiler flags of one level (none off x86-64: the compiler's default target is portable there)."""
    if level not in levels(machine):
        raise ValueError(f"unknown instruction-set level {level!r}; this machine's levels are {levels(machine)}")
    return X86_LEVEL_FLAGS[level] if is_x86_64(machine) else ()


def library_stem(level: str, dtype: str) -> str:
    """The module name of one built library, e.g. ``_kernels_avx2_float32`` (the file adds the platform suffix)."""
    if dtype not in DTYPE_MACROS:
        raise ValueError(f"no native kernels for {dtype!r}; they support {sorted(DTYPE_MACROS)}")
    return f"_kernels_{level}_{dtype}"


def source_digest() -> str:
    """A digest of every file in ``csrc/``: a built library records it, so a stale build is noticed."""
    digest = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.suffix in (".h", ".cpp"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def digest_define(digest: str) -> str:
    """The ``-D`` argument that bakes ``digest`` into a build (``smem_source_digest`` returns it)."""
    return f'-DSMEM_SOURCE_DIGEST="{digest}"'


def cpu_features() -> Optional[frozenset[str]]:
    """The CPU's feature flags from ``/proc/cpuinfo``, or None where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def supported_levels(features: Optional[frozenset[str]] = None, machine: Optional[str] = None) -> tuple[str, ...]:
    """
    The levels this CPU can run, from the most portable up.

    :param features: the CPU's flags (default: :func:`cpu_features`); without any (no ``/proc/cpuinfo``)
        only ``baseline`` is trusted
    """
    if not is_x86_64(machine):
        return ("baseline",)
    features = cpu_features() if features is None else features
    if features is None:
        return ("baseline",)
    return tuple(level for level in X86_LEVELS if X86_CPU_FEATURES[level] <= features)


def select_level(features: Optional[frozenset[str]] = None, machine: Optional[str] = None) -> str:
    """
    The level to run: ``$SB3_MEMORY_ISA`` if set, otherwise the widest the CPU supports.

    :raises ValueError: ``$SB3_MEMORY_ISA`` names an unknown level, or one this CPU cannot run
    """
    supported = supported_levels(features, machine)
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if not forced:
        return supported[-1]
    if forced not in levels(machine):
        raise ValueError(f"{ISA_ENV}={forced!r} is not a level; use one of {levels(machine)} (or unset it)")
    if forced not in supported:
        raise ValueError(
            f"{ISA_ENV}={forced!r}, but this CPU only runs {supported}: its code would stop with an illegal "
            f"instruction; unset {ISA_ENV} or pick one of those"
        )
    return forced

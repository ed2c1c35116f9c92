"""
The build steps pyproject.toml cannot declare: the native memory kernels, compiled into the
package as one shared library per scalar type and instruction-set level (see
sb3_memory/memory/kernel_build.py; loaded with ctypes, so they use no Python or PyTorch headers),
and the rl-zoo3 configs copied from the top-level zoo_configs/ (build_support/zoo_configs.py).
Everything else about the package is in pyproject.toml.
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from build_support.zoo_configs import BuildPyWithZooConfigs  # noqa: E402

# By path: pip builds in an isolated environment without torch, so the package cannot be imported.
_spec = importlib.util.spec_from_file_location("kernel_build", HERE / "sb3_memory" / "memory" / "kernel_build.py")
assert _spec is not None and _spec.loader is not None
kernel_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_build)
# CI=true (and SB3_MEMORY_REQUIRE_KERNELS=1) turn a failed kernel build into a failed install; elsewhere
# the package installs without them and builds them on first use, or runs the reference path.
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("SB3_MEMORY_REQUIRE_KERNELS") == "1"
# SB3_MEMORY_NO_KERNELS=1 builds none: for a second environment over a checkout whose editable install
# already built them in place (scripts/check_lowest.sh), or a source install that compiles on first use.
BUILD_KERNELS = os.environ.get("SB3_MEMORY_NO_KERNELS") != "1"


class BuildKernels(build_ext):
    """Compiles the kernel libraries in parallel, with the flags of each one's level."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "msvc":
            raise RuntimeError("the native kernels build with GCC or Clang only; MSVC is not supported")
        # Every library compiles the same source file: each gets a folder of its own for the object
        # file, or parallel builds would write one another's (setuptools names objects by source).
        objects = self.compiler.compile(
            ext.sources,
            output_dir=os.path.join(self.build_temp, ext.name),
            extra_postargs=ext.extra_compile_args,
            depends=ext.depends,
        )
        self.compiler.link_shared_object(
            objects, self.get_ext_fullpath(ext.name), build_temp=self.build_temp, target_lang="c++"
        )

    def get_export_symbols(self, ext: Extension) -> list:
        return []  # plain C libraries loaded with ctypes: no PyInit_ function to export


def kernel_extensions() -> list:
    sources = [str(kernel_build.SOURCE.relative_to(HERE))]
    depends = [str(path.relative_to(HERE)) for path in sorted(kernel_build.CSRC.glob("*.h"))]
    digest = kernel_build.source_digest()
    return [
        Extension(
            f"sb3_memory.memory.{kernel_build.library_stem(level, dtype)}",
            sources=sources,
            depends=depends,
            language="c++",
            extra_compile_args=[
                "-g0",  # Python's own CFLAGS ask for debug information: six times the library's size
                *kernel_build.COMPILE_FLAGS,
                *kernel_build.level_flags(level),
                f"-D{macro}",
                kernel_build.digest_define(digest),
            ],
            optional=not REQUIRED,
        )
        for level in kernel_build.levels()
        for dtype, macro in kernel_build.DTYPE_MACROS.items()
    ]


setup(
    ext_modules=kernel_extensions() if BUILD_KERNELS else [],
    cmdclass={"build_ext": BuildKernels, "build_py": BuildPyWithZooConfigs},
)

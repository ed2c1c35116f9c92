"""
setuptools ``build_py`` that also puts the checkout's ``zoo_configs/*.yml`` into the built
``sb3_memory/zoo_configs/`` package, so that a wheel ships the rl-zoo3 configs and
:func:`sb3_memory.zoo_configs.config_path` finds them in an installed copy.

``package-data`` cannot name files outside a package's folder, hence this step. It is wired in
``pyproject.toml`` (``[tool.setuptools.cmdclass] build_py``); a ``setup.py`` that passes its own
``cmdclass`` should keep this one: ``cmdclass={"build_py": BuildPyWithZooConfigs, ...}``.
An editable install copies nothing: there ``config_path`` reads the checkout's folder directly.
"""

from pathlib import Path

from setuptools.command.build_py import build_py

#: The checkout's config folder (this file is ``<root>/build_support/zoo_configs.py``).
SOURCE_DIR = Path(__file__).resolve().parents[1] / "zoo_configs"
#: Where the configs go inside the built tree, as a package path.
TARGET_PACKAGE = ("sb3_memory", "zoo_configs")


def config_files(source_dir: Path = SOURCE_DIR) -> list[Path]:
    """The config files a build copies, sorted (an empty list is an error: the wheel would lack them)."""
    files = sorted(source_dir.glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"no rl-zoo3 configs (*.yml) in {source_dir}: the wheel would ship none")
    return files


class BuildPyWithZooConfigs(build_py):
    """setuptools' ``build_py``, then the configs copied into ``build_lib/sb3_memory/zoo_configs/``."""

    def _config_targets(self) -> list[tuple[Path, Path]]:
        target_dir = Path(self.build_lib, *TARGET_PACKAGE)
        return [(source, target_dir / source.name) for source in config_files()]

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for source, target in self._config_targets():
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            outputs += [str(target) for _, target in self._config_targets()]
        return outputs

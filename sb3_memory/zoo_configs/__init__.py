"""
The rl-zoo3 hyperparameter files (``<algo>.yml``). They live in the checkout's top-level
``zoo_configs/`` folder; a wheel carries them inside this package (``build_support/zoo_configs.py``
copies them there at build time), so an installed copy finds them too::

    python -m sb3_memory.zoo train --algo memory_ppo --env CartPoleNoVel-v1 -conf zoo_configs/memory_ppo.yml
    python -m sb3_memory.zoo train --algo memory_ppo --env CartPoleNoVel-v1   # memory_* algos: this package's file

or ``-conf $(python -c "from sb3_memory.zoo_configs import config_path; print(config_path('memory_ppo'))")``.
"""

from pathlib import Path

__all__ = ["CONFIG_DIR", "config_dirs", "config_path"]

#: Where an installed copy (a wheel) keeps the configs: this package's own folder.
PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent
#: Where a checkout keeps them: ``zoo_configs/`` beside the ``sb3_memory`` package.
CHECKOUT_CONFIG_DIR = PACKAGE_CONFIG_DIR.parents[1] / "zoo_configs"


def config_dirs() -> list[Path]:
    """The folders holding config files, the installed package data first, then the checkout's."""
    return [folder for folder in (PACKAGE_CONFIG_DIR, CHECKOUT_CONFIG_DIR) if any(folder.glob("*.yml"))]


def _config_dir() -> Path:
    folders = config_dirs()
    # Neither has any: name the checkout's folder, so that the error below says where they belong.
    return folders[0] if folders else CHECKOUT_CONFIG_DIR


#: The folder the configs are read from (see :func:`config_dirs`).
CONFIG_DIR = _config_dir()


def config_path(name: str) -> Path:
    """
    The path of one config file.

    :param name: ``"memory_ppo"``, ``"memory_a2c"``, ``"memory_dqn"``, ``"memory_sac"``, ``"ppo_lstm"``,
        ``"ppo"`` or ``"quickstart"`` (``.yml`` optional)
    :raises FileNotFoundError: naming the files there are
    """
    filename = name if name.endswith(".yml") else f"{name}.yml"
    for folder in config_dirs():
        if (folder / filename).is_file():
            return folder / filename
    available = sorted({path.stem for folder in config_dirs() for path in folder.glob("*.yml")})
    raise FileNotFoundError(f"no zoo config {name!r} in {CONFIG_DIR}; there are {available}")

"""
The rl-zoo3 hyperparameter files (``<algo>.yml``), shipped with the package so that an installed
copy finds them: ``python -m sb3_memory.zoo train ... -conf $(python -c "from sb3_memory.zoo_configs
import config_path; print(config_path('memory_ppo'))")``, or from a checkout ``-conf
sb3_memory/zoo_configs/memory_ppo.yml``.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> Path:
    """
    The path of one config file.

    :param name: ``"memory_ppo"``, ``"memory_a2c"``, ``"ppo_lstm"``, ``"ppo"`` or ``"quickstart"`` (``.yml`` optional)
    :raises FileNotFoundError: naming the files there are
    """
    path = CONFIG_DIR / (name if name.endswith(".yml") else f"{name}.yml")
    if not path.is_file():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.yml"))
        raise FileNotFoundError(f"no zoo config {name!r} in {CONFIG_DIR}; there are {available}")
    return path

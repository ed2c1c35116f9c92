"""sb3-memory: Neural Turing Machine and Differentiable Neural Computer policies for Stable-Baselines3.

The algorithms and policies load on first use, so that ``import sb3_memory.memory`` (the cores in
pure PyTorch) does not import Stable-Baselines3, sb3-contrib or gymnasium. The ``sb3_memory/...``
environments are registered by ``import sb3_memory.envs``, by the first use of any name below, and
by ``import sb3_memory`` itself when gymnasium is already imported.
"""

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOMES = {
    "MemoryA2C": "sb3_memory.a2c",
    "MemoryDQN": "sb3_memory.dqn",
    "MemoryPPO": "sb3_memory.ppo",
    "MemorySAC": "sb3_memory.sac",
    "MaskableMemoryPPO": "sb3_memory.ppo_mask",
    **{
        name: "sb3_memory.common.policies"
        for name in (
            "CnnDNCPolicy",
            "CnnLSTMPolicy",
            "CnnNTMPolicy",
            "DNCPolicy",
            "LSTMPolicy",
            "MemoryActorCriticPolicy",
            "MultiInputDNCPolicy",
            "MultiInputLSTMPolicy",
            "MultiInputNTMPolicy",
            "NTMPolicy",
        )
    },
}

__all__ = [
    "CnnDNCPolicy",
    "CnnLSTMPolicy",
    "CnnNTMPolicy",
    "DNCPolicy",
    "LSTMPolicy",
    "MaskableMemoryPPO",
    "MemoryA2C",
    "MemoryActorCriticPolicy",
    "MemoryDQN",
    "MemoryPPO",
    "MemorySAC",
    "MultiInputDNCPolicy",
    "MultiInputLSTMPolicy",
    "MultiInputNTMPolicy",
    "NTMPolicy",
]

if TYPE_CHECKING:
    from sb3_memory.a2c import MemoryA2C
    from sb3_memory.common.policies import (
        CnnDNCPolicy,
        CnnLSTMPolicy,
        CnnNTMPolicy,
        DNCPolicy,
        LSTMPolicy,
        MemoryActorCriticPolicy,
        MultiInputDNCPolicy,
        MultiInputLSTMPolicy,
        MultiInputNTMPolicy,
        NTMPolicy,
    )
    from sb3_memory.dqn import MemoryDQN
    from sb3_memory.ppo import MemoryPPO
    from sb3_memory.ppo_mask import MaskableMemoryPPO
    from sb3_memory.sac import MemorySAC


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'sb3_memory' has no attribute {name!r}")
    importlib.import_module("sb3_memory.envs")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


# ``import gymnasium; import sb3_memory; gymnasium.make("sb3_memory/Copy-v0")`` keeps working, and the
# pure-PyTorch import path stays free of gymnasium when nothing else has loaded it.
if "gymnasium" in sys.modules:
    importlib.import_module("sb3_memory.envs")

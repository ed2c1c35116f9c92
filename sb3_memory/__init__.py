"""sb3-memory: Neural Turing Machine and Differentiable Neural Computer policies for Stable-Baselines3."""

import sb3_memory.envs  # noqa: F401  (registers the sb3_memory/... environments)
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
from sb3_memory.ppo import MemoryPPO
from sb3_memory.ppo_mask import MaskableMemoryPPO

__version__ = "0.1.0"

__all__ = [
    "CnnDNCPolicy",
    "CnnLSTMPolicy",
    "CnnNTMPolicy",
    "DNCPolicy",
    "LSTMPolicy",
    "MaskableMemoryPPO",
    "MemoryA2C",
    "MemoryActorCriticPolicy",
    "MemoryPPO",
    "MultiInputDNCPolicy",
    "MultiInputLSTMPolicy",
    "MultiInputNTMPolicy",
    "NTMPolicy",
]

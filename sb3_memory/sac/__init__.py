import sb3_memory.envs  # noqa: F401  (registers the sb3_memory/... environments, as SB3 users expect)
from sb3_memory.sac.policies import (
    CnnDNCPolicy,
    CnnLSTMPolicy,
    CnnNTMPolicy,
    DNCPolicy,
    LSTMPolicy,
    MemorySACPolicy,
    MultiInputDNCPolicy,
    MultiInputLSTMPolicy,
    MultiInputNTMPolicy,
    NTMPolicy,
)
from sb3_memory.sac.sac import MemorySAC

__all__ = [
    "CnnDNCPolicy",
    "CnnLSTMPolicy",
    "CnnNTMPolicy",
    "DNCPolicy",
    "LSTMPolicy",
    "MemorySAC",
    "MemorySACPolicy",
    "MultiInputDNCPolicy",
    "MultiInputLSTMPolicy",
    "MultiInputNTMPolicy",
    "NTMPolicy",
]

"""Memory cores in pure PyTorch: usable without Stable-Baselines3."""

from sb3_memory.memory.core import MemoryCore
from sb3_memory.memory.dnc import DNCCell, DNCState, SparseDNCState
from sb3_memory.memory.lstm import LSTMCore, LSTMState
from sb3_memory.memory.ntm import NTMCell, NTMState, SparseNTMState

CORES = {"ntm": NTMCell, "dnc": DNCCell, "lstm": LSTMCore}

__all__ = [
    "CORES",
    "DNCCell",
    "DNCState",
    "LSTMCore",
    "LSTMState",
    "MemoryCore",
    "NTMCell",
    "NTMState",
    "SparseDNCState",
    "SparseNTMState",
]

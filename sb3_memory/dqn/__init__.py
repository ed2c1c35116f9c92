import sb3_memory.envs  # noqa: F401  (registers the sb3_memory/... environments, as SB3 users expect)
from sb3_memory.dqn.dqn import MemoryDQN
from sb3_memory.dqn.policies import (
    CnnDNCPolicy,
    CnnLSTMPolicy,
    CnnNTMPolicy,
    DNCPolicy,
    LSTMPolicy,
    MemoryDQNPolicy,
    MultiInputDNCPolicy,
    MultiInputLSTMPolicy,
    MultiInputNTMPolicy,
    NTMPolicy,
)

__all__ = [
    "CnnDNCPolicy",
    "CnnLSTMPolicy",
    "CnnNTMPolicy",
    "DNCPolicy",
    "LSTMPolicy",
    "MemoryDQN",
    "MemoryDQNPolicy",
    "MultiInputDNCPolicy",
    "MultiInputLSTMPolicy",
    "MultiInputNTMPolicy",
    "NTMPolicy",
]

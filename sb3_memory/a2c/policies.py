"""The policies of :class:`~sb3_memory.MemoryA2C` (its ``policy_aliases``), as SB3's ``a2c/policies.py`` names A2C's."""

from stable_baselines3.common.policies import BasePolicy

from sb3_memory.common.policies import (
    CnnDNCPolicy,
    CnnLSTMPolicy,
    CnnNTMPolicy,
    DNCPolicy,
    LSTMPolicy,
    MultiInputDNCPolicy,
    MultiInputLSTMPolicy,
    MultiInputNTMPolicy,
    NTMPolicy,
)

#: ``MemoryA2C.policy_aliases``: each name, as ``MemoryA2C("DNCPolicy", env)`` takes it.
POLICY_ALIASES: dict[str, type[BasePolicy]] = {
    "NTMPolicy": NTMPolicy,
    "DNCPolicy": DNCPolicy,
    "LSTMPolicy": LSTMPolicy,
    "CnnNTMPolicy": CnnNTMPolicy,
    "CnnDNCPolicy": CnnDNCPolicy,
    "CnnLSTMPolicy": CnnLSTMPolicy,
    "MultiInputNTMPolicy": MultiInputNTMPolicy,
    "MultiInputDNCPolicy": MultiInputDNCPolicy,
    "MultiInputLSTMPolicy": MultiInputLSTMPolicy,
}

__all__ = [
    "POLICY_ALIASES",
    "CnnDNCPolicy",
    "CnnLSTMPolicy",
    "CnnNTMPolicy",
    "DNCPolicy",
    "LSTMPolicy",
    "MultiInputDNCPolicy",
    "MultiInputLSTMPolicy",
    "MultiInputNTMPolicy",
    "NTMPolicy",
]

"""The policies of :class:`~sb3_memory.MemoryPPO` (its ``policy_aliases``), as SB3's ``ppo/policies.py`` names PPO's."""

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

#: ``MemoryPPO.policy_aliases``: each name, as ``MemoryPPO("DNCPolicy", env)`` takes it.
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

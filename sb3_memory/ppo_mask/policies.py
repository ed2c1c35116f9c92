"""
The policies of :class:`~sb3_memory.MaskableMemoryPPO` (its ``policy_aliases``), as sb3-contrib's
``ppo_mask/policies.py`` names MaskablePPO's: the memory policies with action masks, under the
names ``MemoryPPO`` uses.
"""

from stable_baselines3.common.policies import BasePolicy

from sb3_memory.common.maskable import (
    MaskableCnnDNCPolicy,
    MaskableCnnLSTMPolicy,
    MaskableCnnNTMPolicy,
    MaskableDNCPolicy,
    MaskableLSTMPolicy,
    MaskableMultiInputDNCPolicy,
    MaskableMultiInputLSTMPolicy,
    MaskableMultiInputNTMPolicy,
    MaskableNTMPolicy,
)

NTMPolicy = MaskableNTMPolicy
DNCPolicy = MaskableDNCPolicy
LSTMPolicy = MaskableLSTMPolicy
CnnNTMPolicy = MaskableCnnNTMPolicy
CnnDNCPolicy = MaskableCnnDNCPolicy
CnnLSTMPolicy = MaskableCnnLSTMPolicy
MultiInputNTMPolicy = MaskableMultiInputNTMPolicy
MultiInputDNCPolicy = MaskableMultiInputDNCPolicy
MultiInputLSTMPolicy = MaskableMultiInputLSTMPolicy

#: ``MaskableMemoryPPO.policy_aliases``: each name, as ``MaskableMemoryPPO("DNCPolicy", env)`` takes it.
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

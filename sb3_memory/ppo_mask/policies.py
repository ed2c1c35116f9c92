"""
The policies of :class:`~sb3_memory.MaskableMemoryPPO` (its ``policy_aliases``), as sb3-contrib's
``ppo_mask/policies.py`` names MaskablePPO's: the memory policies with action masks, under the
names ``MemoryPPO`` uses.
"""

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

__all__ = [
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

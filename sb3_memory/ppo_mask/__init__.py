from sb3_memory.ppo_mask.ppo_mask import MaskableMemoryPPO

__all__ = ["MaskableMemoryPPO"]

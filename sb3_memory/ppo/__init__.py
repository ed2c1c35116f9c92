from sb3_memory.ppo.ppo import MemoryPPO

__all__ = ["MemoryPPO"]

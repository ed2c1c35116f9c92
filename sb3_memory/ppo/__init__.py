import sb3_memory.envs  # noqa: F401  (registers the sb3_memory/... environments, as SB3 users expect)
from sb3_memory.ppo.ppo import MemoryPPO

__all__ = ["MemoryPPO"]

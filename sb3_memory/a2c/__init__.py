import sb3_memory.envs  # noqa: F401  (registers the sb3_memory/... environments, as SB3 users expect)
from sb3_memory.a2c.a2c import MemoryA2C

__all__ = ["MemoryA2C"]

from sb3_memory.a2c.a2c import MemoryA2C

__all__ = ["MemoryA2C"]

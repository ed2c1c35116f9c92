"""MemoryDQN against DQN on the passive T-maze: see sb3_memory/experiments/off_policy.py."""

from sb3_memory.experiments.off_policy import main

if __name__ == "__main__":
    main()

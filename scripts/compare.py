"""Compare memory agents with RecurrentPPO and PPO: see sb3_memory/experiments/compare.py."""

from sb3_memory.experiments.compare import main

if __name__ == "__main__":
    main()

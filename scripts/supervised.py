"""Train the memory cores on the tasks' optimal actions: see sb3_memory/experiments/supervised.py."""

from sb3_memory.experiments.supervised import main

if __name__ == "__main__":
    main()

"""Train the memory cores on the copy task: see sb3_memory/experiments/copy_task.py."""

from sb3_memory.experiments.copy_task import main

if __name__ == "__main__":
    main()

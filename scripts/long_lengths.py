"""Copy agents on far longer sequences than trained: see sb3_memory/experiments/long_lengths.py."""

from sb3_memory.experiments.long_lengths import main

if __name__ == "__main__":
    main()

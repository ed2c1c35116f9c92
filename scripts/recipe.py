"""Run one generic recipe under several settings: see sb3_memory/experiments/recipe.py."""

from sb3_memory.experiments.recipe import main

if __name__ == "__main__":
    main()

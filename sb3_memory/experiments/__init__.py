"""Experiment code behind the command lines in ``scripts/``: the comparison harness and the copy task.

Run from a source checkout: the comparison reads ``zoo_configs/`` and writes under the
repository root.
"""

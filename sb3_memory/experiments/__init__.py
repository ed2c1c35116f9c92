"""Experiment code behind the command lines in ``scripts/``: the comparison harness and the copy task.

They run from an installed copy too: the comparison reads the configs shipped in
:mod:`sb3_memory.zoo_configs` and writes its runs and reports under the current folder
(``runs/``, ``docs/results/``; ``--runs`` and ``--out`` choose others).
"""

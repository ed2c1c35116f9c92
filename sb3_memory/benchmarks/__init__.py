"""Benchmark commands on public suites: ``python -m sb3_memory.benchmarks.popgym`` (POPGym).

They reuse the comparison harness of :mod:`sb3_memory.experiments` (Ray dispatch, progress line,
statistics) and its generic recipe (:mod:`sb3_memory.experiments.recipe`).
"""

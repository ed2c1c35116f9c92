"""Argument checks shared by the whole package: NumPy scalars pass wherever Python numbers do.

SB3 and rl-zoo3 hand sizes around as NumPy integers (a ``MultiDiscrete`` observation's
``features_dim`` is an ``np.int64``; so is any value drawn from a NumPy sweep), so every check
accepts them and returns the plain Python value.
"""

import math
from typing import Any, Optional

import numpy as np


def check_int(name: str, value: Any, low: int = 1, high: Optional[int] = None, note: str = "") -> int:
    """
    Check that ``value`` is an integer (Python or NumPy, not a bool) in ``[low, high]``.

    :param name: name of the argument, used in the error message
    :param value: the value to check
    :param low: smallest valid value
    :param high: largest valid value, or ``None`` for no upper bound
    :param note: extra explanation appended to the valid range in the error message
    :return: ``value`` as a Python ``int``
    :raises ValueError: if ``value`` is not an integer or is out of range
    """
    valid = f">= {low}" if high is None else f"in [{low}, {high}]"
    if note:
        valid = f"{valid} ({note})"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer {valid}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {valid}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """
    Check that ``value`` is a finite real number (Python or NumPy, not a bool) in ``[low, high]``.

    :param name: name of the argument, used in the error message
    :param value: the value to check
    :param low: smallest valid value
    :param high: largest valid value
    :return: ``value`` as a Python ``float``
    :raises ValueError: if ``value`` is not a finite number in range
    """
    valid = f"a finite number in [{low}, {high}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    if not math.isfinite(value) or value < low or value > high:
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return float(value)

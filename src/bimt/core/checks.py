"""Shared argument checks: one wording for every "must be a positive integer" in the package."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def positive_int(value, name: str, *, allow_none: bool = False):
    """``value`` if it is an integer >= 1 (bools refused), else a ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        extra = " (or None)" if allow_none else ""
        raise ValueError(f"{name} must be a positive integer{extra}, got {value!r}")
    return int(value)


def nonnegative(value, name: str) -> float:
    """``value`` as a float if it is a finite number >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def one_of(value, allowed: Iterable, name: str):
    """``value`` if it is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value

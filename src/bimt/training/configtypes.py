"""Type checks for configs read from JSON (or built by hand), before anything uses them.

A config file is user input: ``{"steps": "100"}`` must end in one message naming the key, not in a
``TypeError`` deep inside the training loop. The expected type of each key is read from the
dataclass's annotations, so a new field is checked without editing this file. No torch here:
the command line imports it before knowing whether it will train.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["check_types", "SEED_MAX"]

#: Seeds a run accepts: numpy takes 32-bit seeds (and the batch generator multiplies them).
SEED_MAX = 2**32 - 1


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not (
        isinstance(x, float) and math.isnan(x))


_CHECKS = {
    "int": (lambda x: isinstance(x, int) and not isinstance(x, bool), "an integer"),
    "float": (_number, "a number"),
    "str": (lambda x: isinstance(x, str), "a string"),
    "bool": (lambda x: isinstance(x, bool), "true or false"),
    "list[int]": (lambda x: isinstance(x, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in x), "a list of integers"),
    "list[str]": (lambda x: isinstance(x, list) and all(isinstance(v, str) for v in x),
                  "a list of strings"),
    "list[list[float]]": (lambda x: isinstance(x, list) and all(
        isinstance(v, list) and len(v) == 2 and all(map(_number, v)) for v in x),
        "a list of [number, number] pairs"),
}


def check_types(cls, d) -> None:
    """Raise ``ValueError`` naming the first key of ``d`` whose value has the wrong type."""
    if not isinstance(d, dict):
        raise ValueError(f"a config is a JSON object of keys and values, got a {type(d).__name__}")
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        parts = [p.strip() for p in str(f.type).split("|")]
        if value is None and "None" in parts:
            continue
        base = next((p for p in parts if p != "None"), None)
        check = _CHECKS.get(base)
        if check is None:
            continue
        ok, what = check
        if not ok(value):
            allowed = what + (" or null" if "None" in parts else "")
            raise ValueError(f"config key {f.name!r} must be {allowed}, got {_short(value)}")

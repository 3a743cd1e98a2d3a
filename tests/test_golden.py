"""Behaviour preserved: short pinned runs give the recorded metrics (1e-6 relative)."""

import math

import pytest

from golden_runs import KEYS, RUNS, golden, run

GOLDEN = golden()


@pytest.mark.parametrize("task", sorted(RUNS))
def test_golden_metrics(task):
    got = run(task)
    for key in KEYS:
        want = GOLDEN[task][key]
        if want is None:
            assert got[key] is None, key
        else:
            assert math.isclose(got[key], want, rel_tol=1e-6, abs_tol=1e-12), (task, key, got[key], want)

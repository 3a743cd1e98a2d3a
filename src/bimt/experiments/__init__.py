"""Experiments built on runs: ``bimt reproduce``, ``bimt sweep`` and ``bimt bench``."""

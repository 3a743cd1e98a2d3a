"""The engine every model shares: positions, permutation specs, the connection cost, swaps.

Nothing here knows a model class: a network is its :class:`~bimt.core.spec.PermutationSpec`.
"""

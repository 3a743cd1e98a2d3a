"""The connection cost's settings: one frozen object, the only place their defaults are stated.

No torch here, so the command line can read the defaults and field names without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .checks import nonnegative, one_of

__all__ = ["CostSettings", "REDUCTIONS", "COST_FIELDS", "DEFAULT_SWAP_MODE", "DEFAULT_SWAP_EVERY"]

#: How a tensor's charges are combined: summed (the paper) or averaged (its notebooks for
#: modular addition, S4, MNIST and in-context).
REDUCTIONS = ("sum", "mean")
#: The mode of a swap pass when none is named: the paper's greedy swaps (bimt.core.swap).
DEFAULT_SWAP_MODE = "greedy"
#: Steps between swap passes when none is named (the paper's S = 200).
DEFAULT_SWAP_EVERY = 200


@dataclass(frozen=True)
class CostSettings:
    """The connection cost's settings, checked once; one name for each everywhere in bimt.

    A : in-layer scale; ``A = 0`` removes locality and leaves plain L1.
    y_star : layer gap; every weight spans one gap, biases and embeddings cost ``y_star``.
    p : the norm of the displacement ``(A * dx, y_star)``: 1 (default, as the paper), 2, ...
    bias : charge biases (the reference code leaves them free early in some runs).
    reduction : ``sum`` over every entry, or ``mean``: each tensor's mean, summed over tensors
        (what the notebooks do for modular addition and MNIST).
    distance_free : weight names charged ``|w| * y_star`` whatever their length (the MNIST
        output layer); the name ``"last"`` stands for the spec's last charged weight.

    ``settings.replace(A=0)`` is a copy with some settings changed (the trainer's variants).
    """

    A: float = 1.0
    y_star: float = 1.0
    p: float = 1.0
    bias: bool = True
    reduction: str = "sum"
    distance_free: tuple[str, ...] = ()

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("A", nonnegative(self.A, "A"))
        set_("y_star", nonnegative(self.y_star, "y_star"))
        try:
            p = float(self.p)
        except (TypeError, ValueError):
            p = float("nan")
        if not p >= 1:  # also refuses nan
            raise ValueError(f"p must be >= 1, got {self.p!r} (a norm; inf for the max norm)")
        set_("p", p)
        set_("bias", bool(self.bias))
        one_of(self.reduction, REDUCTIONS, "reduction")
        free = (self.distance_free,) if isinstance(self.distance_free, str) else self.distance_free
        set_("distance_free", tuple(sorted(set(free))))

    def replace(self, **changes) -> CostSettings:
        """A copy with ``changes`` applied (and checked)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown cost setting(s) {', '.join(map(repr, unknown))}; allowed: "
                             f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, settings: CostSettings | None = None, **changes) -> CostSettings:
        """``settings`` (default: the defaults above) with ``changes``: how every model and
        :func:`bimt.attach` take their cost settings, so each default is stated here only."""
        return (settings or cls()).replace(**changes)

    def resolve(self, spec) -> CostSettings:
        """The settings with ``"last"`` in ``distance_free`` replaced by that weight's name."""
        if "last" not in self.distance_free or "last" in spec.weights():
            return self
        weights = spec.weights()
        if not weights:
            raise ValueError("distance_free names 'last', but the spec charges no weight")
        free = [n for n in self.distance_free if n != "last"] + [weights[-1]]
        return self.replace(distance_free=free)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "distance_free": list(self.distance_free)}

    @classmethod
    def from_config(cls, config) -> CostSettings:
        """The settings a run's config (a dict or :class:`bimt.TrainConfig`) sets, on the defaults."""
        get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
        return cls(**{k: get(k) for k in COST_FIELDS if get(k) is not None})


#: The cost settings a run's config carries (``bias`` is the trainer's, per phase).
COST_FIELDS = tuple(f.name for f in dataclasses.fields(CostSettings) if f.name != "bias")

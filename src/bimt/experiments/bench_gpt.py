"""Swap passes and training steps at GPT shapes, each against a baseline run in the same process.

* ``gpt.swap_ms``: one greedy pass (top-k 30), as training runs it (without reading the
  report's totals), over every group of a BioGPT with GPT-2-small
  shapes (12 layers, d 768, 12 heads, MLP 3072, vocabulary 50,257, 124M parameters, float32),
  beside ``gpt.floor_ms``: one read of every parameter (the sum of each), the least any pass
  that looks at every weight must spend, and ``gpt.abs_sum_ms``: the sum of ``|W|`` over
  every parameter (their L1 norms); ``gpt.swap_over_floor`` and ``gpt.swap_over_abs_sum``
  are the ratios.
* ``gpt.exact_s``: one exact pass (greedy moves, then a linear assignment per group: 3072 x
  3072 for each MLP layer) on the same shapes with local, slightly disordered wiring, as in
  training (:func:`local_gpt2_small`); ``gpt.exact_init_s`` (opt-in, minutes) at
  initialisation, where every MLP neuron's weights look alike, the assignment's worst case.
* ``gpt.step_overhead``: a training step (forward, loss, backward, the cost's gradient, AdamW,
  and a greedy pass every ``swap_every`` steps, its time spread over them) against the same
  step without the cost and the swaps, on a 4-layer d-256 BioGPT (byte vocabulary, 256), batch
  16 x 128 tokens.

Everything runs on one thread (as ``bimt bench``); times are the best (passes) or the median
(steps) of a few repeats, the two sides of a ratio measured in turns so that machine load hits
both alike.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from ..core.settings import DEFAULT_SWAP_EVERY, CostSettings
from ..models.gpt import BioGPT
from ..core.swap import apply_permutation, swap_pass

__all__ = ["gpt2_small", "local_gpt2_small", "bench_gpt_swap", "bench_gpt_exact", "bench_gpt_step",
           "run_gpt_benchmarks", "read_floor_s"]

#: The cost settings of the benchmark models (the paper's transformer run).
SETTINGS = CostSettings(A=2.0, y_star=0.5)


def gpt2_small(seed: int = 0) -> BioGPT:
    """A BioGPT with GPT-2 small's shapes, GPT-2's initialisation drawn from ``seed``."""
    torch.manual_seed(seed)
    return BioGPT(50257, n_positions=1024, d_model=768, n_layers=12, n_heads=12,
                  settings=SETTINGS)


def local_gpt2_small(seed: int = 0, width: float = 0.05, window: int = 16) -> BioGPT:
    """GPT-2 small with wiring like a BIMT model's in training: every weight entry damped by
    its length (``exp(-|x_out - x_in| / width)``, positions in [0, 1]), then in every group the
    neurons shuffled within consecutive windows of ``window`` slots (heads shuffled as wholes),
    which keeps the function and leaves each neuron up to ``window - 1`` slots off its place.
    :func:`gpt2_small` is what a pass meets at initialisation."""
    model = gpt2_small(seed)
    spec = model.spec
    with torch.no_grad():
        for name in spec.weights():
            out_g, in_g = (spec.groups[g] for g in spec.axes[name])
            w = model.get_parameter(name)
            x_out = torch.from_numpy(np.tile(out_g.coords[:, 0], w.shape[0] // out_g.size))
            x_in = torch.from_numpy(np.tile(in_g.coords[:, 0], w.shape[1] // in_g.size))
            w.mul_(torch.exp(-(x_out[:, None] - x_in[None, :]).abs() / width).to(w.dtype))
    rng = np.random.default_rng(seed)

    def shuffled(n: int) -> np.ndarray:
        return np.concatenate([a + rng.permutation(min(window, n - a)) for a in range(0, n, window)])

    for g, group in spec.groups.items():
        d = group.head_size
        perm = np.concatenate([h * d + shuffled(d) for h in shuffled(group.heads)])
        apply_permutation(model, spec, g, perm)
    return model


def read_floor_s(model: torch.nn.Module, repeats: int = 3, absolute: bool = False) -> float:
    """Seconds for one read of every parameter: the sum of each (``absolute``: of its
    magnitudes, the L1 norm), in float32 without copies."""
    params = [p.detach() for p in model.parameters()]
    read = (lambda p: torch.linalg.vector_norm(p, 1)) if absolute else torch.sum
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in params:
            read(p)
        best = min(best, time.perf_counter() - t0)
    return best


def _timed_pass(model, top_k, mode) -> tuple[float, object]:
    """One pass as training runs it (no totals read: ``costs=False``) on a copy of ``model``;
    the report's costs are read after the clock stops."""
    m = copy.deepcopy(model)
    cost = m.wiring.connection_cost
    before = cost.total(m)
    t0 = time.perf_counter()
    report = swap_pass(m, m.spec, cost, top_k, mode, costs=False)
    seconds = time.perf_counter() - t0
    report.cost_before, report.cost_after = before, cost.total(m)
    return seconds, report


def bench_gpt_swap(top_k: int = 30, repeats: int = 3, model: BioGPT | None = None) -> dict:
    """One greedy pass over every group of GPT-2 small, against one read of its parameters."""
    model = model or gpt2_small()
    swap_pass(copy.deepcopy(model), model.spec, model.wiring.connection_cost, top_k)  # caches
    passes, floors, l1s, report = [], [], [], None
    for _ in range(repeats):  # in turns, so that drifts in load hit all three alike
        floors.append(read_floor_s(model, 1))
        l1s.append(read_floor_s(model, 1, absolute=True))
        seconds, report = _timed_pass(model, top_k, "greedy")
        passes.append(seconds)
    swap_s, floor_s, l1_s = min(passes), min(floors), min(l1s)
    return {"gpt.swap_ms": swap_s * 1e3, "gpt.floor_ms": floor_s * 1e3,
            "gpt.abs_sum_ms": l1_s * 1e3, "gpt.swap_over_floor": swap_s / floor_s,
            "gpt.swap_over_abs_sum": swap_s / l1_s, "gpt.swap_top_k": top_k,
            "gpt.swaps": report.swaps, "gpt.cost_before": report.cost_before,
            "gpt.cost_after_greedy": report.cost_after}


def bench_gpt_exact(top_k: int = 30, init: bool = False) -> dict:
    """One exact pass over every group of GPT-2 small with local, slightly disordered wiring
    (:func:`local_gpt2_small`): ``gpt.exact_s``; with ``init`` also one at initialisation
    (:func:`gpt2_small`), where every MLP neuron's weights look alike, the assignment solver's
    worst case (minutes): ``gpt.exact_init_s``."""
    seconds, report = _timed_pass(local_gpt2_small(), top_k, "exact")
    out = {"gpt.exact_s": seconds, "gpt.exact_cost": [report.cost_before, report.cost_after]}
    if init:
        seconds, report = _timed_pass(gpt2_small(), top_k, "exact")
        out.update({"gpt.exact_init_s": seconds,
                    "gpt.exact_init_cost": [report.cost_before, report.cost_after]})
    return out


def bench_gpt_step(pairs: int = 8, swap_every: int = DEFAULT_SWAP_EVERY, top_k: int = 30, lam: float = 1e-3,
                   batch: int = 16, seq: int = 128, swaps: int = 3) -> dict:
    """A training step with the cost's gradient and amortised swaps against the plain step.

    The two kinds of step alternate (in ABBA order), so drifts in machine load hit both alike;
    the overhead is the median, over the ``pairs`` pairs, of a pair's cost step over its plain
    step, plus a greedy pass (top-k ``top_k``, moving the optimizer's state; median of
    ``swaps``) spread over ``swap_every`` plain steps.
    """
    torch.manual_seed(0)
    model = BioGPT(256, n_positions=seq, d_model=256, n_layers=4, n_heads=4, settings=SETTINGS)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(256, (batch, seq + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    cost = model.wiring.connection_cost
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(with_cost: bool) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        logits = model(x)
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          y.reshape(-1)).backward()
        if with_cost:
            cost.add_grad_(model, lam)
        opt.step()
        return time.perf_counter() - t0

    step(True)  # first-call costs (optimizer state, cached distances) off the clock
    swap_pass(model, model.spec, cost, top_k, optimizer=opt, costs=False)
    plain, with_cost = [], []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        for kind in order:
            (with_cost if kind else plain).append(step(kind))
    swap = []
    for _ in range(swaps):
        t0 = time.perf_counter()
        swap_pass(model, model.spec, cost, top_k, optimizer=opt, costs=False)
        swap.append(time.perf_counter() - t0)
    p, c, s = (float(np.median(v)) for v in (plain, with_cost, swap))
    # each pair's two steps ran back to back: the median of their ratios is the least
    # disturbed by load that changes between pairs
    ratio = float(np.median(np.array(with_cost) / np.array(plain)))
    return {"gpt.step_plain_ms": p * 1e3, "gpt.step_cost_ms": c * 1e3,
            "gpt.step_swap_ms": s * 1e3, "gpt.step_swap_every": swap_every,
            "gpt.step_overhead": ratio + s / swap_every / p}


def run_gpt_benchmarks(exact: bool = True, exact_init: bool = False, step: bool = True) -> dict:
    """Every GPT benchmark on one thread; a flat dict of what was measured."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = bench_gpt_swap()
        if exact:
            results.update(bench_gpt_exact(init=exact_init))
        if step:
            results.update(bench_gpt_step())
    finally:
        torch.set_num_threads(threads)
    return results


if __name__ == "__main__":  # python -m bimt.experiments.bench_gpt
    import json

    print(json.dumps(run_gpt_benchmarks(), indent=1))

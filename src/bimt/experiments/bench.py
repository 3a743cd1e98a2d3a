"""``bimt bench``: what our swap pass and training step cost, against baselines in the same process.

* swap: one greedy pass done the naive way (the reference notebooks' way: for every candidate
  partner, swap the real tensors, recompute the whole network's cost, swap back) against our
  greedy pass (all partners scored at once from the placement matrix) and our exact pass, on
  the MNIST-shaped model. Our greedy pass must reach the naive pass's permutations exactly.
* step: one training step (forward, loss, backward, AdamW; batch 100) with and without the
  connection cost, as the trainer does it.
* batched: S seeds of symbolic (a) trained one after another, and as one stacked model.
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import torch
from torch import nn

from ..core.cost import ConnectionCost
from ..models import BioMLP
from ..core.geometry import _pad_to_same_dim as _same_dim
from ..core.geometry import pairwise_distance
from ..core.spec import PermutationSpec, tensor
from ..core.swap import REL_TOL, apply_permutation, swap_pass

__all__ = ["run_benchmarks", "naive_greedy_pass", "mnist_shaped_model"]


def mnist_shaped_model(seed: int = 0) -> BioMLP:
    """The paper's MNIST network (784-100-100-10 on grids and a ring, inputs frozen): the size at
    which swap passes cost the most, so the benchmarks time it."""
    torch.manual_seed(seed)
    return BioMLP([784, 100, 100, 10], layout=["grid", "grid", "grid", "ring"],
                  freeze_inputs=True, A=2.0, y_star=0.5)


def reference_cost(module: nn.Module, spec: PermutationSpec, cost: ConnectionCost,
                   coords: dict | None = None) -> float:
    """The whole network's cost computed as the reference code does it, from scratch.

    As the paper's notebooks do: distances rebuilt from the neurons' coordinates (tensors held
    by the model) on every call, layer by layer, in the model's own precision (float32 here),
    ``sum(|w| * (A * |dx|_1 + y*))``. ``coords`` caches the coordinate tensors (the reference
    keeps them on its layers); it is filled on the first call.
    """
    coords = {} if coords is None else coords
    total = 0.0
    for name, kind in cost.terms():
        t = tensor(module, name).detach()
        norm = t.numel() if cost.reduction == "mean" else 1
        if kind == "weight":
            out_g, in_g = (spec.groups[g] for g in spec.axes[name])
            if name in cost.distance_free:
                d = torch.full((out_g.size, in_g.size), cost.y_star, dtype=t.dtype)
            elif cost.p == 1:  # the reference's own formula: A * |dx|_1 + y*
                if name not in coords:
                    coords[name] = tuple(torch.from_numpy(c).to(t.dtype)
                                         for c in _same_dim(out_g.coords, in_g.coords))
                a, b = coords[name]
                d = cost.A * (a[:, None, :] - b[None, :, :]).abs().sum(-1) + cost.y_star
            else:
                d = torch.from_numpy(
                    pairwise_distance(out_g.coords, in_g.coords, cost.A, cost.y_star, cost.p)).to(t.dtype)
            d = d.repeat(t.shape[0] // d.shape[0], t.shape[1] // d.shape[1])
            total += float(torch.sum(t.abs() * d)) / norm
        else:
            total += float(torch.sum(t.abs())) * cost.y_star / norm
    return total


def naive_greedy_pass(module: nn.Module, spec: PermutationSpec, cost: ConnectionCost,
                      top_k: int) -> dict[str, np.ndarray]:
    """The greedy pass the slow way; returns each group's permutation (new slot <- old slot)."""
    perms = {}
    for g in spec.movable_groups():
        n = spec.groups[g].size
        score = cost.importance(module, g)
        where = np.arange(n)  # neuron (by its slot when the group started) -> slot now
        coords = {}
        tol = REL_TOL * max(reference_cost(module, spec, cost, coords), 1.0)
        for j in np.argsort(-score, kind="stable")[: min(top_k, n)]:
            base = reference_cost(module, spec, cost, coords)
            deltas = np.zeros(n)
            for k in range(n):
                if k == j:
                    continue
                swap = _transposition(n, where[j], where[k])
                apply_permutation(module, spec, g, swap)
                deltas[k] = reference_cost(module, spec, cost, coords) - base
                apply_permutation(module, spec, g, swap)
            best = int(np.argmin(deltas))
            if deltas[best] < -tol:
                apply_permutation(module, spec, g, _transposition(n, where[j], where[best]))
                where[j], where[best] = where[best], where[j]
        perm = np.empty(n, dtype=int)
        perm[where] = np.arange(n)
        perms[g] = perm
    return perms


def _transposition(n: int, a: int, b: int) -> np.ndarray:
    t = np.arange(n)
    t[a], t[b] = b, a
    return t


def bench_swap(top_k: int = 30) -> dict:
    model = mnist_shaped_model()
    cost = model.wiring.connection_cost
    naive_model, greedy_model, exact_model = (copy.deepcopy(model) for _ in range(3))
    cost_before = cost.total(model)
    t0 = time.perf_counter()
    naive_perms = naive_greedy_pass(naive_model, model.spec, cost, top_k)
    naive_s = time.perf_counter() - t0
    # every timed pass starts from a fresh copy of the same network
    greedy_s = min(_timed_pass(greedy_model, cost, top_k, "greedy") for _ in range(5))
    exact_s = min(_timed_pass(exact_model, cost, top_k, "exact") for _ in range(5))
    report = swap_pass(greedy_model, model.spec, cost, top_k, "greedy")
    exact_report = swap_pass(exact_model, model.spec, cost, top_k, "exact")
    same = all(
        np.array_equal(naive_perms[g], report.permutations.get(g, np.arange(len(naive_perms[g]))))
        for g in naive_perms
    )
    return {
        "swap.naive_s": naive_s, "swap.greedy_s": greedy_s, "swap.exact_s": exact_s,
        "swap.speedup": naive_s / greedy_s, "swap.same_permutation": bool(same),
        "swap.cost_before": cost_before, "swap.cost_greedy": report.cost_after,
        "swap.cost_exact": exact_report.cost_after, "swap.greedy_swaps": report.swaps,
    }


def _timed_pass(model, cost, top_k, mode) -> float:
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    swap_pass(m, m.spec, cost, top_k, mode)
    return time.perf_counter() - t0


def bench_batched(seeds: int = 5, steps: int = 2000, device=None, repeats: int = 2) -> dict:
    """S seeds of symbolic (a) (bimt method, float32, one thread): trained one after another
    by ``bimt.train``, and as one stack by ``bimt.batched``; same steps, evaluations, swaps and
    final metrics on both sides, timed in turns so machine load hits both alike."""
    from ..training.loop import fit_many
    from ..training.loop import fit

    kw = dict(task="symbolic-independence", steps=steps, progress=False, plots=False,
              device=device)
    fit_many(seeds=[0], **dict(kw, steps=20))  # imports and first-call costs off the clock
    sequential, batched = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(seeds):
            fit(seed=s, **kw)
        sequential.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fit_many(seeds=list(range(seeds)), **kw)
        batched.append(time.perf_counter() - t0)
    seq, bat = min(sequential), min(batched)
    return {"batched.seeds": seeds, "batched.steps": steps, "batched.sequential_s": seq,
            "batched.batched_s": bat, "batched.speedup": seq / bat}


def bench_step(steps: int = 300, batch: int = 100, device=None) -> dict:
    from ..training.loop import _optimizer, TrainConfig

    g = torch.Generator().manual_seed(0)
    X = torch.rand(batch * 10, 784, generator=g).to(device)
    y = torch.randint(10, (batch * 10,), generator=g)
    target = nn.functional.one_hot(y, 10).float().to(device)
    sync = torch.cuda.synchronize if X.is_cuda else (lambda: None)

    def timed(with_cost: bool) -> float:
        model = mnist_shaped_model().to(device)
        cost = ConnectionCost(model.spec, A=2.0, y_star=0.5, reduction="mean",
                              distance_free=[model.spec.weights()[-1]])
        opt = _optimizer(model, TrainConfig(lr=1e-3))
        loss_fn = nn.MSELoss()
        times = []
        for i in range(steps):
            xb, yb = X[(i % 10) * batch:(i % 10 + 1) * batch], target[(i % 10) * batch:(i % 10 + 1) * batch]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            loss_fn(model(xb), yb).backward()
            if with_cost:
                cost.add_grad_(model, 1e-2)
            opt.step()
            sync()
            times.append(time.perf_counter() - t0)
        return float(np.median(times[steps // 5:]))

    # interleave the two so drifts in machine load hit both alike
    vanilla, bimt = [], []
    for _ in range(3):
        vanilla.append(timed(False))
        bimt.append(timed(True))
    v, b = min(vanilla), min(bimt)
    return {"step.vanilla_ms": v * 1e3, "step.bimt_ms": b * 1e3, "step.overhead": b / v}


def bench_transformer_swap(repeats: int = 20) -> float:
    """Median milliseconds of one greedy pass on the paper's transformer (top-k 30)."""
    from ..models.transformer import BioTransformer

    torch.manual_seed(0)
    model = BioTransformer(2, 2, d_model=32, n_blocks=2, n_heads=1, A=2.0, y_star=0.5)
    cost = model.wiring.connection_cost
    times = [_timed_pass(model, cost, 30, "greedy") * 1e3 for _ in range(repeats)]
    return float(np.median(times))


def bench_task_swap(task: str, repeats: int = 20) -> float:
    """Median milliseconds of one greedy pass (the task's top-k) on a task's default model."""
    from dataclasses import asdict

    from ..training.config import TrainConfig
    from ..tasks import get_task

    cfg = TrainConfig(task=task).resolved()
    torch.manual_seed(0)
    model = get_task(task).make_model(asdict(cfg))
    times = [_timed_pass(model, model.wiring.connection_cost, cfg.top_k, "greedy") * 1e3
             for _ in range(repeats)]
    return float(np.median(times))


def run_benchmarks(as_json: bool = False, transformer: bool = True, device=None,
                   batched: bool = True, batched_seeds: int = 5, batched_steps: int = 2000,
                   gpt: bool = True) -> dict:
    """What ``bimt bench`` measures, as ``{name: value}``; every timing comes with the baseline it
    is compared with, measured in the same process."""
    from ..training.devices import resolve_device
    from ..training.runs import say

    device = resolve_device(device)
    torch.set_num_threads(1)
    results = {}
    say(True, "timing swap passes: the naive reference-style pass takes a while")
    results.update(bench_swap())
    say(True, "timing training steps")
    results.update(bench_step(device=device))
    if transformer:
        say(True, "timing transformer, RNN and CNN swap passes")
        results["transformer.swap_ms"] = bench_transformer_swap()
        results["rnn.swap_ms"] = bench_task_swap("two-stream")  # BioRNN, 6x6 recurrent grid
        results["cnn.swap_ms"] = bench_task_swap("cnn-mnist")  # BioCNN, conv channels
    if batched:
        say(True, f"timing {batched_seeds} seeds one after another, then stacked")
        results.update(bench_batched(batched_seeds, batched_steps, device=device))
    if gpt:
        from .bench_gpt import run_gpt_benchmarks

        say(True, "timing GPT-2-small-shaped swap passes (greedy, then exact: a few minutes) and a "
                  "4-layer GPT's training step")
        results.update(run_gpt_benchmarks())
    results["device"] = str(device or "cpu")
    results = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items()}
    if as_json:
        print(json.dumps(results))
    else:
        print(format_table(results))
    return results


def format_table(results: dict) -> str:
    rows = [
        ("naive greedy swap pass (reference way)", "swap.naive_s", "{:.3f} s"),
        ("our greedy swap pass", "swap.greedy_s", "{:.2e} s"),
        ("our exact swap pass", "swap.exact_s", "{:.2e} s"),
        ("speed-up, naive / greedy", "swap.speedup", "{:.0f}x"),
        ("greedy = naive permutations", "swap.same_permutation", "{}"),
        ("cost before", "swap.cost_before", "{:.4f}"),
        ("cost after greedy", "swap.cost_greedy", "{:.4f}"),
        ("cost after exact", "swap.cost_exact", "{:.4f}"),
        ("training step, vanilla", "step.vanilla_ms", "{:.3f} ms"),
        ("training step, with cost", "step.bimt_ms", "{:.3f} ms"),
        ("overhead, bimt / vanilla", "step.overhead", "{:.3f}x"),
        ("transformer greedy swap pass", "transformer.swap_ms", "{:.2f} ms"),
        ("RNN greedy swap pass (two-stream)", "rnn.swap_ms", "{:.2f} ms"),
        ("CNN greedy swap pass (cnn-mnist)", "cnn.swap_ms", "{:.2f} ms"),
        ("symbolic (a) seeds, one after another vs stacked", "batched.seeds", "{}"),
        ("  trained one after another", "batched.sequential_s", "{:.2f} s"),
        ("  trained as one stack (bimt.batched)", "batched.batched_s", "{:.2f} s"),
        ("  speed-up, sequential / batched", "batched.speedup", "{:.1f}x"),
        ("GPT-2-small shapes (124M parameters): greedy pass", "gpt.swap_ms", "{:.0f} ms"),
        ("  one read of every parameter (the floor)", "gpt.floor_ms", "{:.0f} ms"),
        ("  greedy pass / floor", "gpt.swap_over_floor", "{:.1f}x"),
        ("  exact pass", "gpt.exact_s", "{:.1f} s"),
        ("4-layer d-256 GPT step, plain / with cost and swaps", "gpt.step_overhead", "{:.3f}x"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = ["bimt bench (MNIST-shaped 784-100-100-10, top-k 30, A=2, y*=0.5, 1 thread)"]
    for label, key, fmt in rows:
        if key in results:
            lines.append(f"  {label:<{width}}  {fmt.format(results[key])}")
    return "\n".join(lines)

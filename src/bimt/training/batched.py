"""Many runs of one MLP task trained as one stacked model: seeds (and methods) side by side.

The paper's networks are tiny (a symbolic step is ~0.3 MFLOP), so one run at a time is pure
dispatch overhead. Here S runs of one task share every kernel launch: each parameter is stacked
to ``(S, ...)``, the forward pass is a chain of ``torch.baddbmm``, and one AdamW steps all
members at once (AdamW is elementwise, so it equals S separate AdamWs). Everything else stays
per member:

* data and initialisation: each member is built exactly as :func:`bimt.train.train` builds its
  seed (:func:`bimt.train.build_run`), then its tensors are stacked;
* cost gradient: the member's own lambda schedule, ``A``, bias phase and method, as stacked
  per-entry scales (``lambda_s * d_s``);
* swaps: the member's own pass on views of its slices of the stacked tensors, by the same swap
  engine (a name -> tensor dict is a module to it), and the permutation applied to the member's
  slice of Adam's moments;
* evaluation, metrics, checkpoints and run directories: per member, in the unbatched layout, so
  ``bimt analyze`` / ``plot`` / ``train --resume`` work on them.

Runs whose settings differ where a stacked model cannot (widths, steps, lr, batch size, dtype,
...) are split into separate stacks automatically. Only BioMLP tasks stack; the transformer
trains one run per process (:mod:`bimt.reproduce`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, lambda_at
from .devices import resolve_device
from ..core.fileio import write_json
from ..models import BioMLP
from ..models.wiring import wiring_of
from .runs import (
    _n_outputs, claim_run_dir, load_checkpoint, save_checkpoint, targets, write_history_csv, write_metrics,
    write_plots,
)
from ..core.spec import fold_index
from ..core.swap import swap_pass
from ..tasks import Task, get_task
from .loop import (
    TrainingDiverged, TrainResult, _optimizer, _progress, build_run, final_metrics, run_costs,
)

__all__ = ["fit", "fit_many", "StackedMLP", "MEMBER_FIELDS"]

#: TrainConfig fields that may differ between the members of one stack; any other difference
#: (including fields added later) puts the runs in separate stacks.
MEMBER_FIELDS = frozenset({
    "seed", "method", "lambda_schedule", "lambda_milestones", "A", "y_star", "p", "reduction",
    "last_distance_free", "bias_free_fraction", "top_k", "swap_every", "swap_mode", "data_dir",
    "checkpoint_every", "animate", "animate_frames",
})


# -- the stacked model -----------------------------------------------------------------------
class StackedMLP(nn.Module):
    """S BioMLPs of one shape as stacked tensors; ``forward`` maps ``(S, n, ...)`` inputs.

    Tensors keep the member's names (``linears.0.weight`` holds ``(S, out, in)``), in the
    member's parameter order, so optimizer states convert one to one.
    """

    def __init__(self, members: list[BioMLP]):
        super().__init__()
        first = members[0]
        for m in members:
            if not isinstance(m, BioMLP):
                raise ValueError(
                    f"batched training stacks BioMLP models, got {type(m).__name__}; train this "
                    "task one run at a time (bimt.fit without seeds, or reproduce --backend processes)"
                )
            if m.widths != first.widths or (m.embedding is None) != (first.embedding is None):
                raise ValueError(f"members differ in shape: {m.widths} vs {first.widths}")
        if any(True for _ in first.activation.parameters()):
            raise ValueError("batched training needs a parameter-free activation")
        self.widths = first.widths
        self.activation = first.activation
        self.S = len(members)
        self.names = [n for n, _ in first.named_parameters()]
        self.buffer_names = [n for n, _ in first.named_buffers()]
        self._stacked: dict[str, torch.Tensor] = {}
        states = [m.state_dict() for m in members]
        for name in self.names:
            p = nn.Parameter(torch.stack([s[name] for s in states]).contiguous())
            self.register_parameter(name.replace(".", "__"), p)
            self._stacked[name] = p
        for name in self.buffer_names:
            b = torch.stack([s[name] for s in states]).contiguous()
            self.register_buffer(name.replace(".", "__"), b)
        self.n_layers = len(first.linears)
        self.has_bias = first.linears[0].bias is not None
        self.has_embedding = first.embedding is not None
        # the hot loop's tensors, looked up once (module attribute lookups cost microseconds)
        self._weights = [self._stacked[f"linears.{i}.weight"] for i in range(self.n_layers)]
        self._biases = ([self._stacked[f"linears.{i}.bias"] for i in range(self.n_layers)]
                        if self.has_bias else None)

    def get(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))

    def member_views(self, s: int) -> dict[str, torch.Tensor]:
        """Member ``s``'s tensors as views into the stack (the swap engine writes through them)."""
        return {n: self.get(n).detach()[s] for n in self.names + self.buffer_names}

    def member_state(self, s: int) -> dict[str, torch.Tensor]:
        return {n: self.get(n).detach()[s].clone() for n in self.names + self.buffer_names}

    def _input_layer(self, X: torch.Tensor):
        """Each member's input layer in slot order, and (token inputs) the rows of the flattened
        ``(S * vocab, d)`` embedding that it read, which the backward pass scatters into."""
        S, n = X.shape[0], X.shape[1]
        if self.has_embedding:
            emb = self.get("embedding")
            V = emb.shape[1]
            rows = X + (torch.arange(S, device=X.device) * V).view(S, 1, 1)
            return emb.reshape(S * V, -1)[rows].flatten(-2), rows
        order = self.get("input_order")
        return torch.gather(X, 2, order.unsqueeze(1).expand(S, n, order.shape[1])), None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        x, _ = self._input_layer(X)
        for i in range(self.n_layers):
            W = self.get(f"linears.{i}.weight").transpose(1, 2)
            if self.has_bias:
                x = torch.baddbmm(self.get(f"linears.{i}.bias").unsqueeze(1), x, W)
            else:
                x = torch.bmm(x, W)
            if i < self.n_layers - 1:
                x = self.activation(x)
        order = self.get("output_order").unsqueeze(1).expand_as(x)
        return torch.zeros_like(x).scatter(2, order, x)


    # -- the hand-written backward pass ------------------------------------------------------
    def loss_and_grad(self, X: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
        """Each member's loss ``(S,)``; every parameter's ``.grad`` set to its gradient.

        The same numbers as ``losses.sum().backward()``, written out by hand: for these tiny
        networks the autograd engine's bookkeeping costs more than the arithmetic. Activations
        without a known derivative fall back to autograd.
        """
        backward = _ACTIVATION_BACKWARD.get(type(self.activation))
        if backward is None:
            for p in self.parameters():
                p.grad = None
            losses = _member_losses(self(X), y, loss)
            losses.sum().backward()
            return losses.detach()
        with torch.no_grad():
            n = X.shape[1]
            x, token_rows = self._input_layer(X)
            inputs, pre, post = [], [], []
            weights, biases, act = self._weights, self._biases, self.activation.forward
            for i, W in enumerate(weights):
                inputs.append(x)
                if biases is not None:
                    z = torch.baddbmm(biases[i].unsqueeze(1), x, W.transpose(1, 2))
                else:
                    z = torch.bmm(x, W.transpose(1, 2))
                if i < self.n_layers - 1:
                    x = act(z)
                    pre.append(z)
                    post.append(x)
                else:
                    x = z
            order = self.get("output_order").unsqueeze(1).expand_as(x)
            out = torch.zeros_like(x).scatter(2, order, x)
            if loss == "mse":
                diff = out - y
                per = diff[0].numel()
                losses = (diff * diff).flatten(1).mean(1)
                d_out = diff * (2.0 / per)
            else:
                logp = torch.log_softmax(out, -1)
                losses = -logp.gather(2, y.unsqueeze(2)).squeeze(2).mean(1)
                d_out = logp.exp().scatter_add(2, y.unsqueeze(2), -torch.ones_like(y, dtype=out.dtype).unsqueeze(2))
                d_out = d_out / n
            g = torch.gather(d_out, 2, order)  # slot j of the output layer feeds output order[j]
            for i in range(self.n_layers - 1, -1, -1):
                W = weights[i]
                W.grad = torch.bmm(g.transpose(1, 2), inputs[i])
                if biases is not None:
                    biases[i].grad = g.sum(1)
                if i > 0:
                    g = backward(self.activation, torch.bmm(g, W), pre[i - 1], post[i - 1])
                elif self.has_embedding:
                    emb = self.get("embedding")
                    dx = torch.bmm(g, W).reshape(token_rows.numel(), -1)
                    emb.grad = torch.zeros_like(emb).reshape(-1, emb.shape[-1]).index_add_(
                        0, token_rows.reshape(-1), dx).reshape(emb.shape)
        return losses


_ACTIVATION_BACKWARD = {
    nn.SiLU: lambda act, g, z, a: torch.ops.aten.silu_backward(g, z),
    nn.ReLU: lambda act, g, z, a: torch.ops.aten.threshold_backward(g, a, 0),
    nn.Tanh: lambda act, g, z, a: torch.ops.aten.tanh_backward(g, a),
    nn.Sigmoid: lambda act, g, z, a: torch.ops.aten.sigmoid_backward(g, a),
    nn.GELU: lambda act, g, z, a: torch.ops.aten.gelu_backward(g, z, approximate=act.approximate),
    nn.Identity: lambda act, g, z, a: g,
}


class _FusedAdamWStep:
    """``optimizer.step()`` for one fused AdamW group, without the per-call bookkeeping.

    Calls the same fused kernel with the optimizer's own state tensors (so checkpoints and
    state permutations see them); anything unusual goes through ``optimizer.step()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.lists = None
        group = optimizer.param_groups[0]
        self.ok = (
            len(optimizer.param_groups) == 1 and group.get("fused") is True
            and not group.get("amsgrad") and not group.get("maximize")
            and not group.get("capturable") and not group.get("differentiable")
            and group.get("decoupled_weight_decay", True)
            and getattr(torch, "_fused_adamw_", None) is not None
        )

    def __call__(self) -> None:
        if not self.ok:
            self.optimizer.step()
            return
        if self.lists is None:
            params = self.optimizer.param_groups[0]["params"]
            state = self.optimizer.state
            if any(p not in state or "exp_avg" not in state[p] for p in params):
                self.optimizer.step()  # the first step creates the state
                return
            self.lists = (params, [state[p]["exp_avg"] for p in params],
                          [state[p]["exp_avg_sq"] for p in params], [state[p]["step"] for p in params])
        params, exp_avgs, exp_avg_sqs, steps = self.lists
        group = self.optimizer.param_groups[0]
        torch._foreach_add_(steps, 1)
        torch._fused_adamw_(
            params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
            lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
            grad_scale=None, found_inf=None,
        )


def _member_losses(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Each member's mean loss, shape ``(S,)`` (their sum has each member's own gradient)."""
    if loss == "mse":
        return ((out - y) ** 2).flatten(1).mean(1)
    S, n = y.shape[0], y.shape[1]
    return F.cross_entropy(out.reshape(S * n, -1), y.reshape(-1), reduction="none").view(S, n).mean(1)


# -- one member's bookkeeping ----------------------------------------------------------------
@dataclasses.dataclass
class _Member:
    config: TrainConfig  # as given (saved in config.json / checkpoints)
    cfg: TrainConfig  # resolved
    run_dir: Path | None
    model: nn.Module = None
    data: object = None
    costs: dict = None
    optimizer: torch.optim.Optimizer = None
    checkpoint: dict | None = None
    history: list = dataclasses.field(default_factory=list)
    snapshots: list = dataclasses.field(default_factory=list)


def _group_key(cfg: TrainConfig, start_step: int) -> tuple:
    fields = dataclasses.asdict(cfg)
    return (start_step,) + tuple(
        (k, repr(v)) for k, v in sorted(fields.items()) if k not in MEMBER_FIELDS
    )


# -- the public calls ------------------------------------------------------------------------
def fit(config=None, out=None, resume: bool = False, progress: bool = True, plots: bool = True,
        *, device=None, seeds=None, methods=None, **overrides):
    """``bimt.fit``: one run, a :class:`TrainResult` (see :func:`bimt.train.train`, which also
    takes ``model=`` and ``data=``), or with ``seeds`` / ``methods`` a list of them trained as
    one stacked model (see :func:`fit_many`)."""
    if seeds is None and methods is None:
        from .loop import train

        return train(config, out, resume, progress, plots, device=device, **overrides)
    return fit_many(config, seeds=seeds, methods=methods, out=out, resume=resume,
                    progress=progress, plots=plots, device=device, **overrides)


def fit_many(
    configs=None,
    *,
    seeds=None,
    methods=None,
    out: str | os.PathLike | list | None = None,
    resume: bool = False,
    progress: bool = True,
    plots: bool = True,
    device=None,
    force: bool = False,
    **overrides,
) -> list[TrainResult]:
    """Train many runs of one task at once; one :class:`TrainResult` per run, in order.

    ``configs``: a list of TrainConfigs or dicts; or one config (or none) expanded over
    ``methods`` x ``seeds`` (``overrides`` apply to every run). ``out``: a directory holding one
    run directory per run, ``METHOD-sSEED``, or a list of run directories. ``resume=True``
    skips runs whose ``metrics.json`` exists and continues those with a checkpoint.
    Each member gets exactly the data, initialisation and updates of ``bimt.fit`` with its
    config; ``metrics.json`` adds ``batched_members`` (runs in its stack) and its ``wall_s`` is
    the whole stack's wall time. Each run directory is held as :func:`bimt.fit` holds its own
    (one writer; another run's directory refused unless ``force``).
    """
    task_obj = overrides.pop("task", None)
    if isinstance(task_obj, str):
        overrides["task"], task_obj = task_obj, None
    elif task_obj is not None:
        if not isinstance(task_obj, Task):
            raise ValueError(f"task must be a task name or a bimt.Task, got {task_obj!r}")
        overrides["task"] = task_obj.name
    configs = _expand(configs, seeds, methods, overrides)
    dirs = _run_dirs(configs, out)
    members = []
    for config, run_dir in zip(configs, dirs):
        task = task_obj or get_task(config.task)
        if task_obj is not None and config.task != task_obj.name:
            raise ValueError(f"config names task {config.task!r} but task={task_obj.name!r} was given")
        members.append(_Member(config, config.resolved(task), run_dir))
    device = resolve_device(device)
    results: list[TrainResult | None] = [None] * len(members)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        if resume and m.run_dir is not None and (m.run_dir / "metrics.json").exists():
            results[i] = _finished(m, task_obj)
            continue
        start = 0
        if resume and m.run_dir is not None and (m.run_dir / "checkpoint.pt").exists():
            m.checkpoint = load_checkpoint(m.run_dir / "checkpoint.pt")
            saved = TrainConfig.from_dict(m.checkpoint["config"])
            if saved != m.config:
                raise ValueError(
                    f"{m.run_dir} holds a run with another config; resume it with "
                    "bimt.fit(resume=True, out=...) or use a fresh directory"
                )
            start = m.checkpoint["step"]
        groups.setdefault(_group_key(m.cfg, start), []).append(i)
    with contextlib.ExitStack() as held:
        for idx in groups.values():
            for i in idx:
                if members[i].run_dir is not None:
                    held.enter_context(claim_run_dir(
                        members[i].run_dir, dataclasses.asdict(members[i].config),
                        resume=resume, force=force))
        for idx in groups.values():
            task = task_obj or get_task(members[idx[0]].cfg.task)
            threads = torch.get_num_threads()
            torch.set_num_threads(members[idx[0]].cfg.threads)
            try:
                for i, r in zip(idx, _train_stack([members[i] for i in idx], task, device,
                                                  progress, plots)):
                    results[i] = r
            finally:
                torch.set_num_threads(threads)
    return results


def _expand(configs, seeds, methods, overrides) -> list[TrainConfig]:
    if configs is None or isinstance(configs, (dict, TrainConfig)):
        base = configs if configs is not None else TrainConfig()
        base = TrainConfig.from_dict(base) if isinstance(base, dict) else base
        base = dataclasses.replace(base, **overrides)
        seeds = [base.seed] if seeds is None else list(seeds)
        methods = [base.method] if methods is None else list(methods)
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int):
                raise ValueError(f"seeds must be integers, got {s!r}")
        configs = [dataclasses.replace(base, method=m, seed=s) for m in methods for s in seeds]
    else:
        if seeds is not None or methods is not None:
            raise ValueError("give either a list of configs or seeds/methods, not both")
        configs = [dataclasses.replace(
            TrainConfig.from_dict(c) if isinstance(c, dict) else c, **overrides) for c in configs]
    if not configs:
        raise ValueError("no runs to train: give at least one seed (or config)")
    return configs


def _run_dirs(configs, out) -> list[Path | None]:
    if out is None:
        return [None] * len(configs)
    if isinstance(out, (list, tuple)):
        if len(out) != len(configs):
            raise ValueError(f"{len(out)} run directories for {len(configs)} runs")
        dirs = [Path(d) for d in out]
    else:
        dirs = [Path(out) / f"{c.method}-s{c.seed}" for c in configs]
    if len(set(dirs)) != len(dirs):
        raise ValueError("two runs would share one run directory; give distinct (method, seed) "
                         "pairs or a list of directories")
    return dirs


def _finished(m: _Member, task_obj) -> TrainResult:
    import json

    from .runs import load_model

    model, cfg = load_model(m.run_dir)
    state = load_checkpoint(m.run_dir / "checkpoint.pt")
    task = task_obj or get_task(cfg.task)
    data = task.make_data(cfg.seed, cfg.data_dir)
    metrics = json.loads((m.run_dir / "metrics.json").read_text())
    return TrainResult(model, metrics, state["history"], cfg, data, m.run_dir,
                       state.get("snapshots", []))


# -- the loop --------------------------------------------------------------------------------
def _train_stack(members: list[_Member], task: Task, device, progress, plots) -> list[TrainResult]:
    cfg0 = members[0].cfg
    for m in members:
        m.model, m.data = build_run(m.cfg, task, device)
        m.optimizer = _optimizer(m.model, m.cfg)
        m.costs = run_costs(m.model, m.cfg)
        if m.checkpoint is not None:
            m.model.load_state_dict(m.checkpoint["model"])
            m.optimizer.load_state_dict(m.checkpoint["optimizer"])
            m.history = list(m.checkpoint["history"])
            m.snapshots = list(m.checkpoint.get("snapshots", []))
    S = len(members)
    stack = StackedMLP([m.model for m in members])
    optimizer = _optimizer(stack, cfg0)
    optimizer_step = _FusedAdamWStep(optimizer)
    step, elapsed = 0, 0.0
    if members[0].checkpoint is not None:
        optimizer.load_state_dict(_stack_optimizer_state([m.optimizer.state_dict() for m in members]))
        step = members[0].checkpoint["step"]
        elapsed = max(m.checkpoint["wall_s"] for m in members)
        torch.set_rng_state(members[0].checkpoint["rng"]["torch"])
    for m in members:
        if m.run_dir is not None:
            m.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(m.run_dir / "config.json", dataclasses.asdict(m.config))
    views = [stack.member_views(s) for s in range(S)]
    spec = wiring_of(members[0].model).spec

    X_tr = torch.stack([m.data.X_train for m in members])
    y_tr = torch.stack([_targets(m, m.data.y_train) for m in members])
    n_train = X_tr.shape[1]
    full_batch = cfg0.batch_size is None or cfg0.batch_size >= n_train
    rows = torch.arange(S, device=X_tr.device).unsqueeze(1)
    grad_terms = _grad_terms(stack, members)
    for s, m in enumerate(members):
        if m.cfg.animate and step == 0:
            m.snapshots.append((0, stack.member_state(s)))

    bar = _progress(dataclasses.replace(cfg0, method=f"{S} runs", seed=cfg0.seed), step, progress)
    bar.set_description(f"{cfg0.task} [{S} runs, batched]")
    start = time.perf_counter() - elapsed
    batch_gen = torch.Generator()
    scaled_cache: dict = {}
    losses = None
    while step < cfg0.steps:
        if full_batch:
            xb, yb = X_tr, y_tr
        else:
            idx = []
            for m in members:  # each member's own batch, as its unbatched run draws it
                batch_gen.manual_seed(m.cfg.seed * 1_000_003 + step)
                idx.append(torch.randint(n_train, (cfg0.batch_size,), generator=batch_gen))
            idx = torch.stack(idx).to(X_tr.device)
            xb, yb = X_tr[rows, idx], y_tr[rows, idx]
        losses = stack.loss_and_grad(xb, yb, cfg0.loss)
        lams = tuple(
            lambda_at(m.cfg.lambda_schedule, step, m.cfg.steps) if m.costs["grad"] is not None else 0.0
            for m in members
        )
        bias_on = tuple(step >= m.costs["bias_from"] for m in members)
        if any(lams):
            key = (lams, bias_on)
            scaled = scaled_cache.get(key)
            if scaled is None:
                if len(scaled_cache) > 64:
                    scaled_cache.clear()
                scaled = _scaled_terms(grad_terms, lams, bias_on)
                scaled_cache[key] = scaled
            with torch.no_grad():
                for t, scale in scaled:
                    t.grad.addcmul_(t.sign(), scale)
        optimizer_step()
        step += 1
        for s, m in enumerate(members):
            if m.costs["swap"] is not None and step % m.cfg.swap_every == 0:
                report = swap_pass(views[s], spec, m.costs["swap"], m.cfg.top_k, m.cfg.swap_mode)
                _move_optimizer_state(stack, optimizer, spec, s, report.permutations)
            if m.cfg.animate and step % max(1, m.cfg.steps // m.cfg.animate_frames) == 0:
                m.snapshots.append((step, stack.member_state(s)))
        if step % cfg0.eval_every == 0 or step == cfg0.steps:
            _evaluate(stack, members, views, losses, lams, step, start, task)
            bar.set_postfix_str(
                f"test loss {min(m.history[-1]['test_loss'] for m in members):.3g} (best member)",
                refresh=False)
        bar.update(1)
        for s, m in enumerate(members):
            if m.run_dir is not None and (step % m.cfg.checkpoint_every == 0 or step == cfg0.steps):
                _save_member(stack, optimizer, m, s, step, time.perf_counter() - start)
    bar.close()
    wall = time.perf_counter() - start
    results = []
    for s, m in enumerate(members):
        _load_member(stack, optimizer, m, s)
        loss_fn = nn.MSELoss() if m.cfg.loss == "mse" else nn.CrossEntropyLoss()
        predict = task.predict or (lambda o: o)
        metrics = final_metrics(m.model, m.data, m.cfg, task, loss_fn, predict, m.costs["local"],
                                wall, _n_outputs(wiring_of(m.model)))
        metrics["batched_members"] = S
        result = TrainResult(m.model, metrics, m.history, m.cfg, m.data, m.run_dir, m.snapshots)
        if m.run_dir is not None:
            write_history_csv(m.run_dir / "history.csv", m.history)
            if plots:
                write_plots(result)
            write_metrics(m.run_dir, metrics)  # last: it marks the run complete
        results.append(result)
    return results


def _targets(m: _Member, y: torch.Tensor) -> torch.Tensor:
    return targets(y, m.cfg.loss, m.model, _n_outputs(wiring_of(m.model)))


def _grad_terms(stack: StackedMLP, members: list[_Member]) -> list[tuple]:
    """Per charged tensor: the stacked tensor and each member's per-entry scale (bias on/off)."""
    terms = []
    names = [n for n, _ in members[0].costs["local"].terms()]
    for name in names:
        t = stack.get(name)
        on, off = [], []
        for m in members:
            cost, no_bias = m.costs["grad"], m.costs["grad_no_bias"]
            like = m.model.get_parameter(name)
            if cost is None or name not in dict(cost.terms()):
                on.append(torch.zeros_like(like))
            else:
                on.append(torch.broadcast_to(
                    torch.as_tensor(cost._scale(m.model, name, dict(cost.terms())[name], like),
                                    dtype=like.dtype, device=like.device), like.shape))
            if cost is None or name not in dict(no_bias.terms()):
                off.append(torch.zeros_like(like))
            else:
                off.append(on[-1])
        terms.append((t, torch.stack(on), torch.stack(off)))
    return terms


def _scaled_terms(grad_terms, lams, bias_on) -> list[tuple]:
    """``(tensor, lambda_s * scale_s)`` for this step's lambdas and bias phases."""
    out = []
    for t, on, off in grad_terms:
        view = (-1,) + (1,) * (t.dim() - 1)
        lam = torch.tensor(lams, dtype=t.dtype, device=t.device).view(view)
        use = torch.tensor(bias_on, device=t.device).view(view)
        out.append((t, torch.where(use, on, off) * lam))
    return out


@torch.no_grad()
def _move_optimizer_state(stack, optimizer, spec, s: int, permutations: dict) -> None:
    """Permute member ``s``'s slice of every per-parameter state (Adam's moments) and grad."""
    for g, perm in permutations.items():
        perm = torch.as_tensor(perm, dtype=torch.long)
        if torch.equal(perm, torch.arange(len(perm))):
            continue
        n = spec.groups[g].size
        for name, dim in spec.axes_of(g):
            if name not in stack.names:
                continue
            p = stack.get(name)
            tensors = [v for v in optimizer.state.get(p, {}).values()
                       if torch.is_tensor(v) and v.shape == p.shape]
            if p.grad is not None:
                tensors.append(p.grad)
            for v in tensors:
                part = v[s]
                index = fold_index(perm.to(v.device), n, part.shape[dim])
                part.copy_(part.index_select(dim, index))


@torch.no_grad()
def _evaluate(stack, members, views, losses, lams, step, start, task) -> None:
    stack.eval()
    row = [dict() for _ in members]
    classification = task.kind == "classification"
    for split in ("train", "test"):
        X = torch.stack([getattr(m.data, f"X_{split}") for m in members])
        y = torch.stack([getattr(m.data, f"y_{split}") for m in members])
        target = torch.stack([_targets(m, getattr(m.data, f"y_{split}")) for m in members])
        out = _chunked(stack, X)
        split_losses = _member_losses(out, target, members[0].cfg.loss)
        for s in range(len(members)):
            row[s][f"{split}_loss"] = float(split_losses[s])
            row[s][f"{split}_acc"] = (float((out[s].argmax(-1) == y[s]).float().mean())
                                      if classification else None)
    stack.train()
    wall = round(time.perf_counter() - start, 3)
    for s, m in enumerate(members):
        train_loss = float(losses[s].detach())
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"run {m.cfg.method} seed {m.cfg.seed}: the training loss became {train_loss} at "
                f"step {step} (lambda={lams[s]:g}, lr={m.cfg.lr:g}); try a smaller lr or lambda"
            )
        row[s]["connection_cost"] = m.costs["local"].total(views[s])
        row[s].update(step=step, lam=lams[s], train_loss_batch=train_loss, wall_s=wall)
        m.history.append(row[s])


def _chunked(stack, X, batch: int = 4096):
    if X.shape[1] <= batch:
        return stack(X)
    return torch.cat([stack(X[:, i:i + batch]) for i in range(0, X.shape[1], batch)], 1)


@torch.no_grad()
def _load_member(stack, optimizer, m: _Member, s: int) -> None:
    """Copy member ``s``'s slices into its own model and optimizer."""
    m.model.load_state_dict(stack.member_state(s))
    m.optimizer.load_state_dict(_member_optimizer_state(optimizer.state_dict(), s))


def _save_member(stack, optimizer, m: _Member, s: int, step: int, wall: float) -> None:
    _load_member(stack, optimizer, m, s)
    save_checkpoint(m.run_dir / "checkpoint.pt", m.model, m.optimizer, step, m.history,
                    dataclasses.asdict(m.config), wall, m.snapshots)


def _member_optimizer_state(state: dict, s: int) -> dict:
    per = {}
    for i, st in state["state"].items():
        per[i] = {k: (v[s].clone() if torch.is_tensor(v) and v.dim() > 0 else
                      (v.clone() if torch.is_tensor(v) else v)) for k, v in st.items()}
    return {"state": per, "param_groups": state["param_groups"]}


def _stack_optimizer_state(states: list[dict]) -> dict:
    first = states[0]
    stacked = {}
    for i, st in first["state"].items():
        stacked[i] = {k: (torch.stack([s["state"][i][k] for s in states])
                          if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()}
    return {"state": stacked, "param_groups": first["param_groups"]}

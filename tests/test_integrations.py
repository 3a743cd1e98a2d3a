"""The Lightning and Hugging Face Trainer callbacks train exactly as a hand-written loop does.

Every framework run is compared with the same loop written by hand around ``Wiring.step`` (or
its two halves, where AMP needs them): same seed, same data in the same order, same optimizer.
The connection cost after every optimizer step must agree to 1e-6 relative, with swap passes at
the same steps making the same number of swaps. Skipped where a library is missing, unless
``BIMT_REQUIRE_EXTRAS`` is set (``.ci/run`` sets it): then a missing library fails.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import warnings

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import bimt
from bimt.integrations.common import BIMTStepper, find_wiring, grad_scale, lambda_schedule, torch_optimizer
from bimt.training.config import lambda_at

HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None
HAS_HF = all(importlib.util.find_spec(m) is not None for m in ("transformers", "accelerate"))

STEPS, BATCH, N, SWAP_EVERY = 40, 16, 64, 10
SCHEDULE = [[1e-3, 1], [1e-2, 1]]  # lambda 1e-3, then 1e-2 from step 20: lambda_at is exercised
TOL = 1e-6


def need(has: bool, what: str, extra: str) -> None:
    if has:
        return
    if os.environ.get("BIMT_REQUIRE_EXTRAS"):
        pytest.fail(f"BIMT_REQUIRE_EXTRAS is set but this needs {what}, not installed")
    pytest.skip(f"needs {what}, not installed (pip install 'bimt[{extra}]')")


@pytest.fixture(autouse=True)
def quiet():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def data():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(N, 2, generator=g) * 2 - 1
    return X, X[:, :1] ** 2 + torch.sin(3 * X[:, 1:])


def make_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 12), nn.SiLU(), nn.Linear(12, 12), nn.SiLU(), nn.Linear(12, 1))
    bimt.attach(net)
    return net


def make_optimizer(params, fused=False):
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0, fused=fused)


def hand_loop(batch=BATCH, autocast=None, scaler=False, fused=False, clip=None, cost_first=True):
    """The reference: optimizer step k (from 0) sees samples [k*batch, (k+1)*batch) mod N.
    ``clip``: clip the gradient norm to it, after (``cost_first``) or before adding the cost's."""
    X, y = data()
    net = make_net()
    wiring, opt = net.bimt, make_optimizer(net.parameters(), fused)
    amp = torch.amp.GradScaler("cpu") if scaler else None
    rows = []
    for step in range(STEPS):
        i = (step * batch) % N
        opt.zero_grad()
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = nn.functional.mse_loss(net(X[i:i + batch]), y[i:i + batch])
        lam = lambda_at(SCHEDULE, step, STEPS)
        if clip is not None:
            loss.backward()
            if not cost_first:
                nn.utils.clip_grad_norm_(net.parameters(), clip)
            wiring.connection_cost.add_grad_(net, lam)
            if cost_first:
                nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
            report = wiring.swap(optimizer=opt) if (step + 1) % SWAP_EVERY == 0 else None
        elif amp is None:
            loss.backward()
            report = wiring.step(opt, lam, swap_every=SWAP_EVERY)
        else:  # the two halves of Wiring.step around the scaler, as torch's AMP recipe has it
            amp.scale(loss).backward()
            amp.unscale_(opt)
            wiring.connection_cost.add_grad_(net, lam)
            amp.step(opt)
            amp.update()
            report = wiring.swap(optimizer=opt) if (step + 1) % SWAP_EVERY == 0 else None
        rows.append({"step": step + 1, "cost": float(wiring.cost()),
                     **({} if report is None else {"swaps": report.swaps})})
    return rows


def assert_same_run(history, reference):
    """Every optimizer step logged, costs to TOL, swap passes at the same steps with the same swaps."""
    assert [r["step"] for r in history] == [r["step"] for r in reference]
    worst = max(abs(r["cost"] - h["cost"]) / abs(h["cost"]) for r, h in zip(history, reference))
    assert worst <= TOL, worst
    swaps = [(r["step"], r["swaps"]) for r in history if "swaps" in r]
    assert swaps == [(r["step"], r["swaps"]) for r in reference if "swaps" in r]
    assert [s for s, _ in swaps] == [10, 20, 30, 40] and sum(n for _, n in swaps) > 0
    return worst


#: A gradient-norm bound below this run's gradient norms, so clipping acts at every step.
CLIP = 0.05


def assert_differs(history, reference):
    """The other order of clipping and cost gives another run (so the order tests can fail)."""
    assert max(abs(r["cost"] - h["cost"]) / abs(h["cost"]) for r, h in zip(history, reference)) > 100 * TOL


# -- Lightning --------------------------------------------------------------------------------
def lightning_run(tmp_path, micro_batch=BATCH, accumulate=1, fused=False, log_every=1, **trainer_kw):
    import lightning as L

    from bimt.integrations.lightning import BIMTCallback

    X, y = data()
    net = make_net()

    class Regression(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return make_optimizer(self.parameters(), fused)

    callback = BIMTCallback(lam=SCHEDULE, swap_every=SWAP_EVERY, log_every=log_every)  # finds net
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=micro_batch)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, callbacks=[callback],
                        accumulate_grad_batches=accumulate, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_kw)
    trainer.fit(Regression(), loader)
    return callback, net, trainer


def test_lightning_run_equals_the_hand_loop(tmp_path):
    need(HAS_LIGHTNING, "lightning", "lightning")
    from lightning.pytorch.loggers import CSVLogger

    callback, net, trainer = lightning_run(tmp_path, log_every=None, log_every_n_steps=5,
                                           logger=CSVLogger(tmp_path))
    reference = hand_loop()
    # log_every=None follows the trainer's log_every_n_steps; swap passes add their own rows
    steps = sorted({5 * k for k in range(1, 9)} | {10, 20, 30, 40})
    assert [r["step"] for r in callback.history] == steps
    by_step = {r["step"]: r for r in reference}
    for row in callback.history:
        assert abs(row["cost"] - by_step[row["step"]]["cost"]) <= TOL * abs(by_step[row["step"]]["cost"])
        assert row.get("swaps") == by_step[row["step"]].get("swaps")
        assert row["lambda"] == lambda_at(SCHEDULE, row["step"] - 1, STEPS)
    assert callback.wiring is net.bimt
    # the logger got the costs and the running swap count
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        logged = [r for r in csv.DictReader(f) if r.get("bimt/cost")]
    assert [float(r["bimt/cost"]) for r in logged] == pytest.approx([r["cost"] for r in callback.history], rel=1e-6)
    assert float(logged[-1]["bimt/swaps"]) == sum(r.get("swaps", 0) for r in reference)
    assert "bimt/modularity" in logged[-1]


def test_lightning_every_step(tmp_path):
    need(HAS_LIGHTNING, "lightning", "lightning")
    callback, _, _ = lightning_run(tmp_path, logger=False)
    assert_same_run(callback.history, hand_loop())


def test_lightning_gradient_accumulation_equals_the_full_batch(tmp_path):
    """Two micro-batches of 8 accumulated = one batch of 16: the cost's gradient is added once
    per optimizer step, to the mean gradient Lightning accumulates."""
    need(HAS_LIGHTNING, "lightning", "lightning")
    callback, _, _ = lightning_run(tmp_path, micro_batch=BATCH // 2, accumulate=2, logger=False)
    assert_same_run(callback.history, hand_loop())


@pytest.mark.parametrize("kind", ["bf16", "fp16", "fp16-fused"])
def test_lightning_mixed_precision(tmp_path, kind):
    """bf16 autocast; fp16 with a GradScaler, which Lightning unscales before the hook; and a
    fused AdamW, which unscales inside its step, so the hook sees scaled gradients and adds the
    cost's gradient times the scale."""
    need(HAS_LIGHTNING, "lightning", "lightning")
    from lightning.pytorch.plugins import MixedPrecision

    fused = kind == "fp16-fused"
    if kind == "bf16":
        kw, reference = dict(precision="bf16-mixed"), hand_loop(autocast=torch.bfloat16)
    else:  # Lightning refuses "16-mixed" on CPU; the plugin with a CPU GradScaler runs it
        kw = dict(plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))])
        reference = hand_loop(autocast=torch.float16, scaler=True, fused=fused)
    seen = []
    if fused:  # the scaled path is taken: the gradients carry the scale when the cost is added
        import bimt.integrations.lightning as module

        def spy(scaler, optimizer):
            seen.append(grad_scale(scaler, optimizer))
            return seen[-1]

        original, module.grad_scale = module.grad_scale, spy
    try:
        callback, _, _ = lightning_run(tmp_path, fused=fused, logger=False, **kw)
    finally:
        if fused:
            module.grad_scale = original
    assert_same_run(callback.history, reference)
    if fused:
        assert len(seen) == STEPS and min(seen) > 1


def test_lightning_clips_the_cost_gradient_with_the_loss_gradient(tmp_path):
    """on_before_optimizer_step runs before Lightning's gradient clipping."""
    need(HAS_LIGHTNING, "lightning", "lightning")
    callback, _, _ = lightning_run(tmp_path, logger=False, gradient_clip_val=CLIP)
    assert_same_run(callback.history, hand_loop(clip=CLIP, cost_first=True))
    assert_differs(callback.history, hand_loop(clip=CLIP, cost_first=False))


def test_lightning_trained_model_draws(tmp_path):
    need(HAS_LIGHTNING, "lightning", "lightning")
    _, net, _ = lightning_run(tmp_path, logger=False)
    assert isinstance(bimt.viz.plot(net), Figure)


# -- Hugging Face Trainer ---------------------------------------------------------------------
class Regressor(nn.Module):
    """What the Trainer expects of a model: keyword inputs, a dict with the loss."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, labels):
        prediction = self.net(x)
        return {"loss": nn.functional.mse_loss(prediction, labels), "logits": prediction}


def hf_run(tmp_path, micro_batch=BATCH, accumulate=1, log_every=1, reporter=None, first=False, **args_kw):
    from transformers import Trainer, TrainingArguments

    from bimt.integrations.transformers import BIMTCallback

    X, y = data()
    net = make_net()

    class InOrder(torch.utils.data.IterableDataset):  # the Trainer shuffles only map datasets
        def __iter__(self):
            while True:
                for i in range(N):
                    yield {"x": X[i], "labels": y[i]}

    model = Regressor(net)
    opt = make_optimizer(model.parameters())
    constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    callback = BIMTCallback(lam=SCHEDULE, swap_every=SWAP_EVERY, log_every=log_every)  # finds net
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=micro_batch,
                             gradient_accumulation_steps=accumulate, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                             **{"max_grad_norm": 0.0, **args_kw})
    trainer = Trainer(model=model, args=args, train_dataset=InOrder(), optimizers=(opt, constant),
                      callbacks=[c for c in (reporter, callback) if c is not None])
    if first:  # as the callback's docstring says, for reporters to see its metrics
        trainer.callback_handler.callbacks.insert(0, trainer.pop_callback(BIMTCallback))
    trainer.train()
    return callback, net, trainer


def test_hf_trainer_run_equals_the_hand_loop(tmp_path):
    need(HAS_HF, "transformers and accelerate", "hf")
    callback, net, trainer = hf_run(tmp_path, log_every=None, logging_steps=5)
    reference = hand_loop()
    steps = sorted({5 * k for k in range(1, 9)} | {10, 20, 30, 40})
    assert [r["step"] for r in callback.history] == steps
    by_step = {r["step"]: r for r in reference}
    for row in callback.history:
        assert abs(row["cost"] - by_step[row["step"]]["cost"]) <= TOL * abs(by_step[row["step"]]["cost"])
        assert row.get("swaps") == by_step[row["step"]].get("swaps")
    assert callback.wiring is net.bimt
    # the Trainer's log history holds the cost at every logging step, beside its loss
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logged] == [5 * k for k in range(1, 9)]
    assert [e["bimt/cost"] for e in logged] == pytest.approx([by_step[e["step"]]["cost"] for e in logged], rel=TOL)
    assert logged[-1]["bimt/swaps"] == sum(r.get("swaps", 0) for r in reference)
    assert logged[-1]["bimt/lambda"] == SCHEDULE[1][0] and "bimt/modularity" in logged[-1]


@pytest.mark.parametrize("first", [False, True])
def test_hf_reporters_see_the_metrics_when_the_callback_comes_first(tmp_path, first):
    need(HAS_HF, "transformers and accelerate", "hf")
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):  # stands for report_to's integrations, which come first
        def __init__(self):
            self.seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    reporter = Reporter()
    callback, _, trainer = hf_run(tmp_path, log_every=None, logging_steps=10, reporter=reporter, first=first)
    training = [e for e in reporter.seen if "loss" in e]
    assert len(training) == 4
    assert all(("bimt/cost" in e) == first for e in training)
    # either way the cadence is the Trainer's and the history the same
    assert [r["step"] for r in callback.history] == [10, 20, 30, 40]
    assert [e["bimt/cost"] for e in trainer.state.log_history if "loss" in e] == [
        r["cost"] for r in callback.history]


def test_hf_trainer_every_step(tmp_path):
    need(HAS_HF, "transformers and accelerate", "hf")
    callback, _, _ = hf_run(tmp_path)
    assert_same_run(callback.history, hand_loop())


def test_hf_gradient_accumulation_equals_the_full_batch(tmp_path):
    """The Trainer divides each micro-batch's loss by the accumulation steps; the cost's
    gradient, added once per optimizer step, then matches one batch of twice the size."""
    need(HAS_HF, "transformers and accelerate", "hf")
    callback, _, _ = hf_run(tmp_path, micro_batch=BATCH // 2, accumulate=2)
    assert_same_run(callback.history, hand_loop())


def test_hf_bf16_mixed_precision(tmp_path):
    need(HAS_HF, "transformers and accelerate", "hf")
    callback, _, _ = hf_run(tmp_path, bf16=True)
    assert_same_run(callback.history, hand_loop(autocast=torch.bfloat16))


@pytest.mark.parametrize("unscaled", [False, True])
def test_hf_hook_adds_the_cost_in_the_gradients_units(unscaled):
    """accelerate runs fp16 on CPU without a GradScaler, so the scaler path is checked at the
    hook: with accelerate's optimizer wrapper and a scaler that has (or has not yet) unscaled
    the gradients, the step's unscaled gradient is the loss's plus lambda times the cost's."""
    need(HAS_HF, "transformers and accelerate", "hf")
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.state import AcceleratorState
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from bimt.integrations.transformers import BIMTCallback

    X, y = data()
    net = make_net()
    loss = nn.functional.mse_loss(net(X), y)
    loss_grads = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    net.zero_grad()
    net.bimt.cost().mul(0.01).backward()
    cost_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    Accelerator(cpu=True)
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        opt = AcceleratedOptimizer(make_optimizer(net.parameters()), device_placement=False, scaler=scaler)
        scaler.scale(loss).backward()
        if unscaled:  # what the Trainer's clipping does first
            scaler.unscale_(opt.optimizer)
        callback = BIMTCallback(lam=0.01)
        callback.on_train_begin(TrainingArguments(output_dir="unused", report_to=[]), TrainerState(),
                                TrainerControl(), model=Regressor(net))
        callback.on_pre_optimizer_step(None, TrainerState(global_step=0, max_steps=10), TrainerControl(),
                                       optimizer=opt)
        if not unscaled:
            scaler.unscale_(opt.optimizer)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    for p, g, c in zip(net.parameters(), loss_grads, cost_grads):
        torch.testing.assert_close(p.grad, g + c, rtol=1e-5, atol=1e-7)


def test_hf_adds_the_cost_gradient_after_clipping(tmp_path):
    """on_pre_optimizer_step runs after the Trainer's clipping (max_grad_norm)."""
    need(HAS_HF, "transformers and accelerate", "hf")
    callback, _, _ = hf_run(tmp_path, max_grad_norm=CLIP)
    assert_same_run(callback.history, hand_loop(clip=CLIP, cost_first=False))
    assert_differs(callback.history, hand_loop(clip=CLIP, cost_first=True))


def test_hf_trained_model_draws(tmp_path):
    need(HAS_HF, "transformers and accelerate", "hf")
    _, net, _ = hf_run(tmp_path)
    assert isinstance(bimt.viz.plot(net), Figure)


# -- the shared core --------------------------------------------------------------------------
def test_find_wiring_looks_inside_wrappers():
    net = make_net()
    assert find_wiring(Regressor(net)) is net.bimt
    assert find_wiring(net) is net.bimt and find_wiring(net.bimt) is net.bimt
    with pytest.raises(TypeError, match="nor does any of its submodules"):
        find_wiring(nn.Sequential(nn.Linear(2, 2)))
    two = nn.ModuleDict({"a": make_net(), "b": make_net()})
    with pytest.raises(ValueError, match="holds 2 wired modules \\(a, b\\)"):
        find_wiring(two)
    model = bimt.BioMLP([2, 4, 1])  # a wired module inside a wired module: the outer one
    assert find_wiring(nn.ModuleList([model])) is model.bimt


def test_torch_optimizer_unwraps():
    opt = make_optimizer(make_net().parameters())
    assert torch_optimizer(opt) is opt

    class Wrapper:
        optimizer = opt

    assert torch_optimizer(Wrapper()) is opt
    with pytest.raises(TypeError, match="not a torch optimizer"):
        torch_optimizer(object())


def test_lambda_schedules_and_their_errors():
    assert lambda_schedule(0.01) == [[0.01, 1.0]]
    assert lambda_schedule(((1e-3, 3), (0, 1))) == [[1e-3, 3], [0, 1]]
    assert lambda_schedule(None) == [[1e-3, 1]]
    for bad in (-1, "x", [[1e-3, 0]], [[1e-3]], True):
        with pytest.raises(ValueError, match="lam must be a number >= 0 or phases"):
            lambda_schedule(bad)
    stepper = BIMTStepper(make_net(), [[1e-3, 1], [0, 1]])
    assert stepper.lam_at(0, 10) == 1e-3 and stepper.lam_at(5, 10) == 0
    with pytest.raises(ValueError, match="this run's length is unknown"):
        stepper.lam_at(0, float("inf"))
    assert BIMTStepper(make_net(), 0.5).lam_at(10**6, None) == 0.5  # a constant needs no length
    with pytest.raises(ValueError, match="swap_every must be a positive integer"):
        BIMTStepper(make_net(), swap_every=0)
    with pytest.raises(ValueError, match="unknown swap mode 'best'"):
        BIMTStepper(make_net(), mode="best")


def test_grad_scale_follows_the_scaler_stage():
    net = make_net()
    opt = make_optimizer(net.parameters())
    assert grad_scale(None, opt) == 1.0
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    assert grad_scale(scaler, opt) == 256.0  # nothing unscaled yet
    scaler.scale(net(torch.rand(4, 2)).sum()).backward()
    scaler.unscale_(opt)
    assert grad_scale(scaler, opt) == 1.0
    scaler.step(opt)
    scaler.update()
    assert grad_scale(scaler, opt) == 256.0  # the next step starts scaled again
    assert grad_scale(torch.amp.GradScaler("cpu", enabled=False), opt) == 1.0


def test_stepper_logs_swaps_and_modularity_at_their_cadence():
    net = make_net()
    opt = make_optimizer(net.parameters())
    stepper = BIMTStepper(net, 0.01, swap_every=3, modularity_every=2)
    logged = []
    for step in range(1, 7):
        net(torch.rand(8, 2)).sum().backward()
        stepper.add_cost_grad(step - 1, 6)
        opt.step()
        opt.zero_grad()
        logged.append(stepper.after_step(step, [opt], log=step == 6))
    assert [r["step"] for r in stepper.history] == [2, 3, 4, 6]
    assert [("swaps" in r, "modularity" in r) for r in stepper.history] == [
        (False, True), (True, False), (False, True), (True, True)]
    assert logged[:5] == [None] * 5
    assert set(logged[5]) == {"bimt/cost", "bimt/lambda", "bimt/swaps", "bimt/modularity"}
    assert logged[5]["bimt/swaps"] == stepper.swaps == sum(r.get("swaps", 0) for r in stepper.history)
    assert BIMTStepper(net, modularity_every=0).modularity_every == 0

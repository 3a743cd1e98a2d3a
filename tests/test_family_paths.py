"""The usual path for the models people already use, with no hand-written spec: a Hugging Face
GPT-2 and Llama (random weights from small configs) and a ResNet-18-shaped network (the
structural equivalent of torchvision's ``ResNet`` that ``test_families`` defines: torchvision
does not install beside the pinned CPU torch) with one input channel on MNIST.

For each: ``bimt.attach(model)``; ``wiring.step`` in a loop of one's own; ``bimt.fit(model=...,
data=...)`` (next-token cross-entropy on the text-lm corpus, or image classes) into a run
directory with its graph.png; the picture in the family's view with its residual streams;
``bimt analyze RUN`` from the saved spec; an interrupted run resumed from a fresh instance giving
exactly the uninterrupted numbers; ``export()`` back to the class (``save_pretrained`` /
``from_pretrained``, or a strict ``load_state_dict``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import bimt
from bimt.cli import main as cli
from bimt.models import families
from bimt.models.drawing import drawing_of, spec_drawing
from bimt.tasks.language import BYTE_VOCAB, text_sequences
from bimt.training.runs import load_checkpoint
from conftest import fit_interrupted
from test_families import BasicBlock, ResNet, needs_hf

TOL = 1e-5  # outputs of an exported model against the trained one


# -- the families --------------------------------------------------------------------------------
def gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=BYTE_VOCAB,
                                      n_positions=16, bos_token_id=0, eos_token_id=0))


def llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=BYTE_VOCAB, max_position_embeddings=16,
        bos_token_id=0, eos_token_id=0, pad_token_id=0))


def resnet18_shaped(seed: int = 0, planes=(4, 8, 8, 16)):
    """ResNet-18's blocks ([2, 2, 2, 2] BasicBlocks, torchvision's names and forward), narrow,
    with a one-channel stem for MNIST."""
    torch.manual_seed(seed)
    model = ResNet(BasicBlock, [2, 2, 2, 2], 10, planes, planes[0])
    model.conv1 = nn.Conv2d(1, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
    return model


@functools.lru_cache(maxsize=1)
def text_data(n: int = 96, context: int = 16):
    train = text_sequences(n, context + 1, "train", seed=0)
    valid = text_sequences(24, context + 1, "valid", seed=0)
    return train[:, :-1], train[:, 1:], valid[:, :-1], valid[:, 1:]


@functools.lru_cache(maxsize=1)
def mnist_data(n_train: int = 128, n_test: int = 32):
    """A random subset of the packaged MNIST images as (N, 1, 28, 28), read once (it takes
    seconds)."""
    X, y, Xt, yt, _ = bimt.tasks.data.load_mnist()
    rng = np.random.default_rng(0)
    i, j = rng.permutation(len(X))[:n_train], rng.permutation(len(Xt))[:n_test]
    as_images = lambda a: torch.as_tensor(a).reshape(-1, 1, 28, 28)
    return as_images(X[i]), torch.as_tensor(y[i]).long(), as_images(Xt[j]), torch.as_tensor(yt[j]).long()


@dataclass
class Family:
    name: str
    make: object  # seed -> a fresh model
    data: object  # () -> (X, y, X_test, y_test)
    view: str
    streams: list  # (earlier, later) row names of the residual streams
    hf: bool

    def outputs(self, model, x):
        out = model(x)
        return (out.logits if self.hf else out).detach()


TRANSFORMER_STREAMS = [("Embed", "Res1"), ("Res1", "Res2"), ("Res2", "Res3"), ("Res3", "Res4")]
FAMILIES = {
    "gpt2": Family("gpt2", gpt2, text_data, "gpt2", TRANSFORMER_STREAMS, True),
    "llama": Family("llama", llama, text_data, "llama", TRANSFORMER_STREAMS, True),
    "resnet": Family("resnet", resnet18_shaped, mnist_data, "resnet",
                     [("stem", "layer1.0"), ("layer1.0", "layer1.1"), ("layer2.0", "layer2.1"),
                      ("layer3.0", "layer3.1"), ("layer4.0", "layer4.1")], False),
}
ALL = [pytest.param(n, marks=needs_hf) if FAMILIES[n].hf else n for n in FAMILIES]


@pytest.fixture
def family_registry():
    """The test's ResNet class known to attach (torchvision's is known by name); the registry
    restored afterwards."""
    saved = dict(families.BUILDERS)
    families.BUILDERS.setdefault(ResNet, families.resnet_spec)
    yield
    families.BUILDERS.clear()
    families.BUILDERS.update(saved)


@pytest.fixture
def family(request, family_registry):
    return FAMILIES[request.param]


def fit_kw(fam: Family, **over) -> dict:
    kw = dict(loss="ce", steps=24, lr=3e-3, batch_size=16, swap_every=5, top_k=4,
              lambda_schedule=[[1e-2, 1]], eval_every=8, checkpoint_every=8, progress=False,
              plots=False)
    return {**kw, **over}


# -- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ALL, indirect=True)
def test_attach_and_step_in_a_loop_of_ones_own(family):
    model = family.make(0)
    wiring = bimt.attach(model, A=2.0, y_star=0.5)  # no spec: the family's builder
    assert model.bimt is wiring and wiring.view == family.view
    X, y, Xt, _ = family.data()
    model.eval()  # the function is compared without dropout and with BatchNorm's running stats
    before, cost0 = family.outputs(model, Xt), wiring.connection_cost.total(model)
    report = wiring.swap(top_k=4)
    assert report.swaps > 0
    assert (family.outputs(model, Xt) - before).abs().max() <= 1e-4 * before.abs().max()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    reports = []
    for step in range(12):
        opt.zero_grad()
        i = torch.arange(16) + 16 * (step % (len(X) // 16))
        out = model(X[i])
        logits = out.logits.movedim(-1, 1) if family.hf else out
        nn.functional.cross_entropy(logits, y[i]).backward()
        reports.append(wiring.step(opt, lam=1e-2, swap_every=4, top_k=4))
    done = [r for r in reports if r is not None]
    assert len(done) == 3 and sum(r.swaps for r in done) > 0
    assert wiring.connection_cost.total(model) < cost0  # the cost's gradient pulls it down


@pytest.mark.parametrize("family", ALL, indirect=True)
def test_fit_writes_a_run_that_is_drawn_and_analysed(family, tmp_path):
    model = family.make(0)
    bimt.attach(model)
    run = tmp_path / "run"
    result = bimt.fit(model=model, data=family.data(), out=run, **fit_kw(family, plots=True))
    costs = [r["connection_cost"] for r in result.history]
    assert costs[-1] < costs[0]
    assert (run / "graph.png").stat().st_size > 0
    fig = bimt.viz.plot(model)
    assert isinstance(fig, Figure)
    drawing = drawing_of(model.bimt)
    assert [(drawing.rows[a].name, drawing.rows[b].name) for a, b in drawing.streams] == family.streams
    assert cli(["analyze", str(run)]) == 0
    analysis = json.loads((run / "analysis.json").read_text())
    assert analysis["modularity"] == pytest.approx(result.metrics["modularity"])
    assert analysis["test_loss"] == result.metrics["test_loss"]


@pytest.mark.parametrize("family", ALL, indirect=True)
def test_an_interrupted_fit_resumes_exactly_from_a_fresh_instance(family, tmp_path, monkeypatch):
    data, kw = family.data(), fit_kw(family)
    full = bimt.fit(model=bimt.attach(family.make(0)).module, data=data, out=tmp_path / "full", **kw)
    # Ctrl-C at the third swap pass (step 15): the last checkpoint is step 8
    fit_interrupted(monkeypatch, 3, model=bimt.attach(family.make(0)).module, data=data,
                    out=tmp_path / "cut", **kw)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 8
    fresh = family.make(99)  # other weights, no wiring: both come from the checkpoint
    resumed = bimt.fit(model=fresh, data=data, loss="ce", out=tmp_path / "cut", resume=True,
                       progress=False, plots=False)
    drop = lambda m: {k: v for k, v in m.items() if k != "wall_s"}
    assert drop(resumed.metrics) == drop(full.metrics)
    assert [drop(r) for r in resumed.history] == [drop(r) for r in full.history]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.parametrize("family", ALL, indirect=True)
def test_export_after_training_with_swaps_loads_back_into_the_class(family, tmp_path):
    model = family.make(0)
    wiring = bimt.attach(model)
    bimt.fit(model=model, data=family.data(), **fit_kw(family))
    model.eval()
    x = family.data()[2]
    before = family.outputs(model, x)
    rng = np.random.default_rng(0)
    for name, group in wiring.spec.groups.items():  # every free neuron surely off its first place
        if not group.frozen and group.heads == 1:
            wiring.permute(name, rng.permutation(group.size))
    assert (family.outputs(model, x) - before).abs().max() <= 1e-4 * before.abs().max()
    plain = wiring.export()
    assert "bimt" not in vars(plain) and type(plain) is type(model)
    if family.hf:
        plain.save_pretrained(tmp_path / "saved")
        back = type(model).from_pretrained(tmp_path / "saved").eval()
    else:
        back = family.make(1).eval()
        back.load_state_dict(plain.state_dict())  # strict
    assert (family.outputs(back, x) - family.outputs(model, x)).abs().max() <= TOL


def test_a_full_width_resnet18_is_drawn_with_its_strongest_channel_pairs(family_registry):
    model = resnet18_shaped(0, planes=(64, 128, 256, 512))  # torchvision's widths
    full = spec_drawing(bimt.attach(model))  # every channel pair
    drawn = drawing_of(model.bimt)
    sizes = [e.W.size for e in full.edges]
    assert sum(sizes) > 1_000_000 and [e.W.size for e in drawn.edges] == sizes
    kept = [np.count_nonzero(e.W) for e in drawn.edges]
    assert sum(kept) <= families.MAX_DRAWN
    for e, f, k in zip(drawn.edges, full.edges, kept):
        a = np.abs(f.W).reshape(-1)
        share = e.W.size * families.MAX_DRAWN // sum(sizes)  # the same share of every weight,
        per_channel = families.RESNET_LINES_PER_CHANNEL * max(e.W.shape)  # few per channel
        assert k == min(share, per_channel, e.W.size)
        # what is kept is the weight's own values, its largest in magnitude
        nz = e.W != 0
        assert np.array_equal(e.W[nz], f.W[nz])
        assert np.abs(f.W[nz]).min() >= np.sort(a)[-k]


# -- the README's worked examples that its own test does not run ----------------------------------
README = Path(__file__).resolve().parents[1] / "README.md"
#: ``python no-run`` blocks: too slow for tests/test_readme.py, or needing torchvision
NOT_RUN = re.findall(r"```python no-run\n(.*?)```", README.read_text(), flags=re.S)


def readme_block(needle: str) -> str:
    (block,) = [b for b in NOT_RUN if needle in b]
    return block


@needs_hf
@pytest.mark.slow
def test_readme_gpt2_fit_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("GPT2LMHeadModel"), "README GPT-2 fit example", "exec"), {})
    assert json.loads((tmp_path / "gpt2-run" / "metrics.json").read_text())["steps"] == 300


@pytest.mark.parametrize("family", ["resnet"], indirect=True)
def test_readme_resnet_example_runs(family, tmp_path, monkeypatch):
    """With torchvision's ResNet-18 when it is installed, else with ``resnet18`` standing for a
    network of its structure at an eighth of its widths."""
    if importlib.util.find_spec("torchvision") is None:
        vision, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
        models.resnet18 = lambda num_classes=1000: ResNet(BasicBlock, [2, 2, 2, 2], num_classes,
                                                          planes=(8, 16, 32, 64), stem=8)
        vision.models = models
        monkeypatch.setitem(sys.modules, "torchvision", vision)
        monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_block("resnet18"), "README ResNet example", "exec"), scope)
    costs = [r["connection_cost"] for r in scope["result"].history]
    assert costs[-1] < costs[0] and (tmp_path / "resnet-run" / "graph.png").exists()
    x = scope["data"][2]
    fresh, model = scope["fresh"].eval(), scope["model"].eval()
    assert (fresh(x) - model(x)).abs().max() <= TOL

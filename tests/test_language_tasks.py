"""The language tasks through the one loop: short induction and text-lm runs, exact resume, the
circuit analysis of a run directory, and the GPT drawn block by block."""

from __future__ import annotations

import json
import math

import pytest
import torch

import bimt
from bimt.cli import main
from bimt.tasks import get_task
from bimt.tasks.language import IGNORE, stdlib_corpus

QUIET = dict(progress=False, plots=False)
SMALL = dict(steps=12, widths=[16], eval_every=6, swap_every=4, batch_size=16)


def test_induction_reports_accuracy_on_the_predictable_tokens_only():
    task = get_task("induction")
    data = task.make_data(0)
    assert data.X_train.shape[1] == 31 and (data.y_train == IGNORE).any()
    assert not (data.y_train_fit == IGNORE).any()  # training fits every next token
    kept = data.y_test != IGNORE
    assert 0 < kept.float().mean() < 0.6
    result = bimt.fit(task="induction", **SMALL, **QUIET)
    m = result.metrics
    assert 0 <= m["test_acc"] <= 1 and math.isfinite(m["test_loss"]) and m["modularity"] is not None


def test_text_lm_records_its_corpus_and_bits_per_character():
    corpus = stdlib_corpus()
    result = bimt.fit(task="text-lm", **SMALL, **QUIET)
    m = result.metrics
    assert m["corpus_chars"] == corpus.chars and m["corpus_sha256"] == corpus.sha256
    assert m["test_bpc"] == pytest.approx(m["test_loss"] / math.log(2))
    assert 0 < m["test_bpc"] <= 8.5  # a byte's worth of bits at most (and a little rounding)
    assert "standard library" in m["data_source"]
    assert set(corpus.train_files).isdisjoint(corpus.valid_files)  # split by file


@pytest.mark.parametrize("task", ["induction", "text-lm"])
def test_a_language_run_resumes_exactly(tmp_path, monkeypatch, task):
    import bimt.training.loop as loop

    kw = dict(SMALL, checkpoint_every=4, **QUIET)
    whole = bimt.fit(task=task, out=tmp_path / "whole", **kw)
    real, saves = loop.save_checkpoint, []

    def stop_after_second(*a, **k):
        real(*a, **k)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", stop_after_second)
    with pytest.raises(KeyboardInterrupt):
        bimt.fit(task=task, out=tmp_path / "cut", **kw)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    resumed = bimt.fit(task=task, out=tmp_path / "cut", resume=True, **QUIET)
    for key in ("train_loss", "test_loss", "test_acc", "connection_cost"):
        assert resumed.metrics[key] == whole.metrics[key], key


def test_analyze_circuit_of_an_induction_run_and_its_report(tmp_path, capsys):
    run = tmp_path / "ind"
    assert main(["train", "induction", "--steps", "8", "--widths", "16", "--batch-size", "8",
                 "--out", str(run), "--quiet"]) == 0
    assert main(["analyze", str(run), "--circuit"]) == 0
    circuit = json.loads((run / "circuit.json").read_text())
    assert {"heads", "neurons", "baseline", "after_knockout", "after_heads_knockout", "other_effect", "one_module",
            "scores"} <= set(circuit)
    assert set(circuit["scores"]) == {f"L{b}.h{h}" for b in range(2) for h in range(4)}
    assert (run / "circuit.png").exists() and "## Circuit" in (run / "analysis.md").read_text()
    assert main(["view", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert '"heads":{"L0.h0"' in page.replace(" ", "")
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "nothing")]) == 2


def test_analyze_circuit_refuses_a_task_without_a_probe(tmp_path, capsys):
    run = tmp_path / "moons"
    assert main(["train", "two-moons", "--steps", "5", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["analyze", str(run), "--circuit"]) == 2
    assert "no circuit probe" in capsys.readouterr().err


def test_the_gpt_is_drawn_block_by_block_with_its_heads_boxed():
    from bimt.models.drawing import drawing_of

    torch.manual_seed(0)
    model = bimt.BioGPT(32, 16, d_model=16, n_layers=2, n_heads=4)
    drawing = drawing_of(model.bimt)
    assert [r.name for r in drawing.rows] == ["Embed", "Atn0", "Res1", "MLP0", "Res2", "Atn1",
                                              "Res3", "MLP1", "Res4"]
    assert len(drawing.streams) == 4 and drawing.rows[1].heads == 4 and drawing.rows[1].fold == 3
    fig = bimt.viz.plot(model, highlight={"attn1": [4, 5, 6, 7]})
    gids = {a.get_gid() for a in fig.axes[0].get_children()}
    assert {"heads-Atn0", "streams", "highlight"} <= gids

"""bimt.viz: connectivity graphs, decision boundaries, atomic saving, animations."""

import os

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

import bimt
from bimt import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _collections(fig, prefix="weights-"):
    ax = fig.axes[0]
    return {c.get_gid(): c for c in ax.collections if (c.get_gid() or "").startswith(prefix)}


def _texts(fig, gid):
    return [t for t in fig.axes[0].texts if t.get_gid() == gid]


def _slot_of(x, coords):
    return int(np.argmin(np.abs(coords[:, 0] - x)))


def _no_temp_files(folder):
    return [p for p in os.listdir(folder) if p.endswith(".tmp")] == []


# ---------------------------------------------------------------------------------------------
def test_plot_graph_returns_figure_and_saves_png_svg(tmp_path):
    torch.manual_seed(0)
    model = bimt.BioMLP([4, 20, 20, 2])
    fig = viz.plot_graph(model, title="hello")
    assert isinstance(fig, Figure)
    assert fig.axes[0].get_title() == "hello"
    assert len(_collections(fig)) == 3
    paths = viz.save_figure(fig, tmp_path / "graph")
    assert [p.name for p in paths] == ["graph.png", "graph.svg"]
    assert (tmp_path / "graph.png").read_bytes()[:8] == PNG_MAGIC
    assert b"<svg" in (tmp_path / "graph.svg").read_bytes()[:500]
    assert _no_temp_files(tmp_path)


def test_input_and_output_labels_follow_the_permutation():
    torch.manual_seed(0)
    model = bimt.BioMLP([4, 6, 3], input_labels=list("abcd"), output_labels=["p", "q", "r"])
    bimt.apply_permutation(model, model.spec, "layer0", [2, 0, 3, 1])
    bimt.apply_permutation(model, model.spec, "layer2", [1, 2, 0])
    order_in, order_out = model.input_order.tolist(), model.output_order.tolist()
    assert order_in == [2, 0, 3, 1] and order_out == [1, 2, 0]
    fig = viz.plot_graph(model)
    c_in = model.spec.groups["layer0"].coords
    c_out = model.spec.groups["layer2"].coords
    shown_in = {_slot_of(t.get_position()[0], c_in): t.get_text() for t in _texts(fig, "input-label")}
    shown_out = {_slot_of(t.get_position()[0], c_out): t.get_text() for t in _texts(fig, "output-label")}
    assert shown_in == {s: "abcd"[order_in[s]] for s in range(4)}
    assert shown_out == {s: "pqr"[order_out[s]] for s in range(3)}
    # labels given to the call override the model's; defaults are x1.. / y1..
    fig = viz.plot_graph(model, input_labels=["u", "v", "w", "z"])
    shown = {_slot_of(t.get_position()[0], c_in): t.get_text() for t in _texts(fig, "input-label")}
    assert shown == {s: "uvwz"[order_in[s]] for s in range(4)}
    plain = bimt.BioMLP([3, 4, 2])
    fig = viz.plot_graph(plain)
    assert sorted(t.get_text() for t in _texts(fig, "input-label")) == ["x1", "x2", "x3"]
    assert sorted(t.get_text() for t in _texts(fig, "output-label")) == ["y1", "y2"]
    with pytest.raises(ValueError, match="labels"):
        viz.plot_graph(plain, input_labels=["only", "two"])


def test_line_widths_and_colours_of_a_hand_set_model():
    model = bimt.BioMLP([2, 2, 1], bias=False)
    W0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    W1 = torch.tensor([[3.0, -1.5]])
    with torch.no_grad():
        model.linears[0].weight.copy_(W0)
        model.linears[1].weight.copy_(W1)
    fig = viz.plot_graph(model, max_linewidth=4.0)
    colls = _collections(fig)
    coords = [model.spec.groups[f"layer{i}"].coords for i in range(3)]
    for i, W in enumerate([W0, W1]):
        coll = colls[f"weights-{i}"]
        segs, widths, colors = coll.get_segments(), coll.get_linewidths(), coll.get_edgecolor()
        assert len(segs) == int((W != 0).sum())  # zero weights have zero width: not drawn
        seen = set()
        for seg, lw, col in zip(segs, widths, colors):
            k, o = _slot_of(seg[0][0], coords[i]), _slot_of(seg[1][0], coords[i + 1])
            assert seg[0][1] == pytest.approx(i) and seg[1][1] == pytest.approx(i + 1)
            w = float(W[o, k])
            assert lw == pytest.approx(4.0 * abs(w) / float(W.abs().max()))
            want = viz.POSITIVE_COLOR if w > 0 else viz.NEGATIVE_COLOR
            assert tuple(col) == pytest.approx(to_rgba(want))
            seen.add((o, k))
        assert len(seen) == len(segs)


def test_folded_token_model_draws_one_row_per_token():
    torch.manual_seed(0)
    model = bimt.BioMLP([8, 5, 3], vocab_size=7, n_tokens=2)
    fig = viz.plot_graph(model)
    ax = fig.axes[0]
    dots = next(c for c in ax.collections if c.get_gid() == "neurons-layer0")
    ys = np.round(dots.get_offsets()[:, 1], 6)
    assert len(set(ys.tolist())) == 2 and sorted(np.unique(ys, return_counts=True)[1]) == [4, 4]
    colls = _collections(fig)
    assert set(colls) == {"weights-0", "weights-1"}  # the embedding is not drawn
    seg_y = {round(float(s[0][1]), 6) for s in colls["weights-0"].get_segments()}
    assert seg_y == set(ys.tolist())
    assert len(colls["weights-0"].get_segments()) == 5 * 8
    assert [t.get_text() for t in _texts(fig, "token-label")] == ["token 1", "token 2"]
    assert _texts(fig, "input-label") == []
    fig = viz.plot_graph(model, input_labels=["a", "b"])
    assert [t.get_text() for t in _texts(fig, "token-label")] == ["a", "b"]


def test_deep_models_and_attached_sequentials():
    fig = viz.plot_graph(bimt.BioMLP([3, 5, 5, 5, 5, 2]))
    assert len(_collections(fig)) == 5
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    wiring = bimt.attach(seq)
    fig = viz.plot_graph(wiring)
    assert len(_collections(fig)) == 2
    with pytest.raises(TypeError, match="BioMLP"):
        viz.plot_graph(nn.Linear(2, 2))


def test_plot_into_given_axes():
    fig = Figure(figsize=(8, 3))
    ax1, ax2 = fig.subplots(1, 2)
    out = viz.plot_graph(bimt.BioMLP([2, 3, 1]), ax=ax2)
    assert out is fig
    assert len(ax2.collections) > 0 and len(ax1.collections) == 0


def test_big_model_skips_negligible_weights_but_not_small_models():
    model = bimt.BioMLP([4, 6, 2])
    with torch.no_grad():
        model.linears[0].weight.fill_(1.0)
        model.linears[0].weight[0, 0] = 1e-5
    fig = viz.plot_graph(model)
    assert len(_collections(fig)["weights-0"].get_segments()) == 24
    fig = viz.plot_graph(model, min_fraction=1e-3)
    assert len(_collections(fig)["weights-0"].get_segments()) == 23


def test_plot_graph_3d_mnist_shape(tmp_path):
    torch.manual_seed(0)
    model = bimt.BioMLP([784, 100, 100, 10], layout=["grid", "grid", "grid", "ring"],
                        freeze_inputs=True, output_labels=[str(d) for d in range(10)])
    bimt.apply_permutation(model, model.spec, "layer3", np.roll(np.arange(10), 3))
    fig = viz.plot_graph_3d(model, top_n=50, title="MNIST")
    ax = fig.axes[0]
    assert ax.name == "3d"
    colls = {c.get_gid(): c for c in ax.collections if (c.get_gid() or "").startswith("weights-")}
    assert set(colls) == {"weights-0", "weights-1", "weights-2"}
    for c in colls.values():  # one width per drawn segment (3D segments appear only on draw)
        assert 0 < len(c.get_linewidths()) <= 50
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "output-label"]
    assert labels == [str(d) for d in model.output_order.tolist()]
    viz.save_figure(fig, tmp_path / "mnist.png")
    assert (tmp_path / "mnist.png").read_bytes()[:8] == PNG_MAGIC


def test_decision_boundary_regions_follow_argmax(tmp_path):
    model = bimt.BioMLP([2, 2], activation="identity")
    with torch.no_grad():
        model.linears[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.linears[0].bias.zero_()
    X = np.array([[-1.0, -1.0], [1.0, 1.0], [-0.5, 0.5], [0.5, -0.5]])
    y = np.array([1, 0, 1, 0])
    fig = viz.plot_decision_boundary(model, X, y, resolution=40, padding=0.0)
    ax = fig.axes[0]
    regions = next(im for im in ax.images if im.get_gid() == "regions").get_array()
    assert regions.shape == (40, 40)
    assert (regions[:, :20] == 1).all() and (regions[:, 20:] == 0).all()  # class 0 where x1 > 0
    assert {c.get_gid() for c in ax.collections} == {"points-0", "points-1"}
    viz.save_figure(fig, tmp_path / "db", formats=("png",))
    assert (tmp_path / "db.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        viz.plot_decision_boundary(model, np.zeros((3, 3)), None)


def test_save_figure_is_atomic_and_handles_suffixes(tmp_path):
    fig = viz.plot_graph(bimt.BioMLP([2, 3, 1]))
    assert viz.save_figure(fig, tmp_path / "a.svg", close=False) == [tmp_path / "a.svg"]
    assert viz.save_figure(fig, tmp_path / "b.png", formats=("png", "svg"), close=False) == [
        tmp_path / "b.png", tmp_path / "b.svg"]
    assert viz.save_figure(fig, tmp_path / "sub" / "c", formats="png") == [tmp_path / "sub" / "c.png"]
    assert _no_temp_files(tmp_path) and _no_temp_files(tmp_path / "sub")

    (tmp_path / "keep.png").write_bytes(b"old")

    class Boom(Figure):
        def savefig(self, fname, **kw):
            with open(fname, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        viz.save_figure(Boom(), tmp_path / "keep.png")
    assert (tmp_path / "keep.png").read_bytes() == b"old"  # the old file is untouched
    assert _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="format"):
        viz.save_figure(fig, tmp_path / "x", formats=("bmpx",))


def test_recorder_keeps_bounded_evenly_spaced_cpu_copies():
    model = bimt.BioMLP([2, 3, 1])
    rec = viz.GraphRecorder(model, every=1, max_snapshots=5)
    for step in range(21):
        rec(step)
        assert len(rec) <= 5
        steps = rec.steps
        if step and step % rec.every == 0:  # the newest is on the stride: all evenly spaced
            assert steps[0] == 0 and set(np.diff(steps).tolist()) == {rec.every}
            assert steps[-1] == step
    snap = rec.snapshots[-1]
    before = snap.state["linears.0.weight"].clone()
    with torch.no_grad():
        model.linears[0].weight.add_(1.0)
    assert torch.equal(snap.state["linears.0.weight"], before)
    assert all(t.device.type == "cpu" for t in snap.state.values())
    rec.record(99)
    assert rec.steps[-1] == 99 and len(rec) <= 5
    with pytest.raises(ValueError):
        viz.GraphRecorder(model, max_snapshots=1)


def test_write_animation_writes_a_gif(tmp_path):
    torch.manual_seed(0)
    model = bimt.BioMLP([2, 4, 2], input_labels=["a", "b"])
    snaps = []
    for step in range(4):
        snaps.append(viz.snapshot(model, step * 10))
        with torch.no_grad():
            model.linears[0].weight.mul_(0.5)
        bimt.apply_permutation(model, model.spec, "layer0", [1, 0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    X = np.random.default_rng(0).normal(size=(20, 2))
    y = (X[:, 0] > 0).astype(int)
    path = viz.write_animation(model, snaps, tmp_path / "run.gif", fps=5,
                               decision_boundary_data=(X, y), max_frames=3, dpi=40,
                               boundary_kwargs={"resolution": 30})
    assert path == tmp_path / "run.gif"
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 3
    assert _no_temp_files(tmp_path)
    for k, v in model.state_dict().items():  # the model is left as it was
        assert torch.equal(v, state[k])
    rec = viz.GraphRecorder(model, every=1)
    rec.record(0)
    rec.record(1)
    out = rec.write(tmp_path / "two.gif", dpi=30)
    with Image.open(out) as im:
        assert im.n_frames == 2
    with pytest.raises(ValueError, match="no snapshots"):
        viz.write_animation(model, [], tmp_path / "none.gif")


def test_style_helpers():
    w = np.array([2.0, -1.0, 0.0, -4.0])
    assert viz.weight_linewidths(w, 2.0).tolist() == [1.0, 0.5, 0.0, 2.0]
    assert viz.weight_linewidths(w, 2.0, scale=8.0).tolist() == [0.5, 0.25, 0.0, 1.0]
    cols = viz.weight_colors(w)
    assert tuple(cols[0]) == to_rgba(viz.POSITIVE_COLOR) and tuple(cols[1]) == to_rgba(viz.NEGATIVE_COLOR)
    assert viz.keep_mask(w, top_n=2).tolist() == [True, False, False, True]
    assert viz.keep_mask(w, min_fraction=0.3).tolist() == [True, False, False, True]
    assert viz.normalized_weights(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_gif_frames_share_a_small_palette(tmp_path):
    torch.manual_seed(0)
    model = bimt.BioMLP([2, 6, 2])
    snaps = []
    for step in range(3):
        snaps.append(viz.snapshot(model, step))
        with torch.no_grad():
            model.linears[0].weight.mul_(-0.7)
    small = viz.write_animation(model, snaps, tmp_path / "small.gif", dpi=40, colors=16)
    with Image.open(small) as im:
        for k in range(im.n_frames):
            im.seek(k)
            assert len(im.convert("RGB").getcolors(4096)) <= 16
    big = viz.write_animation(model, snaps, tmp_path / "big.gif", dpi=40, colors=256)
    assert small.stat().st_size < big.stat().st_size
    with pytest.raises(ValueError, match="colors must be an integer from 2 to 256"):
        viz.write_animation(model, snaps, tmp_path / "x.gif", colors=1)


def test_mnist_output_labels_are_drawn_above_the_edges():
    model = bimt.BioMLP([784, 100, 100, 10], layout=["grid", "grid", "grid", "ring"],
                        freeze_inputs=True, output_labels=[str(d) for d in range(10)])
    fig = viz.plot_graph_3d(model, top_n=50)
    fig.canvas.draw()  # mplot3d gives the collections their depth-sorted zorder on draw
    ax = fig.axes[0]
    top_edge = max(c.get_zorder() for c in ax.collections)
    labels = [t for t in ax.texts if t.get_gid() == "output-label"]
    assert len(labels) == 10 and min(t.get_zorder() for t in labels) > top_edge


def test_pruning_frontier_x_axis_is_log_scaled():
    from bimt.viz import plot_pruning_frontier

    fig = plot_pruning_frontier([(0, 1.0), (10, 0.1), (500, 0.01)])
    assert fig.axes[0].get_xscale() == "symlog" and fig.axes[0].get_yscale() == "log"
    fig = plot_pruning_frontier([(0, 1.0), (10, 0.1)], logx=False)
    assert fig.axes[0].get_xscale() == "linear"


def test_pruning_frontier_has_no_negative_tick():
    from bimt.viz import plot_pruning_frontier

    fig = plot_pruning_frontier([(0, 1.0), (10, 0.1), (500, 0.01)])
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo == 0 and all(t >= 0 for t in ax.get_xticks() if lo <= t <= hi)

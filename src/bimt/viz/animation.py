"""Watching a network get modular: snapshots during training, then an animated GIF.

::

    rec = GraphRecorder(model, every=200, max_snapshots=60)
    for step in range(steps):
        ...                      # one training step (swaps included)
        rec(step)                # keeps a CPU copy of the weights every `every` steps
    rec.record(steps)            # the final state, whatever the stride
    write_animation(model, rec, "run.gif", decision_boundary_data=(X, y))

A snapshot is a CPU copy of ``state_dict()`` (weights, biases and the interface-order buffers,
so the labels follow the swaps) and the step number: cheap for the paper's models (the MNIST
model is 0.36 MB). Memory stays bounded: when the recorder holds more than ``max_snapshots``
it drops every other snapshot and doubles its stride, so what it keeps stays evenly spaced.
"""

from __future__ import annotations

import copy
from pathlib import Path
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._io import atomic_write, close_figure
from ..core.checks import one_of, positive_int
from ..models.wiring import wiring_of
from ..models.drawing import drawing_of
from .graph import graph_figsize, plot_decision_boundary, plot_graph, plot_graph_3d

__all__ = ["Snapshot", "snapshot", "GraphRecorder", "write_animation", "render_frames"]


@dataclass
class Snapshot:
    """The model's state at one training step (tensors on the CPU), with optional extras."""

    step: int
    state: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)


def snapshot(model, step: int, **info) -> Snapshot:
    """A detached CPU copy of ``model.state_dict()`` at ``step``; ``info`` (loss, ...) is kept."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return Snapshot(int(step), state, dict(info))


class GraphRecorder:
    """Keeps evenly spaced snapshots of a model during training, at most ``max_snapshots``.

    Call it every step (``rec(step)``): it records when ``step`` is a multiple of its current
    stride ``every``. ``rec.record(step)`` records unconditionally (the final state). When
    more than ``max_snapshots`` are held, every other one is dropped and the stride doubles.
    ``rec.write(path, ...)`` is :func:`write_animation` on what it holds.
    """

    def __init__(self, model, every: int = 200, max_snapshots: int = 100):
        positive_int(every, "every")
        if isinstance(max_snapshots, bool) or int(max_snapshots) != max_snapshots or max_snapshots < 2:
            raise ValueError(f"max_snapshots must be an integer >= 2, got {max_snapshots!r}")
        self.model = model
        self.every = int(every)
        self.max_snapshots = int(max_snapshots)
        self.snapshots: list[Snapshot] = []
        self._stray = False

    def __call__(self, step: int, **info) -> bool:
        """Record if ``step`` is on the stride; returns whether it did."""
        if (step - self._origin(step)) % self.every:
            return False
        if self._stray and self.snapshots and self.snapshots[-1].step < step:
            self.snapshots.pop()  # kept by thinning only as the newest; superseded now
        self._stray = False
        self.record(step, **info)
        return True

    def record(self, step: int, **info) -> Snapshot:
        """Record now, on the stride or not (the final state); a snapshot already taken at the
        same step is replaced."""
        snap = snapshot(self.model, step, **info)
        if self.snapshots and self.snapshots[-1].step == snap.step:
            self.snapshots[-1] = snap
        else:
            self.snapshots.append(snap)
        self._stray = False
        while len(self.snapshots) > self.max_snapshots:
            self._thin()
        return snap

    def _origin(self, step: int) -> int:
        return self.snapshots[0].step if self.snapshots else step

    def _thin(self) -> None:
        """Double the stride and keep the snapshots on it, the newest always."""
        self.every *= 2
        origin, newest = self.snapshots[0].step, self.snapshots[-1]
        kept = [s for s in self.snapshots[:-1] if (s.step - origin) % self.every == 0]
        if len(kept) + 1 >= len(self.snapshots):  # steps off any stride: halve by position
            kept = self.snapshots[:-1][::2]
        self._stray = (newest.step - origin) % self.every != 0
        self.snapshots = kept + [newest]

    def clear(self) -> None:
        self.snapshots.clear()
        self._stray = False

    def __len__(self) -> int:
        return len(self.snapshots)

    def __iter__(self):
        return iter(self.snapshots)

    @property
    def steps(self) -> list[int]:
        return [s.step for s in self.snapshots]

    def write(self, path, **kwargs):
        """Write the recorded snapshots as an animated GIF (see :func:`write_animation`)."""
        return write_animation(self.model, self.snapshots, path, **kwargs)


def _as_snapshots(snapshots) -> list[Snapshot]:
    if isinstance(snapshots, GraphRecorder):
        snapshots = snapshots.snapshots
    out = []
    for s in snapshots:
        if isinstance(s, Snapshot):
            out.append(s)
        elif isinstance(s, (tuple, list)) and len(s) == 2:
            out.append(Snapshot(int(s[0]), dict(s[1])))
        else:
            raise TypeError(
                "snapshots must be Snapshot objects, (step, state_dict) pairs or a GraphRecorder"
            )
    if not out:
        raise ValueError("no snapshots to animate; record some with GraphRecorder first")
    return out


def _even_subset(items: list, k: int | None) -> list:
    """At most ``k`` items, evenly spaced, always the first and the last."""
    if k is None or len(items) <= k:
        return list(items)
    if k < 2:
        raise ValueError(f"max_frames must be >= 2, got {k}")
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
    return [items[i] for i in idx]


def _frame_kind(model, kind: str) -> str:
    one_of(kind, ("auto", "2d", "3d"), "kind")
    if kind != "auto":
        return kind
    return "3d" if drawing_of(wiring_of(model)).three_d else "2d"


def render_frames(
    model,
    snapshots,
    *,
    decision_boundary_data=None,
    kind: str = "auto",
    max_frames: int | None = 100,
    dpi: float = 80,
    figsize=None,
    title: str = "step {step}",
    plot_kwargs: dict | None = None,
    boundary_kwargs: dict | None = None,
) -> Iterable:
    """Yield one RGB ``PIL.Image`` per snapshot (graph, and the decision boundary beside it).

    The model itself is left untouched: frames are drawn from a CPU copy loaded with each
    snapshot's state.
    """
    from PIL import Image

    snaps = _even_subset(_as_snapshots(snapshots), max_frames)
    work = copy.deepcopy(wiring_of(model).module).to("cpu")
    kind = _frame_kind(work, kind)
    plot_kwargs = {"legend": False, **(plot_kwargs or {})}
    boundary_kwargs = dict(boundary_kwargs or {})
    if decision_boundary_data is not None:
        X, y = decision_boundary_data
    if figsize is None:
        figsize = (6.0, 7.0) if kind == "3d" else graph_figsize(drawing_of(wiring_of(work)))
        if decision_boundary_data is not None:
            figsize = (figsize[0] + figsize[1] * 1.1, figsize[1])
    fig = Figure(figsize=figsize, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    try:
        for snap in snaps:
            work.load_state_dict(snap.state)
            fig.clear()
            label = title.format(step=snap.step, **snap.info)
            projection = "3d" if kind == "3d" else None
            if decision_boundary_data is not None:
                gs = fig.add_gridspec(1, 2, width_ratios=[figsize[0] - figsize[1] * 1.1, figsize[1] * 1.1])
                ax_graph = fig.add_subplot(gs[0], projection=projection)
                ax_db = fig.add_subplot(gs[1])
            else:
                ax_graph = fig.add_subplot(1, 1, 1, projection=projection)
            if kind == "3d":
                plot_graph_3d(work, ax=ax_graph, title=label, **plot_kwargs)
            else:
                plot_graph(work, ax=ax_graph, title=label, **plot_kwargs)
            if decision_boundary_data is not None:
                plot_decision_boundary(work, X, y, ax=ax_db, **boundary_kwargs)
                ax_db.set_aspect("auto")
            if decision_boundary_data is not None:
                fig.subplots_adjust(left=0.02, right=0.98, bottom=0.13, top=0.9, wspace=0.22)
            else:
                fig.subplots_adjust(left=0.03, right=0.97, bottom=0.04, top=0.92)
            canvas.draw()
            rgba = np.asarray(canvas.buffer_rgba())
            yield Image.fromarray(rgba[..., :3].copy())
    finally:
        close_figure(fig)


def write_animation(
    model,
    snapshots,
    path,
    fps: float = 4,
    decision_boundary_data=None,
    *,
    kind: str = "auto",
    max_frames: int | None = 100,
    hold_last: float = 1.5,
    loop: int = 0,
    dpi: float = 80,
    figsize=None,
    title: str = "step {step}",
    plot_kwargs: dict | None = None,
    boundary_kwargs: dict | None = None,
    colors: int = 32,
    progress: bool = False,
):
    """Write an animated GIF of the connectivity graph over the snapshots; returns its path.

    Parameters
    ----------
    model : the model the snapshots came from (its structure is reused; it is not modified).
    snapshots : a :class:`GraphRecorder`, or :class:`Snapshot` s / ``(step, state_dict)`` pairs.
    path : the GIF to write (atomically: temporary file in the same folder, then replace).
    fps : frames per second; the last frame stays ``hold_last`` seconds longer.
    decision_boundary_data : ``(X, y)`` of a 2-input classifier to draw its decision
        boundary beside the graph in every frame (the paper's Fig. 4).
    kind : "2d", "3d" or "auto" (3D when a layer is a grid or ring).
    max_frames : at most this many frames, evenly spaced, first and last always included.
    title : frame title, formatted with ``step`` and the snapshot's ``info``.
    plot_kwargs, boundary_kwargs : passed to the graph / decision-boundary functions.
    colors : size of the palette shared by all frames (2 to 256; fewer colours, smaller file).
    progress : show a progress bar over the frames (drawing them is the slow part).
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if isinstance(colors, bool) or not isinstance(colors, int) or not 2 <= colors <= 256:
        raise ValueError(f"colors must be an integer from 2 to 256, got {colors!r}")
    from PIL import Image

    frames_iter = render_frames(
        model, snapshots, decision_boundary_data=decision_boundary_data, kind=kind,
        max_frames=max_frames, dpi=dpi, figsize=figsize, title=title,
        plot_kwargs=plot_kwargs, boundary_kwargs=boundary_kwargs,
    )
    if progress:
        from ..core.progress import progress_bar

        n = len(_even_subset(_as_snapshots(snapshots), max_frames))
        frames_iter = progress_bar(frames_iter, total=n, desc=f"drawing {Path(path).name}", unit="frame",
                           mininterval=0.5, dynamic_ncols=True)
    rgb = list(frames_iter)
    # one small palette shared by every frame (taken from the last, the most drawn-on), no
    # dithering: unchanged pixels keep their index, so the GIF writer stores only what changed
    palette = rgb[-1].quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    frames = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in rgb]
    frame_ms = max(int(round(1000.0 / fps)), 20)
    durations = [frame_ms] * len(frames)
    durations[-1] += int(round(1000 * max(hold_last, 0.0)))

    def write(tmp):
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], optimize=True,
                       duration=durations if len(frames) > 1 else durations[0], loop=loop)

    return atomic_write(path, write)

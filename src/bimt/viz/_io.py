"""Figures and files: the one Figure class of bimt's pictures, and atomic writing (a temporary
file in the target's directory, then ``os.replace``)."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure as _MplFigure

from ..core.fileio import atomic_write


class Figure(_MplFigure):
    """A matplotlib Figure built without pyplot (no global state, nothing to close) that
    Jupyter shows inline as a cell's value, once, with or without ``%matplotlib inline``."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


#: Formats ``save_figure`` recognises in a path's suffix.
FIGURE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")


def save_figure(fig, path, formats=None, *, dpi: float = 150, close: bool = True, **savefig_kw):
    """Write ``fig`` atomically, once per format; returns the written paths.

    ``path`` may carry a suffix (``"out/graph.png"``) or not (``"out/graph"``). With
    ``formats=None``: a path with a known suffix is written in that format only, a path without
    one as ``.png`` and ``.svg``. With explicit ``formats`` (e.g. ``("png", "svg")``) the suffix
    is replaced by each. Each file goes to a temporary file in the same directory first and is
    then moved into place with ``os.replace``. The figure is closed afterwards (``close=False``
    keeps it).
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if formats is None:
        formats = (suffix,) if suffix in FIGURE_FORMATS else ("png", "svg")
    if isinstance(formats, str):
        formats = (formats,)
    stem = path.with_suffix("") if suffix in FIGURE_FORMATS else path
    written = []
    savefig_kw.setdefault("bbox_inches", "tight")
    try:
        for fmt in formats:
            fmt = str(fmt).lower().lstrip(".")
            if fmt not in FIGURE_FORMATS:
                raise ValueError(f"unknown figure format {fmt!r}; allowed: {', '.join(FIGURE_FORMATS)}")
            target = stem.with_name(f"{stem.name}.{fmt}")
            atomic_write(target, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, **savefig_kw))
            written.append(target)
    finally:
        if close:
            close_figure(fig)
    return written


def close_figure(fig) -> None:
    """Release a figure: drop it from pyplot's registry if pyplot holds it, and clear it."""
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)
    fig.clear()

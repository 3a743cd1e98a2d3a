"""One self-contained, interactive HTML page for a trained network (``bimt view RUN``).

The page shows the connectivity graph (2D for lines, a rotatable 3D projection for grids, the
transformer's rows), a tooltip on every neuron and edge, the modules, a slider over the
training snapshots (those ``--animate`` stores in the checkpoint, the same ones the GIF uses),
the precomputed effect of knocking out each module, the metrics and the training curves.

Why a hand-written canvas renderer and not plotly or d3: the page must open without network
access, so any library would be inlined. plotly's bundle alone is ~3.5 MB, more than the whole
page for the paper's models; a ~300-line vanilla script draws what we need (lines of two
colours and widths, dots, labels, a small projection) and hit-tests the mouse itself. Canvas
and not SVG because the MNIST and transformer graphs hold thousands of edges that are redrawn
on every slider move. Data are compact: per snapshot and weight matrix, the entries that
are visible (``|round(127 w / max|W|)| >= MIN_Q``, at most ``MAX_EDGES`` of the
strongest), as base64 of little-endian index and int8 arrays; node importances as uint8 of
the layer's maximum. Weights in tooltips are therefore within 1/254 of their layer's max|w|.

Run directories and report pages are shared, so every string a run carries (task name, labels,
group names, metric names and values, history columns) is untrusted and reaches the page as
text only: the script builds DOM nodes and sets ``textContent``, never ``innerHTML``. The data
travel as JSON in a ``<script type="application/json">`` element that the browser never runs,
with ``<``, ``>`` and ``&`` written as ``\\u003c`` and the like, so no string can close that
element or open a comment that swallows the rest of the page. As a second line, a
Content-Security-Policy meta tag lets only the page's own script and style run (their sha256,
computed when the page is rendered, so an edited template still matches) and forbids every
fetch: if markup ever slipped in, it could neither run nor call out. The policy travels with
the page into Jupyter's ``srcdoc`` iframe.

Everything the page needs from a model comes from its view's drawing
(:func:`bimt.models.drawing.drawing_of`, as the PNG graph does): rows, weights, residual
streams. Reading a run directory (its checkpoint, history and test-set evaluator) is
:mod:`bimt.training.view`'s job, above both ``training.runs`` and ``viz``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .graph import FOLD_GAP, neuron_positions

__all__ = ["Report", "report", "build_data", "render_html", "MAX_EDGES"]

#: Most edges drawn per weight matrix and snapshot (the strongest are kept).
MAX_EDGES = 1000
#: Entries below this many 127ths of their matrix's max|w| are not stored: drawn at most
#: 2.2 px wide for the max, they would be under 0.06 px, invisible.
MIN_Q = 3
#: At most this many modules get a knock-out row (the largest).
MAX_MODULES = 12


# -------------------------------------------------------------------------------------------
# Reading the network (the only model-type-specific part)
# -------------------------------------------------------------------------------------------
def _read_network(model) -> dict:
    """Rows of neurons, weight matrices between them, labels and importances, as plain arrays,
    from the model's view (:func:`bimt.models.drawing.drawing_of`).

    Returns ``{"kind": "2d"|"3d", "rows": [...], "blocks": [...], "streams": [...],
    "importance": {group: array}}``. A row is ``{"name", "group", "fold", "level", "xy" (n, 2),
    "offsets" (fold,), "labels" (per slot or None), "heads"}``; neuron ``f * n + s`` of a
    block's axis is drawn at slot ``s``, fold row ``f`` (from the block's first fold). A block
    is ``{"name", "out", "inp", "W", "out_fold", "in_fold"}``; a stream joins a row to its next
    state.
    """
    from ..analysis import neuron_scores
    from ..models import wiring_of
    from ..models.drawing import drawing_of

    drawing = drawing_of(wiring_of(model))
    kind = "3d" if drawing.three_d else "2d"
    pos = neuron_positions(drawing, FOLD_GAP)
    rows = []
    for r, p in zip(drawing.rows, pos):
        xy = r.xy if kind == "3d" else np.stack([p[:r.size, 0], np.full(r.size, 0.5)], 1)
        labels = r.labels if r.role in ("input", "output") and r.fold == 1 else None
        rows.append(dict(name=r.name, group=r.group, fold=r.fold, level=r.level, xy=xy,
                         offsets=[-FOLD_GAP * k for k in range(r.fold)], labels=labels,
                         heads=r.heads, role=r.role,
                         dz=np.round(p[:r.size, 1] - r.level, 5).tolist() if r.spatial else None))
    blocks = [dict(name=e.name, out=e.out, inp=e.inp, W=e.W, out_fold=e.out_fold, in_fold=e.in_fold)
              for e in drawing.edges]
    importance = {g: np.asarray(v, dtype=float) for g, v in neuron_scores(model).items()}
    return dict(kind=kind, rows=rows, blocks=blocks, streams=[list(s) for s in drawing.streams],
                importance=importance)


def _modules_and_knockouts(model, evaluate, accuracy):
    """Modules (as analyze --knockout finds them) and their knock-out effect on the test metric."""
    from ..analysis import find_modules, knockout_table, module_slots, tree_roots
    from ..analysis.graph import _letters

    found = find_modules(model)
    modules = {_letters(i): m for i, m in enumerate(found)}
    if len(modules) < 2:  # parallel modules that meet only at the output (Fig. 5): the roots
        roots = tree_roots(model)
        if len(roots) >= 2:
            modules = {r["name"]: r["neurons"] for r in roots}
    if len(modules) > MAX_MODULES:
        keep = sorted(modules, key=lambda k: -len(modules[k]))[:MAX_MODULES]
        modules = {k: modules[k] for k in sorted(keep)}
    out = [{"name": k, "slots": module_slots(v)} for k, v in modules.items()]
    knock = None
    if evaluate is not None:
        metric, name = (accuracy, "test accuracy") if accuracy is not None else (evaluate, "test loss")
        rows = knockout_table(model, {m["name"]: m["slots"] for m in out}, metric)
        knock = {"metric": name, "baseline": rows[0]["metric"],
                 "values": {r["module"]: r["metric"] for r in rows[1:]}}
    return out, knock


# -------------------------------------------------------------------------------------------
# Packing
# -------------------------------------------------------------------------------------------
def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _pack_block(W: np.ndarray):
    """Entries surviving int8 quantisation (strongest ``MAX_EDGES``): (index, q, scale)."""
    flat = W.reshape(-1)
    scale = float(np.abs(flat).max()) if flat.size else 0.0
    if not math.isfinite(scale) or scale == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int8), 0.0
    q = np.round(127 * flat / scale).astype(np.int64)
    idx = np.flatnonzero(np.abs(q) >= MIN_Q)
    if len(idx) > MAX_EDGES:
        idx = idx[np.argsort(-np.abs(q[idx]), kind="stable")[:MAX_EDGES]]
        idx.sort()
    return idx, q[idx].astype(np.int8), scale


def _frame(net: dict, step: int, blobs: list, offset: int) -> tuple[dict, int]:
    blocks = []
    for b in net["blocks"]:
        idx, q, scale = _pack_block(b["W"])
        wide = b["W"].size > 65536
        idx_bytes = idx.astype("<u4" if wide else "<u2").tobytes()
        blobs += [idx_bytes, q.tobytes()]
        blocks.append([len(idx), scale, 4 if wide else 2])
        offset += len(idx_bytes) + len(q)
    imp = []
    for g, v in net["importance"].items():
        top = float(v.max()) if v.size else 0.0
        u8 = np.zeros(len(v), np.uint8) if top <= 0 else np.round(255 * v / top).astype(np.uint8)
        imp.append([g, top, _b64(u8)])
    labels = {str(i): r["labels"] for i, r in enumerate(net["rows"])
              if r["labels"] is not None and len(r["labels"]) <= 300}
    return {"step": int(step), "blocks": blocks, "importance": imp, "labels": labels}, offset


def _history_columns(history) -> dict:
    cols: dict[str, list] = {}
    keys = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    for k in keys:
        vals = []
        for row in history:
            v = row.get(k)
            try:
                v = float(v)
            except (TypeError, ValueError):
                v = None
            vals.append(v if v is not None and math.isfinite(v) else None)
        if any(v is not None for v in vals):
            cols[k] = vals
    return cols


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return _json_safe(float(obj))
    return obj


def build_data(model, snapshots=(), history=(), metrics=None, title="bimt report",
               evaluate=None, accuracy=None, circuit=None) -> dict:
    """Everything the page shows, as one JSON-serialisable dict (binary parts base64)."""
    final = _read_network(model)
    rows = []
    for r in final["rows"]:
        rows.append({"name": r["name"], "group": r["group"], "fold": r["fold"],
                     "level": r["level"], "offsets": r["offsets"], "role": r["role"],
                     "heads": r["heads"], "dz": r["dz"], "xy": np.round(r["xy"], 5).tolist()})
    blocks = [{"name": b["name"], "out": b["out"], "in": b["inp"], "shape": list(b["W"].shape),
               "out_fold": b["out_fold"], "in_fold": b["in_fold"]} for b in final["blocks"]]
    blobs: list[bytes] = []
    frames, offset = [], 0
    snaps = list(snapshots or [])
    if snaps:
        work = copy.deepcopy(model).to("cpu")
        for s in snaps:
            step, state = s if isinstance(s, (tuple, list)) else (s.step, s.state)
            work.load_state_dict(state)
            f, offset = _frame(_read_network(work), step, blobs, offset)
            frames.append(f)
    last_step = int(history[-1]["step"]) if history else (frames[-1]["step"] if frames else 0)
    if not frames or frames[-1]["step"] != last_step:
        f, offset = _frame(final, last_step, blobs, offset)
        frames.append(f)
    modules, knock = _modules_and_knockouts(model, evaluate, accuracy)
    return _json_safe({
        "title": title, "kind": final["kind"], "rows": rows, "blocks": blocks,
        "streams": final["streams"],
        "frames": frames, "blob": base64.b64encode(b"".join(blobs)).decode("ascii"),
        "modules": modules, "knockout": knock, "history": _history_columns(history),
        "metrics": metrics or {}, "snapshots_stored": bool(snaps),
        "circuit": (circuit or {}).get("slots"), "heads": (circuit or {}).get("scores"),
    })


# -------------------------------------------------------------------------------------------
# The page
# -------------------------------------------------------------------------------------------
def _template() -> str:
    from importlib.resources import files

    return files(__package__).joinpath("report_template.html").read_text(encoding="utf-8")


#: Characters that could end, or comment out, the data's <script> element (and the line
#: separators some JSON readers take for line ends), written as JSON escapes instead.
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                 "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def _content_security_policy(page: str) -> str:
    """The page's policy: its own inline script and style (by hash), nothing else, no network.

    ``img-src data:`` lets the inline ``data:,`` favicon load (that link keeps a browser from
    asking a server for ``/favicon.ico``; blocked, it is a console error); ``connect-src``
    repeats ``default-src`` to say it."""
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    return (f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
            "img-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'")


def render_html(data: dict) -> str:
    """The page: the template with the policy, the title (HTML-escaped) and the data (JSON in a
    non-executable ``<script type="application/json">``, with ``<``, ``>``, ``&``, U+2028 and
    U+2029 escaped), filled in one pass so no value is read as another's placeholder."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
    payload = re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group()], payload)
    page = _template()
    values = {"CSP": html.escape(_content_security_policy(page), quote=False),
              "TITLE": html.escape(str(data.get("title", "bimt"))), "DATA": payload}
    return re.sub(r"/\*BIMT_(CSP|TITLE|DATA)\*/", lambda m: values[m.group(1)], page)


@dataclass
class Report:
    """An interactive report: ``.html`` (the page), ``.save(path)``, shown inline in Jupyter."""

    html: str
    data: dict

    def save(self, path) -> Path:
        from ..core.fileio import atomic_write_bytes

        return atomic_write_bytes(Path(path), self.html.encode("utf-8"))

    def _repr_html_(self) -> str:
        # an iframe keeps the page's script and style apart from the notebook's
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
                'style="width:100%;height:900px;border:0" sandbox="allow-scripts"></iframe>')

    def __len__(self) -> int:
        return len(self.html)


def report(model, *, snapshots=(), history=(), metrics=None, evaluate=None, accuracy=None,
           title="bimt report", circuit=None) -> Report:
    """The interactive page of a model in memory (for a run directory: :func:`bimt.view.report`).

    ``snapshots``: ``(step, state_dict)`` pairs or :class:`Snapshot` s (the slider; without
    them the page shows the model as it is); ``history``: evaluation rows (the curves);
    ``evaluate(module) -> float`` (and ``accuracy``): the test metric for the knock-outs;
    ``circuit``: ``{"slots": {group: [slots]}, "scores": {head: {...}}}`` (what ``bimt analyze
    --circuit`` writes to ``circuit.json``): the circuit's neurons ringed, head probes in the
    tooltips.
    """
    model.eval()
    data = build_data(model, list(snapshots or []), list(history or []), metrics, title,
                      evaluate, accuracy, circuit)
    return Report(render_html(data), data)

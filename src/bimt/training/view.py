"""The interactive report of a run directory (``bimt view RUN``): reads the run, then draws with
:func:`bimt.viz.report.report`.

Here and not in :mod:`bimt.viz` because it reads run directories (:mod:`bimt.runs`), which
themselves draw with :mod:`bimt.viz`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .runs import read_metrics, read_run, run_evaluator
from ..viz.report import Report
from ..viz.report import report as _report

__all__ = ["report", "write_report"]


def _read_history_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def report(run, title: str | None = None) -> Report:
    """The interactive page of a run directory or of a ``TrainResult`` written to one.

    Snapshots come from the checkpoint (runs trained with ``animate=True``; others show the
    final state), curves from the history, and each module is knocked out on the test set.
    A ``TrainResult`` without a run directory is drawn from memory, without knock-outs.
    """
    run_dir = getattr(run, "run_dir", run)
    if run_dir is None:  # a TrainResult kept in memory only
        cfg = run.config
        return _report(run.model, snapshots=run.snapshots, history=run.history,
                       metrics=run.metrics, title=f"{cfg.task} [{cfg.method}, seed {cfg.seed}]")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    model, cfg, evaluate, accuracy = run_evaluator(run_dir)
    _, state = read_run(run_dir)
    history = state.get("history") or _read_history_csv(run_dir / "history.csv")
    metrics = read_metrics(run_dir) or {}
    circuit = _read_circuit(run_dir)
    return _report(model, snapshots=state.get("snapshots", []), history=history, metrics=metrics,
                   evaluate=evaluate, accuracy=accuracy, circuit=circuit,
                   title=title or _title(run_dir, cfg))


def _read_circuit(run_dir: Path) -> dict | None:
    """``circuit.json`` (from ``bimt analyze --circuit``), or ``None``; a file that is not one is
    one line naming it."""
    from .config import read_config_file

    path = run_dir / "circuit.json"
    if not path.exists():
        return None
    data = read_config_file(path)  # a JSON object, size- and depth-checked
    if not isinstance(data.get("slots"), dict) or not isinstance(data.get("scores", {}), dict):
        raise ValueError(f"{path} is not a circuit written by bimt analyze --circuit")
    return {"slots": data["slots"], "scores": data.get("scores", {})}


def _title(run_dir: Path, cfg) -> str:
    """``task [method, seed N]``, and the directory's name when it says something more."""
    what = f"{cfg.task} [{cfg.method}, seed {cfg.seed}]"
    return what if cfg.task in run_dir.name else f"{run_dir.name}: {what}"


def write_report(run_dir, path=None) -> Path:
    """``RUN/report.html`` (or ``path``) for a run directory; returns the path written."""
    run_dir = Path(run_dir)
    page = report(run_dir)
    return page.save(Path(path) if path is not None else run_dir / "report.html")

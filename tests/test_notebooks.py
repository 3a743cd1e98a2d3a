"""The notebooks of examples/ run top to bottom in a fresh kernel, draw their figures inline,
and are stored without outputs.

Marked ``notebooks`` (left out of the default run; ``.ci/run`` runs ``pytest -m notebooks``).
Needs ``bimt[dev]`` (nbclient, ipykernel); skipped without it unless ``BIMT_REQUIRE_EXTRAS`` is
set, where a missing tool fails.
"""

import time
from pathlib import Path

import pytest

from conftest import need_module

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))

pytestmark = pytest.mark.notebooks


def _need(module: str):
    return need_module(module, "dev")


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"01_quickstart.ipynb", "02_your_model.ipynb",
                                          "03_circuits.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nbformat = _need("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert dirty == [], f"{path.name}: cells {dirty} hold outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_draws_inline(path, tmp_path, monkeypatch):
    nbformat, nbclient = _need("nbformat"), _need("nbclient")
    _need("ipykernel")
    # the kernel inherits this: the notebooks' networks are tiny, and one thread is both faster
    # for them and steady on a machine whose other cores are busy
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure inline"
    figures_as_text = [o.data["text/plain"] for o in outputs if "data" in o
                       and o.data.get("text/plain", "").startswith("<Figure") and "image/png" not in o.data]
    assert figures_as_text == [], f"{path.name}: figures shown as text only: {figures_as_text}"
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "Warning" not in stderr, f"{path.name} warned:\n{stderr[-2000:]}"

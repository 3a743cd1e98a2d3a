"""The shape of the package: no import cycles, no model-type sniffing outside ``bimt/models``,
every figure built without pyplot."""

import ast
import subprocess
import sys
from pathlib import Path

import bimt

ROOT = Path(bimt.__file__).parent

#: Conveniences of the handle that reach *up* the layers, on first use only: ``Wiring.plot``
#: draws with :mod:`bimt.viz`, ``wiring_of(run_dir)`` loads with :mod:`bimt.training.runs`. Both layers
#: build on ``models``; these two calls are the only way back, and never at import time.
UPWARD = {("bimt.models.wiring", "bimt.viz"), ("bimt.models.wiring", "bimt.training.runs")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules) -> tuple[set, set]:
    """(eager, lazy) imported bimt modules: at import time, and inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    eager, lazy = set(), set()

    def targets(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        found = [base]
        found += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        return found

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in targets(child):
                    if t in modules and t != name:
                        (lazy if inside else eager).add(t)
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return eager, lazy


def _graph(include_lazy: bool):
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        eager, lazy = _imports(name, path, modules)
        edges = eager | (lazy if include_lazy else set())
        graph[name] = {t for t in edges if (name, t) not in UPWARD}
    return graph


def _cycle(graph):
    state, stack = {}, []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if v == "bimt" or u.startswith(v + "."):  # the root / own package: run first anyway
                continue
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if state.get(v) is None:
                found = dfs(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if state.get(u) is None:
            found = dfs(u)
            if found:
                return found
    return None


def test_no_import_cycle_at_import_time():
    assert _cycle(_graph(include_lazy=False)) is None


def test_no_import_cycle_even_through_lazy_imports():
    cycle = _cycle(_graph(include_lazy=True))
    assert cycle is None, " -> ".join(cycle)


def test_the_walker_sees_a_cycle():  # so the two tests above can fail
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_train_and_analysis_do_not_import_each_other():
    graph = _graph(include_lazy=True)
    analysis = [m for m in graph if m.startswith("bimt.analysis")]
    assert not any(t.startswith(("bimt.training.loop", "bimt.training.runs")) for m in analysis for t in graph[m])


def test_no_model_type_sniffing_outside_models():
    for path in ROOT.rglob("*.py"):
        if "models" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr":
                raise AssertionError(f"hasattr(...) in {path.relative_to(ROOT)}:{node.lineno}")


DRAW_EVERYTHING = r"""
import sys, torch, numpy as np
from torch import nn
import bimt, bimt.viz as viz, bimt.analysis as A
torch.manual_seed(0)
m = bimt.BioMLP([2, 6, 6, 2]); m.plot(); viz.plot_graph_3d(m)
viz.plot_decision_boundary(m, torch.rand(20, 2), torch.randint(2, (20,)))
g = bimt.BioMLP([16, 9, 4], layout="grid"); g.plot()
t = bimt.BioTransformer(2, 2, d_model=8, n_blocks=1); t.plot()
tok = bimt.BioMLP([8, 6, 5], vocab_size=5, n_tokens=2)
viz.plot_embedding_pairs(tok, pairs=[(0, 1)]); viz.plot_embedding_heatmap(tok, active_only=False)
viz.plot_pruning_frontier([(0, 1.0), (5, 0.5)])
X = torch.rand(50, 3, 2); X[:, 0, 0] = 0; X[:, 1, 1] = 0; X[:, 2, 0] = 0
viz.plot_residual_vs_weight(t, X, torch.rand(50))
seq = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)); bimt.attach(seq).plot()
snaps = [viz.snapshot(m, 0), viz.snapshot(m, 1)]
list(viz.render_frames(m, snaps))
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
print("ok")
"""


def test_every_figure_is_built_without_pyplot():
    out = subprocess.run([sys.executable, "-c", DRAW_EVERYTHING], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_public_names_resolve_and_the_readme_uses_real_ones():
    import re

    import bimt.analysis
    import bimt.viz

    for module in (bimt, bimt.analysis, bimt.viz, bimt.core.swap, bimt.models):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for module, prefix in ((bimt, "bimt."), (bimt.viz, "bimt.viz."), (bimt.analysis, "analysis.")):
        for name in set(re.findall(re.escape(prefix) + r"([A-Za-z_]\w*)\(", readme)):
            assert name in module.__all__ or name in ("runs",), f"README uses {prefix}{name}"


def test_a_clone_folder_named_bimt_does_not_shadow_the_package(tmp_path):
    import subprocess
    import sys

    (tmp_path / "bimt").mkdir()  # a clone of the repository named bimt, Python run from its parent
    (tmp_path / "bimt" / "README.md").write_text("a clone")
    proc = subprocess.run([sys.executable, "-c", "import bimt; print(bimt.BioMLP.__name__)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "BioMLP", proc.stderr

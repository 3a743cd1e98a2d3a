"""The shape of the package: layers that import only downward, no import cycles, no model-type
sniffing or view-name switches outside ``bimt/models``, every default stated once, every figure
built without pyplot."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bimt

ROOT = Path(bimt.__file__).parent

#: The layers, bottom to top: a module imports only from its own layer or lower ones (the root
#: package ``bimt`` is the facade above all, importing lazily). Within a layer, no circle.
LAYERS = ["bimt.core", "bimt.models", "bimt.analysis", "bimt.viz", "bimt.tasks", "bimt.training",
          "bimt.experiments", "bimt.integrations", "bimt.cli", "bimt.__main__"]


def _layer(module: str) -> int:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    raise AssertionError(f"{module} is in no layer of the structure test; add it to LAYERS")


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
        graph[name] = set(edges)
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


def test_imports_only_go_down_the_layers():
    """Every import, at import time or inside a function, goes to the same layer or a lower one."""
    upward = [(m, t) for m, targets in _graph(include_lazy=True).items() if m != "bimt"
              for t in targets if t != "bimt" and _layer(t) > _layer(m)]
    assert upward == [], upward


def test_the_layer_check_sees_an_upward_import():  # so the test above can fail
    assert _layer("bimt.core.spec") < _layer("bimt.viz.graph") < _layer("bimt.training.loop")
    with pytest.raises(AssertionError, match="no layer"):
        _layer("bimt.somewhere")


def _model_classes() -> set[str]:
    """Names of the classes defined under ``bimt/models``."""
    names = set()
    for path in (ROOT / "models").rglob("*.py"):
        names |= {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}
    return names


def _outside_models():
    for path in ROOT.rglob("*.py"):
        if "models" not in path.relative_to(ROOT).parts:
            yield path, ast.parse(path.read_text())


def test_no_isinstance_on_model_classes_outside_models():
    """Everything above ``models`` asks the wiring (its spec, its view), never the class."""
    classes = _model_classes()
    assert {"BioMLP", "BioTransformer", "StackedMLP"} <= classes
    found = []
    for path, tree in _outside_models():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                kinds = node.args[1]
                names = {getattr(e, "id", getattr(e, "attr", None))
                         for e in (kinds.elts if isinstance(kinds, ast.Tuple) else [kinds])}
                if names & classes:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_no_switch_on_view_names_outside_models():
    """A view is drawn through its registered function, never by comparing its name."""
    from bimt.models.drawing import VIEWS

    found = []
    for path, tree in _outside_models():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                attrs = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Attribute)
                         and c.attr == "view"]
                if attrs or set(consts) & set(VIEWS):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Dict) and {getattr(k, "value", None) for k in node.keys} & set(VIEWS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


#: Parameters that share a setting's name with another meaning (``bias``: a layer with biases;
#: ``seed`` and ``steps`` of a benchmark's own loop).
NOT_SETTINGS = {"bias", "seed", "steps"}


def test_every_default_is_stated_once():
    """No function restates a setting's default as a literal: defaults come from their
    declarations (``bimt.training.config``, ``bimt.core.settings``)."""
    from bimt.core.settings import COST_FIELDS
    from bimt.training.config import SETTINGS, default_of

    names = ({s.name for s in SETTINGS if default_of(s.name) is not None} | set(COST_FIELDS)
             | {"mode"}) - NOT_SETTINGS
    found = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args.args + node.args.kwonlyargs
            defaults = ([None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                        + node.args.kw_defaults)
            for a, d in zip(args, defaults):
                if a.arg in names and isinstance(d, ast.Constant) and d.value is not None:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({a.arg}={d.value!r})")
    assert found == []


def test_each_declared_default_appears_once_in_the_declarations():
    """The settings' global defaults are read from the declarations: the CLI, validation and
    stacks use them (no second table of defaults exists)."""
    import bimt.training.config as config

    assert not hasattr(config, "GLOBAL_DEFAULTS")
    from bimt.core.settings import CostSettings

    for name in ("A", "y_star", "p", "reduction"):
        assert config.default_of(name) == getattr(CostSettings(), name)
    assert config.MEMBER_FIELDS == {s.name for s in config.SETTINGS if s.stack}
    assert {"swap_A", "distance_free"} <= config.MEMBER_FIELDS


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
m = bimt.BioMLP([2, 6, 6, 2]); viz.plot(m); viz.plot_graph_3d(m)
viz.plot_decision_boundary(m, torch.rand(20, 2), torch.randint(2, (20,)))
g = bimt.BioMLP([16, 9, 4], layout="grid"); viz.plot(g)
t = bimt.BioTransformer(2, 2, d_model=8, n_blocks=1); viz.plot(t)
tok = bimt.BioMLP([8, 6, 5], vocab_size=5, n_tokens=2)
viz.plot_embedding_pairs(tok, pairs=[(0, 1)]); viz.plot_embedding_heatmap(tok, active_only=False)
viz.plot_pruning_frontier([(0, 1.0), (5, 0.5)])
X = torch.rand(50, 3, 2); X[:, 0, 0] = 0; X[:, 1, 1] = 0; X[:, 2, 0] = 0
viz.plot_residual_vs_weight(t, X, torch.rand(50))
seq = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)); viz.plot(bimt.attach(seq))
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

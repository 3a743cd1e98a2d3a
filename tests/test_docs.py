"""The documentation site (mkdocs.yml): it builds with ``--strict`` (no broken link, no warning),
and every public name has a docstring and a place in the API reference.

Public names: ``bimt.__all__``, ``bimt.analysis.__all__``, ``bimt.viz.__all__`` and the
``__all__`` of every module the API pages (docs/api/*.md) render. Needs ``bimt[docs]``; skipped
without it unless ``BIMT_REQUIRE_EXTRAS`` is set (``.ci/run``), where a missing tool fails.
"""

import importlib
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import bimt
from conftest import need_module

ROOT = Path(__file__).resolve().parent.parent
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))


def _need(module: str):
    return need_module(module, "docs")


def referenced_modules() -> list[str]:
    """The modules the API pages render (``::: bimt.x.y`` lines)."""
    found = [m for page in API_PAGES for m in re.findall(r"^::: (\S+)\s*$", page.read_text(), re.M)]
    assert found, "no ::: directive in docs/api/*.md"
    return found


@pytest.fixture(scope="module")
def package():
    """The package as the API reference reads it: statically (griffe, with the site's extension),
    so modules of optional extras (Lightning, transformers) need not be installed."""
    griffe = _need("griffe")
    extensions = griffe.load_extensions(f"{ROOT / 'scripts' / 'docs_hooks.py'}:SphinxStyle")
    return griffe.load("bimt", search_paths=[str(ROOT / "src")], extensions=extensions)


def _canonical(module: str, name: str) -> str:
    """Where ``module.name`` is defined (``bimt.analysis.intervene`` is a function of the
    submodule it shares its name with: ``bimt.analysis.intervene.intervene``)."""
    obj = getattr(importlib.import_module(module), name)
    if hasattr(obj, "__qualname__") and getattr(obj, "__module__", "").startswith("bimt."):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{module}.{name}"


def public_names(package) -> dict[str, tuple[str, ...]]:
    """``{name as a user writes it: (where it is defined, ...other identifiers the reference
    may file it under)}``."""
    names = {}
    for name in bimt.__all__:  # the facade: documented where each name is defined
        home = bimt._NAMES.get(name)
        names[f"bimt.{name}"] = (f"bimt.{home}.{name}" if home else f"bimt.{name}",)
    for module in ["bimt.analysis", "bimt.viz"]:
        for n in importlib.import_module(module).__all__:
            names[f"{module}.{n}"] = (_canonical(module, n), f"{module}.{n}")
    for module in referenced_modules():
        exports = package[module[len("bimt."):]].exports if module != "bimt" else None
        for n in exports or []:
            names.setdefault(f"{module}.{n}", (f"{module}.{n}",))
    return names


@pytest.fixture(scope="module")
def inventory(tmp_path_factory) -> set[str]:
    """Build the site (strict) and read the identifiers its API reference holds (objects.inv)."""
    _need("mkdocs"), _need("mkdocstrings_handlers.python")
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-4000:]}"
    raw = (site / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if line.strip()}


def test_the_site_builds_strict_and_lists_every_public_name(package, inventory):
    missing = sorted(user for user, ids in public_names(package).items() if not set(ids) & inventory)
    assert missing == [], f"public names missing from the API reference: {missing}"


def test_every_public_name_has_a_docstring(package):
    undocumented = []
    for user, ids in public_names(package).items():
        obj = package[ids[0][len("bimt."):]]
        if obj.docstring is None or not obj.docstring.value.strip():
            undocumented.append(user)
    assert undocumented == [], f"public names without a docstring: {undocumented}"


def test_the_name_lists_see_the_facade_and_submodules(package):  # so the tests above can fail
    names = public_names(package)
    assert names["bimt.fit"] == ("bimt.training.loop.fit",)
    assert names["bimt.analysis.intervene"][0] == "bimt.analysis.intervene.intervene"
    assert "bimt.analysis.find_circuit" in names and "bimt.viz.plot" in names
    assert "bimt.tasks.language.induction_data" in names

"""Type checkers see what ``import bimt`` gives: the facade's ``TYPE_CHECKING`` imports name
every lazy name from the module that serves it, and the package says it is typed (py.typed).
CI runs mypy on tests/typing/public_api.py (pyproject.toml [tool.mypy])."""

import ast
from pathlib import Path

import bimt

INIT = Path(bimt.__file__)


def _type_checking_imports() -> dict[str, str]:
    """``{name: module relative to bimt}`` imported under ``if TYPE_CHECKING:``."""
    found = {}
    for node in ast.walk(ast.parse(INIT.read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in ast.walk(node):
                if isinstance(imp, ast.ImportFrom) and imp.level == 1:
                    for alias in imp.names:
                        found[alias.asname or alias.name] = imp.module or alias.name
    return found


def test_type_checkers_see_every_lazy_name_where_it_is_served():
    seen = _type_checking_imports()
    assert {n: seen.get(n) for n in bimt._NAMES} == dict(bimt._NAMES)
    assert {n: seen.get(n) for n in bimt._SUBPACKAGES} == {n: n for n in bimt._SUBPACKAGES}


def test_the_package_is_marked_typed():
    assert (INIT.parent / "py.typed").is_file()

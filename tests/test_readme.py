"""Every Python example in the README runs as written. Blocks fenced ```python no-run (minutes
long, or needing torchvision, which does not install beside the pinned CPU torch) are left out
here; tests/test_family_paths.py runs them."""

import importlib.util
import os
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
#: Optional extras the README's examples may import: module -> the extra that installs it.
EXTRAS = {"lightning": "lightning", "transformers": "hf"}


def test_readme_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    for module, extra in EXTRAS.items():
        imported = re.search(rf"^(import|from) {module}\b", BLOCKS[index], flags=re.M)
        if imported and importlib.util.find_spec(module) is None:
            if os.environ.get("BIMT_REQUIRE_EXTRAS"):
                pytest.fail(f"BIMT_REQUIRE_EXTRAS is set but {module} is not installed")
            pytest.skip(f"this example needs {module} (pip install 'bimt[{extra}]')")
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README example {index}", "exec"), {})

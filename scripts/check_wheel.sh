#!/usr/bin/env bash
# What `pip install bimt` gives: build the sdist and, from it, the wheel; install the wheel into a
# fresh virtual environment (CPU torch pinned) and, away from the repository, train and view a
# run with its `bimt` command. Uses .venv's python for the build (`pip install -e ".[dev]"`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "check_wheel: $*" >&2; exit 1; }

"$python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "build failed"; }
wheel=$(ls "$work"/dist/*.whl)
sdist=$(ls "$work"/dist/*.tar.gz)
# package data: the report's template and the typing marker
"$python" - "$wheel" <<'PY' || fail "package data missing from the wheel"
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = {"bimt/py.typed", "bimt/viz/report_template.html"} - names
print(f"check_wheel: {len(names)} files in the wheel" + (f"; missing: {sorted(missing)}" if missing else ""))
sys.exit(1 if missing else 0)
PY

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-compile -c "$root/constraints-cpu.txt" "$wheel"
cd "$work"  # nothing of the repository on the path: only the installed package can be imported
"$work/venv/bin/python" -c "import bimt, sys; sys.exit(bimt.__file__.startswith('$root'))" \
  || fail "bimt was imported from the repository"
"$work/venv/bin/bimt" train two-moons --steps 50 --out RUN --quiet
"$work/venv/bin/bimt" view RUN
for f in report.html graph.png metrics.json; do
  [ -s "RUN/$f" ] || fail "bimt train/view left no RUN/$f"
done
echo "check_wheel: ok ($(basename "$wheel"), $(basename "$sdist"))"

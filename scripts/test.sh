#!/usr/bin/env bash
# Set up a virtual environment (if missing) and run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints-cpu.txt -e '.[test]'
.venv/bin/python -m pytest -q "$@"

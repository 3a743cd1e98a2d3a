#!/usr/bin/env bash
# Create .venv (if missing) and install bimt into it, with the CPU build of torch pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints-cpu.txt -e ".[test]"

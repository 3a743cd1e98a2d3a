#!/usr/bin/env bash
# Create .venv (if missing) and install bimt into it, with the CPU build of torch pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
echo "setup: installing bimt, CPU torch and the test tools into .venv (a few minutes the first time)"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints-cpu.txt -e ".[test]"
echo "setup: done"

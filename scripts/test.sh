#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the default test suite (slow reproductions excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"

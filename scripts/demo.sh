#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: BIMT on two moons, written to runs/two-moons/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/bimt train two-moons --steps 3000 --out runs/two-moons "$@"

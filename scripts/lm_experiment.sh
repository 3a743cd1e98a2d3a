#!/usr/bin/env bash
# The language-model experiments of docs/lm: vanilla, L1 and BIMT on induction and text-lm,
# seeds 0-2 (each run its own directory under OUT/runs), the tables, the seed-0 figures, and
# the circuit of every induction run (bimt analyze --circuit), copied to OUT/circuits. On 2
# cores: about an hour of training (a third of it induction), then some 15 seconds of circuit
# analysis per induction run (every head knocked out in turn).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/lm}
BIMT=${BIMT:-.venv/bin/bimt}
PYTHON=$(dirname "$BIMT")/python
"$BIMT" reproduce --tasks induction,text-lm --methods vanilla,l1,bimt --seeds 0-2 --workers 2 \
  --out "$OUT"
mkdir -p "$OUT/circuits"
for run in "$OUT"/runs/induction/*-s*; do
  "$BIMT" analyze "$run" --circuit > /dev/null
  "$BIMT" view "$run" > /dev/null
  name=$(basename "$run")
  cp "$run/circuit.json" "$OUT/circuits/$name.json"
  # half size: the picture of every wire is a few MB at full size
  "$PYTHON" -c 'import sys; from PIL import Image; im = Image.open(sys.argv[1]); im.resize((im.width // 2, im.height // 2), Image.LANCZOS).save(sys.argv[2], optimize=True)' "$run/circuit.png" "$OUT/circuits/$name.png"
  cp "$run/analysis.md" "$OUT/circuits/$name.md"
done

#!/usr/bin/env bash
# The language-model experiments of docs/lm: vanilla, L1 and BIMT on induction and text-lm,
# seeds 0-2 (each run its own directory under OUT/runs), the tables, the seed-0 figures, and
# the circuit of every induction run (bimt analyze --circuit). About an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/lm}
BIMT=${BIMT:-.venv/bin/bimt}
"$BIMT" reproduce --tasks induction,text-lm --methods vanilla,l1,bimt --seeds 0-2 --workers 2 \
  --out "$OUT"
for run in "$OUT"/runs/induction/*-s*; do
  "$BIMT" analyze "$run" --circuit > /dev/null
  "$BIMT" view "$run" > /dev/null
done
for run in "$OUT"/runs/text-lm/*-s0; do
  "$BIMT" analyze "$run" > /dev/null
done

#!/usr/bin/env bash
# The main job end to end on the embedded default, no external service needed:
# train a plain (biased) CNN on builtin biased digits, then let BISE find its fair subnetwork.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
DATA=${BISE_DEMO_DATA:-"builtin:biased-digits?rho=0.95&n=3000&seed=0"}
OUT=${BISE_DEMO_OUT:-runs/demo}
mkdir -p "$OUT"
.venv/bin/bise train-vanilla --data "$DATA" --arch cnn-wide --epochs 20 --out "$OUT/vanilla.pt"
.venv/bin/bise prune "$OUT/vanilla.pt" --data "$DATA" --out "$OUT/bise"

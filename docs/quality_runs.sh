#!/usr/bin/env bash
# The quality runs behind docs/BENCHMARKS.md: two streams at a time, one torch thread each.
# Each writes docs/results/<name>.json (the JSON line of `bench.py quality --json`).
# `bash docs/quality_runs.sh optimizers` and `bash docs/quality_runs.sh ablations` ran side by side.
set -u
cd "$(dirname "$0")/.."
out=docs/results
q() { local name=$1; shift; uv run bench.py quality --jobs 2 --threads 1 --json --curves "$@" 2>"$out/$name.log" | tail -1 > "$out/$name.json"; }

if [ "${1:-all}" != ablations ]; then
  # optimizers side by side, 5,000 frames, all five games
  q optimizers_5k --frames 5000 --optimizers obgd-adaptive adam obgd --plot docs/optimizers_5k.png
fi
if [ "${1:-all}" != optimizers ]; then
  # ablations of the named parts, 3,000 frames, Breakout and Assault
  # (default: residual and transformer off, change detector and layer norm on)
  q ablation_default_3k --frames 3000 --games Breakout Assault
  q ablation_full_3k --frames 3000 --games Breakout Assault --set use_transformer=True use_residual=True
  q ablation_transformer_3k --frames 3000 --games Breakout Assault --set use_transformer=True
  q ablation_residual_3k --frames 3000 --games Breakout Assault --set use_residual=True
  q ablation_no_layer_norm_3k --frames 3000 --games Breakout Assault --set use_layer_norm=False
  q ablation_no_change_detector_3k --frames 3000 --games Breakout Assault --set use_change_detector=False
  q sgd_5k --frames 5000 --games Breakout Assault --optimizers sgd
fi

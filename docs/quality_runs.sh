#!/usr/bin/env bash
# The quality runs behind docs/BENCHMARKS.md, one torch thread per stream.
# Each writes docs/results/<name>.json (the JSON line of `bench.py quality --json`).
# The two lanes (`bash docs/quality_runs.sh a` and `... b`) ran side by side.
set -u
cd "$(dirname "$0")/.."
out=docs/results
q() { local name=$1; shift; uv run bench.py quality --jobs 2 --threads 1 --json --curves "$@" 2>"$out/$name.log" | tail -1 > "$out/$name.json"; }
# ablations of the named parts, 3,000 frames, Breakout and Assault
# (default: residual and transformer off, change detector and layer norm on)
if [ "${1:-a}" = a ]; then
  q ablation_default_3k --frames 3000 --games Breakout Assault
  q ablation_full_3k --frames 3000 --games Breakout Assault --set use_transformer=True use_residual=True
  q ablation_residual_3k --frames 3000 --games Breakout Assault --set use_residual=True
  q ablation_no_layer_norm_3k --frames 3000 --games Breakout Assault --set use_layer_norm=False
fi
if [ "${1:-b}" = b ]; then
  q ablation_transformer_3k --frames 3000 --games Breakout Assault --set use_transformer=True
  q ablation_no_change_detector_3k --frames 3000 --games Breakout Assault --set use_change_detector=False
  # the optimizers side by side (obgd-adaptive is ablation_default_3k)
  q optimizers_3k --frames 3000 --games Breakout Assault --optimizers adam obgd
fi

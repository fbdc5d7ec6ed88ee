#!/usr/bin/env bash
# The benchmark runs behind docs/BENCHMARKS.md. Each writes docs/results/<name>.json
# (the JSON line of `bench.py ... --json`) and its progress to <name>.log.
# Quality runs use one torch thread per stream; lanes a, b and c ran side by side
# (`bash docs/quality_runs.sh a & bash docs/quality_runs.sh b & bash docs/quality_runs.sh c`),
# then the soak, then the speed lane on the otherwise idle machine.
set -u
cd "$(dirname "$0")/.."
out=docs/results
q() { local name=$1; shift; uv run bench.py quality --threads 1 --json --curves "$@" 2>"$out/$name.log" | tail -1 > "$out/$name.json"; }
s() { local name=$1; shift; uv run bench.py speed --json "$@" 2>"$out/$name.log" | tail -1 > "$out/$name.json"; }
case "${1:-}" in
  a)
    q default_20k_Pacman --frames 20000 --games Pacman
    q default_20k_SpaceInvaders --frames 20000 --games SpaceInvaders
    q default_20k_Asteroids --frames 20000 --games Asteroids
    q ablation_residual_3k --frames 3000 --games Breakout Assault --set use_residual=True
    q ablation_transformer_3k --frames 3000 --games Breakout Assault --set use_transformer=True ;;
  b)
    q default_20k_Assault --frames 20000 --games Assault
    q default_20k_Breakout --frames 20000 --games Breakout
    q ablation_default_3k --frames 3000 --games Breakout Assault
    q ablation_no_layer_norm_3k --frames 3000 --games Breakout Assault --set use_layer_norm=False
    q ablation_no_change_detector_3k --frames 3000 --games Breakout Assault --set use_change_detector=False
    q ablation_plain_sigmoid_3k --frames 3000 --games Breakout Assault --set output_margin=0.0
    q candidate_branch_heads_3k --frames 3000 --games Breakout Assault --set branch_heads=True
    q candidate_encoder_8_16_3k --frames 3000 --games Breakout Assault --set encoder_widths=8,16
    q candidate_upsampled_8_3k --frames 3000 --games Breakout Assault --set upsampled_width=8 ;;
  c)
    q optimizers_5k --frames 5000 --games Breakout Assault --optimizers obgd-adaptive obgd adam sgd
    q other_games_5k --frames 5000 --games Pong Seaquest
    q candidate_previous_default_3k --frames 3000 --games Breakout Assault --set branch_heads=True encoder_widths=8,16 ;;
  speed)
    for run in 1 2 3 4 5; do s speed_default_run$run; done
    uv run docs/cpu_profile.py > "$out/cpu_profile.txt" ;;
  compile)  # last run at commit 9cb38fe, on the previous default (branch_heads=True encoder_widths=8,16)
    s speed_compile --compile ;;
  soak)
    uv run bench.py soak --frames 5000 --threads 1 --json 2>"$out/soak_5k.log" | tail -1 > "$out/soak_5k.json" ;;
  *) echo "usage: bash docs/quality_runs.sh a|b|c|speed|compile|soak" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The benchmark runs behind docs/BENCHMARKS.md. Each writes docs/results/<name>.json
# (the JSON line of `bench.py ... --json`) and its progress to <name>.log.
# Quality runs use one torch thread per stream. Lanes a and b run side by side (the seeds
# lane before them), then the soak, then the speed lane on the otherwise idle machine; the
# continual lane runs two one-thread processes side by side; the streams lane needs the idle machine.
set -u
cd "$(dirname "$0")/.."
out=docs/results
q() { local name=$1; shift; uv run bench.py quality --threads 1 --json --curves "$@" 2>"$out/$name.log" | tail -1 > "$out/$name.json"; }
p() { local name=$1; shift; uv run bench.py quality --threads 1 --json "$@" 2>"$out/$name.log" | tail -1 > "$out/$name.json"; }  # no curves
s() { local name=$1; shift; uv run bench.py speed --json "$@" 2>"$out/$name.log" | tail -1 > "$out/$name.json"; }
case "${1:-}" in
  a)
    q default_20k_Pacman --frames 20000 --games Pacman
    q default_20k_SpaceInvaders --frames 20000 --games SpaceInvaders
    q default_20k_Asteroids --frames 20000 --games Asteroids ;;
  b)
    q default_20k_Assault --frames 20000 --games Assault
    q default_20k_Breakout --frames 20000 --games Breakout ;;
  seeds)  # the encoder layer norm decision: default and + encoder layer norm, seeds 0-2
    for seed in 0 1 2; do
      p default_3k_seed$seed --frames 3000 --games Breakout Assault --seed $seed
      p encoder_layer_norm_3k_seed$seed --frames 3000 --games Breakout Assault --seed $seed --set encoder_layer_norm=True
    done ;;
  ablations)  # last run at commit 6fd4d70, whose default had layer norm in the encoder (no flag then):
              # encoder_layer_norm=True names those same models
    q ablation_residual_3k --frames 3000 --games Breakout Assault --set encoder_layer_norm=True use_residual=True
    q ablation_transformer_3k --frames 3000 --games Breakout Assault --set encoder_layer_norm=True use_transformer=True
    q ablation_default_3k --frames 3000 --games Breakout Assault --set encoder_layer_norm=True
    q ablation_no_layer_norm_3k --frames 3000 --games Breakout Assault --set use_layer_norm=False
    q ablation_no_change_detector_3k --frames 3000 --games Breakout Assault --set encoder_layer_norm=True use_change_detector=False
    q ablation_plain_sigmoid_3k --frames 3000 --games Breakout Assault --set encoder_layer_norm=True output_margin=0.0
    q candidate_branch_heads_3k --frames 3000 --games Breakout Assault --set encoder_layer_norm=True branch_heads=True
    q candidate_encoder_8_16_3k --frames 3000 --games Breakout Assault --set encoder_layer_norm=True encoder_widths=8,16
    q candidate_upsampled_8_3k --frames 3000 --games Breakout Assault --set encoder_layer_norm=True upsampled_width=8 ;;
  c)  # last run at commit 6fd4d70, likewise (encoder_layer_norm=True names its models)
    q optimizers_5k --frames 5000 --games Breakout Assault --optimizers obgd-adaptive obgd adam sgd --set encoder_layer_norm=True
    q other_games_5k --frames 5000 --games Pong Seaquest --set encoder_layer_norm=True
    q candidate_previous_default_3k --frames 3000 --games Breakout Assault --set encoder_layer_norm=True branch_heads=True encoder_widths=8,16 ;;
  speed)
    for run in 1 2 3 4 5; do s speed_default_run$run; done
    uv run docs/cpu_profile.py > "$out/cpu_profile.txt" ;;
  compile)  # last run at commit 9e0dc86, with branch_heads=True encoder_widths=8,16 encoder_layer_norm=True
    s speed_compile --compile ;;
  codec)  # real bytes: the default, float latents and noise training, then the rate points, then their speed
    r() { local name=$1; shift; uv run bench.py "$@" --json 2>"$out/$name.log" | tail -1 > "$out/$name.json"; }
    r codec_float_5k quality --frames 5000 --games Breakout Assault --set latent_bits=0
    r codec_noise_5k quality --frames 5000 --games Breakout Assault --set latent_noise=True
    r codec_default_5k quality --frames 5000 --plot docs/quality_5k.png
    r rate_2k rate --frames 2000 --plot docs/rate_2k.png
    r rate_assault_5k rate --frames 5000 --games Assault --jobs 2 --threads 1
    for run in 1 2 3; do
      for set in latent_bits=0 latent_bits=8 latent_noise=True; do
        uv run bench.py speed --set $set --json 2>/dev/null | tail -1 | sed "s/^/$set /" >> "$out/speed_codec_designs.txt"
      done
    done ;;
  streams)  # stacked streams: the speed table, exactness, packed rows against lone ones, the profile
    rm -f "$out/speed_streams.jsonl"
    for k in 1 2 4 8 16 32; do
      uv run bench.py speed --streams $k --updates 40 --json 2>/dev/null | tail -1 >> "$out/speed_streams.jsonl"
    done
    uv run docs/stream_exactness.py > "$out/stream_exactness.txt"
    r() { local name=$1; shift; uv run bench.py "$@" --json 2>"$out/$name.log" | tail -1 > "$out/$name.json"; }
    r packing_300_alone quality --frames 300 --games Breakout Assault SpaceInvaders Pacman --heldout 30
    r packing_300_packed quality --frames 300 --games Breakout Assault SpaceInvaders Pacman --heldout 30 --streams 4
    r packing_300_one_thread quality --frames 300 --games Breakout Assault SpaceInvaders Pacman --heldout 30 --threads 1
    uv run docs/cpu_profile.py streams > "$out/cpu_profile_streams.txt" ;;
  continual)  # the five games, 5,000 frames each, four optimizers, three seeds packed three to a learner
    uv run bench.py continual --games Breakout Assault SpaceInvaders Pacman Asteroids --switch-every 5000 --cycles 1 \
      --optimizers obgd obgd-adaptive adam sgd --seeds 0 1 2 --streams 3 --jobs 2 --threads 1 --eval-every 2500 \
      --plot docs/continual_5k.png --json 2>"$out/continual_5k.log" | tail -1 > "$out/continual_5k.json" ;;
  soak)
    uv run bench.py soak --frames 5000 --threads 1 --json 2>"$out/soak_5k.log" | tail -1 > "$out/soak_5k.json" ;;
  *) echo "usage: bash docs/quality_runs.sh a|b|seeds|ablations|c|speed|compile|continual|codec|streams|soak" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The GPU checks behind docs/BENCHMARKS.md, as one script for a lent GPU machine that
# has its own python3 and torch but no network: gymnasium, ale-py and
# farama-notifications travel as wheels in .whl/ (docs/BENCHMARKS.md, "GPU", says how).
# Writes every log and JSON line to docs/results/gpu/; where the device tool sets $OUT
# (it returns at most 8 files), each JSON line and a tarball of everything go there too.
set -u
cd "$(dirname "$0")/.."
out=docs/results/gpu
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, gymnasium, ale_py; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

timeout 120 python3 -m pytest -q -p no:cacheprovider -k "cuda or optim" tests/test_autoencoder.py tests/test_optim.py \
  2>&1 | tee "$out/pytest_gpu.log" | tail -15

speed() {  # name, time limit (s), bench.py speed flags
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 bench.py speed --device cuda --json "$@" 2>"$out/$name.log" | tail -1 > "$out/$name.json"
  if [ -s "$out/$name.json" ]; then
    echo "$name: $(cat "$out/$name.json")"
    if [ -n "${OUT:-}" ]; then cp "$out/$name.json" "$OUT/"; fi
  else
    echo "$name failed:"; grep -v '^\s*$' "$out/$name.log" | tail -8
  fi
}
speed speed_cuda_eager 90 --updates 100 --cuda-graph off
speed speed_cuda_graph 90 --updates 500 --cuda-graph on
speed speed_cuda_compile_graph 150 --updates 500 --compile
speed speed_cuda_compile 110 --updates 500 --compile --cuda-graph off
python3 - "$out" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("speed_cuda_*.json")):
    try:
        r = json.loads(path.read_text())
        print(f"{path.stem:28s} update_fps {r['update_fps']:8.1f}  loop_fps {r['loop_fps']:7.1f}  stages {r['stages_ms']}")
    except (ValueError, KeyError):
        print(f"{path.stem:28s} no result (see its .log)")
EOF
if [ -n "${OUT:-}" ]; then tar -czf "$OUT/gpu_results.tgz" -C docs/results gpu; fi

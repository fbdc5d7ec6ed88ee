"""Where the time of one compiled, graph-captured update goes on a GPU.

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 docs/gpu_profile.py

(on a GPU machine without network, with the wheels of docs/BENCHMARKS.md in .whl/).

For each setting it times, in updates per second: update_params on a numpy frame
(what bench.py speed reports), update_params on a frame already on the GPU, and
back-to-back replays of the captured graph alone (the GPU's own time per update).
It also times preprocess_frame alone. One JSON line per setting on stdout.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autoencoder import StreamingAutoEncoder  # noqa: E402
from benchmarks.speed import timed_rate  # noqa: E402
from stream import collect_frames  # noqa: E402
from utils import preprocess_frame  # noqa: E402


def rate(fn, count: int) -> float:
    return timed_rate(fn, count, torch.device("cuda"), repeats=1)


def measure_setting(name: str, count: int = 2000) -> dict:
    frames = collect_frames("Breakout", 64)
    on_gpu = [preprocess_frame(f, "cuda") for f in frames]
    torch.manual_seed(0)
    model = StreamingAutoEncoder(device="cuda", compile=True)
    for i in range(10):
        model.update_params(frames[i])
    result = {
        "setting": name,
        "numpy_frame_fps": rate(lambda i: model.update_params(frames[i % 64]), count),
        "gpu_frame_fps": rate(lambda i: model.update_params(on_gpu[i % 64]), count),
        "replay_only_fps": rate(lambda i: model.captured_step.graph.replay(), count),
        "preprocess_per_s": rate(lambda i: preprocess_frame(frames[i % 64], "cuda"), count),
    }
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


if __name__ == "__main__":
    print(json.dumps(measure_setting("default")), flush=True)
    torch.backends.cudnn.benchmark = True
    print(json.dumps(measure_setting("cudnn.benchmark")), flush=True)

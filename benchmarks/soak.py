"""`bench.py soak`: resident memory at intervals over a long run, its growth after warm-up,
and the TensorBoard log size per 100k frames."""

import tempfile
from pathlib import Path

import torch

from autoencoder import StreamingAutoEncoder
from benchmarks.common import one_game
from loop import FrameLoop
from observers import MemorySamples, ProgressBar, TensorBoardLog

NAME = "soak"
HELP = "resident memory and TensorBoard disk use over a long run"


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")


def run(args) -> dict:
    """One long run of the default model with TensorBoard logging, its resident memory sampled about 40 times."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = StreamingAutoEncoder()
    warmup = max(1, args.frames // 10)
    memory = MemorySamples(every=max(1, args.frames // 40), warmup=warmup)
    with tempfile.TemporaryDirectory() as folder:
        observers = [TensorBoardLog(Path(folder)), memory, ProgressBar(args.frames, "soak", mininterval=5)]
        FrameLoop(model, one_game(args.game, 0), observers).run(args.frames)
        log_bytes = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    samples = memory.samples
    after_warmup = [mb for i, mb in samples if i >= warmup]
    return {
        "frames": args.frames,
        "threads": args.threads,
        "rss_mb": samples,
        "rss_growth_after_warmup_mb": round(after_warmup[-1] - after_warmup[0], 1),
        "rss_peak_mb": max(mb for _, mb in samples),
        "tensorboard_bytes": log_bytes,
        "tensorboard_mb_per_100k_frames": round(log_bytes / args.frames * 100_000 / 2**20, 1),
    }

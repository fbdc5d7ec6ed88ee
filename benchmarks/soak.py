"""`bench.py soak`: resident memory at intervals over a long run, its growth after warm-up,
and the TensorBoard log size per 100k frames."""

import os
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from autoencoder import StreamingAutoEncoder
from monitoring import TensorBoardLogger
from stream import env_seed, make_env, next_frame

NAME = "soak"
HELP = "resident memory and TensorBoard disk use over a long run"


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(args) -> dict:
    """One long run of the default model with TensorBoard logging, its resident memory sampled about 40 times."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = StreamingAutoEncoder()
    env, frame = make_env(args.game, env_seed(0, 0))
    samples = []
    every = max(1, args.frames // 40)
    warmup = max(1, args.frames // 10)
    with tempfile.TemporaryDirectory() as folder:
        logger = TensorBoardLogger(folder)
        for i in tqdm(range(1, args.frames + 1), desc="soak", file=sys.stderr, mininterval=5):
            results = model.update_params(frame)
            logger.log_step(results, model)
            frame = next_frame(env)
            if i % every == 0 or i == warmup:
                samples.append((i, round(resident_mb(), 1)))
        logger.close(results, model)
        log_bytes = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
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

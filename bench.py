"""Benchmarks: speed, learning quality and long-run memory.

    uv run bench.py speed [--device cpu|cuda] [--json]
    uv run bench.py quality --frames N [--games G ...] [--optimizers O ...] [--plot P] [--json]
    uv run bench.py soak --frames N [--json]

Progress goes to stderr; with --json the last line of stdout is one JSON object.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from autoencoder import StreamingAutoEncoder
from main import DEFAULT_GAMES, Config, make_env, next_frame
from model import ModelConfig
from monitoring import TensorBoardLogger
from optim import OPTIMIZERS
from utils import FRAME_SIZE, preprocess_frame

LATENT_BYTES = 4495  # all three latents at 8 bits


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs for ModelConfig (ablations), values parsed as Python literals."""
    import ast

    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key] = ast.literal_eval(value)
    return overrides


def collect_frames(game: str, count: int, seed: int = 0) -> list[np.ndarray]:
    env, frame = make_env(game, seed)
    frames = [frame]
    while len(frames) < count:
        frames.append(next_frame(env))
    env.close()
    return frames


# speed --------------------------------------------------------------------------------------

def timed_rate(fn, count: int, device: torch.device, repeats: int = 5) -> float:
    """Calls per second: the median over `repeats` windows of `count` calls."""
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for i in range(count):
            fn(i)
        sync(device)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def matmul_gflops(device: torch.device) -> float:
    a, b = torch.randn(4096, 4096, device=device), torch.randn(4096, 4096, device=device)
    for _ in range(2):
        a @ b
    rate = timed_rate(lambda i: a @ b, 3 if device.type == "cpu" else 50, device, repeats=3)
    return 2 * 4096**3 * rate / 1e9


def stage_times(model: StreamingAutoEncoder, frames: list[np.ndarray], env, logger, device) -> dict:
    """Median milliseconds of each stage of the live loop, synchronised between stages.

    The stages run eagerly (compiled network and loss included) even where
    update_params replays a CUDA graph: a graph cannot be timed by parts.
    """
    names = ("env", "preprocess", "forward", "backward", "optimizer", "logging")
    samples = {name: [] for name in names}
    for frame in frames:
        marks = [time.perf_counter()]
        env.step(env.action_space.sample())
        marks.append(time.perf_counter())
        x = preprocess_frame(frame, device)
        sync(device)
        marks.append(time.perf_counter())
        parts, reconstruction, latents, mask = model.forward_loss(x)
        sync(device)
        marks.append(time.perf_counter())
        model.backward(parts["loss"])
        sync(device)
        marks.append(time.perf_counter())
        step_size, finite = model.optimizer_step(parts["loss"])
        sync(device)
        marks.append(time.perf_counter())
        model.step += 1
        results = {**parts, "psnr": -10 * torch.log10(parts["mse"]), "reconstruction": reconstruction,
                   "change_mask": mask, "input": x, "step": model.step, "fps": 0.0, "step_ms": 0.0,
                   "step_size": step_size, "skipped": ~finite}
        logger.log_step(results, model)
        sync(device)
        marks.append(time.perf_counter())
        for name, begin, end in zip(names, marks, marks[1:]):
            samples[name].append((end - begin) * 1e3)
    return {name: round(statistics.median(values), 3) for name, values in samples.items()}


def count_gflop(config: ModelConfig, optimizer: str, frames: list[np.ndarray], device: torch.device) -> float:
    """FLOPs of one update_params call, counted on a fresh eager model of the same
    config (a replayed CUDA graph or a compiled graph hides its ops from FlopCounterMode)."""
    torch.manual_seed(0)
    model = StreamingAutoEncoder(config, optimizer=optimizer, device=device)
    model.update_params(frames[0])
    x = preprocess_frame(frames[1], device)
    with FlopCounterMode(display=False) as counter:
        model.update_params(x)
    return counter.get_total_flops() / 1e9


def bench_speed(args) -> dict:
    device = torch.device(args.device)
    config = replace(ModelConfig(), **parse_overrides(args.set))
    frames = collect_frames("Breakout", 64)
    torch.manual_seed(0)
    cuda_graph = {"auto": None, "on": True, "off": False}[args.cuda_graph]
    if cuda_graph and device.type != "cuda":
        raise SystemExit("bench.py: --cuda-graph on needs --device cuda")
    model = StreamingAutoEncoder(config, optimizer=args.optimizer, device=device, compile=args.compile,
                                 cuda_graph=cuda_graph)
    log("FLOPs (one update of an eager model of the same config)")
    gflop = count_gflop(config, args.optimizer, frames, device)
    log("warm-up" + (" (compiling)" if args.compile else ""))
    for i in range(10):
        model.update_params(frames[i])
    log("update_params")
    update_fps = timed_rate(lambda i: model.update_params(frames[i % len(frames)]), args.updates, device)

    log("env")
    env, frame = make_env("Breakout", 0)
    env_fps = timed_rate(lambda i: next_frame(env), 500, device)

    log("loop (env + preprocess + update + TensorBoard at the default cadence)")
    defaults = Config()
    with tempfile.TemporaryDirectory() as folder:
        logger = TensorBoardLogger(folder, scalar_every=defaults.log_every, image_every=defaults.image_every,
                                   histogram_every=defaults.histogram_every)
        model.logger = logger
        state = {"frame": frame}

        def loop_step(i):
            model.update_params(state["frame"])
            state["frame"] = next_frame(env)

        loop_fps = timed_rate(loop_step, args.updates, device)
        model.logger = None
        log("stages")
        stages = stage_times(model, frames[:30], env, logger, device)
        logger.close()
    log("matmul")
    peak = matmul_gflops(device)
    achieved = gflop * update_fps
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "update_fps": round(update_fps, 2),
        "loop_fps": round(loop_fps, 2),
        "env_fps": round(env_fps, 1),
        "gflop_per_update": round(gflop, 4),
        "achieved_gflops": round(achieved, 2),
        "matmul_gflops": round(peak, 1),
        "roofline_fraction": round(achieved / peak, 4),
        "stages_ms": stages,
        "compile": args.compile,
        "cuda_graph": model.captured_step is not None,
        "config": {k: v for k, v in vars(config).items()},
    }


# quality ------------------------------------------------------------------------------------

def psnr_of(mse: float) -> float:
    return 10 * np.log10(1.0 / mse)


def jpeg_baseline(frames, budget: int = LATENT_BYTES) -> tuple[float, float, int]:
    """(PSNR, mean bytes, quality) of OpenCV JPEG at the largest quality whose mean size fits.

    The mean size grows with the quality, so a binary search over 1..100 finds it.
    """
    def encode(quality: int) -> list[np.ndarray]:
        return [cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1] for f in frames]

    low, high = 0, 100  # invariant: quality `low` fits (0 = none does), every quality above `high` does not
    while low < high:
        middle = (low + high + 1) // 2
        if np.mean([len(e) for e in encode(middle)]) <= budget:
            low = middle
        else:
            high = middle - 1
    if low == 0:
        return float("nan"), float("nan"), 0
    encoded = encode(low)
    decoded = [cv2.imdecode(e, cv2.IMREAD_COLOR)[..., ::-1] for e in encoded]
    mse = np.mean([np.mean((d / 255.0 - f / 255.0) ** 2) for d, f in zip(decoded, frames)])
    return psnr_of(mse), float(np.mean([len(e) for e in encoded])), low


def quality_run(task: dict) -> dict:
    """One (game, optimizer) stream, scored prequentially; runs in its own process."""
    torch.set_num_threads(task["threads"])
    game, optimizer, frames_total = task["game"], task["optimizer"], task["frames"]
    torch.manual_seed(task["seed"])
    model = StreamingAutoEncoder(replace(ModelConfig(), **task["overrides"]), optimizer=optimizer, lr=task["lr"])
    env, frame = make_env(game, task["seed"])
    tail_start = frames_total - max(1, frames_total // 10)
    mses = torch.empty(frames_total, dtype=torch.float64)  # filled in place: a list of 0-d tensors fragments the heap
    tail_frames = np.empty((frames_total - tail_start, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    bar = tqdm(total=frames_total, desc=f"{game}/{optimizer}", file=sys.stderr, mininterval=5, position=task["index"])
    for i in range(frames_total):
        results = model.update_params(frame)
        mses[i] = results["mse"]
        if i >= tail_start:
            tail_frames[i - tail_start] = (results["input"][0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        frame = next_frame(env)
        bar.update()
        if (i + 1) % 500 == 0:
            bar.set_postfix(psnr=f"{psnr_of(mses[i - 499 : i + 1].mean().item()):.2f}")
    bar.close()
    mses = mses.tolist()
    targets = tail_frames.astype(np.float64) / 255.0
    floor_mse = np.mean((targets - targets.mean(axis=0)) ** 2)
    jpeg_psnr, jpeg_bytes, jpeg_quality = jpeg_baseline(tail_frames)
    return {
        "game": game, "optimizer": optimizer, "frames": frames_total,
        "psnr": round(psnr_of(np.mean(mses[tail_start:])), 2),
        "floor_psnr": round(psnr_of(floor_mse), 2),
        "jpeg_psnr": round(jpeg_psnr, 2), "jpeg_bytes": round(jpeg_bytes, 1), "jpeg_quality": jpeg_quality,
        "mse_curve": mses,
    }


def plot_quality(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = sorted({r["game"] for r in rows}, key=[r["game"] for r in rows].index)
    fig, axes = plt.subplots(1, len(games), figsize=(4.2 * len(games), 3.6), squeeze=False)
    for ax, game in zip(axes[0], games):
        for row in (r for r in rows if r["game"] == game):
            mse = np.asarray(row["mse_curve"])
            window = max(1, len(mse) // 50)
            smooth = np.convolve(mse, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(len(smooth)) + window, 10 * np.log10(1 / smooth), label=row["optimizer"])
        row = next(r for r in rows if r["game"] == game)
        ax.axhline(row["floor_psnr"], color="gray", linestyle="--", label="mean-frame floor")
        ax.axhline(row["jpeg_psnr"], color="black", linestyle=":", label=f"JPEG at {LATENT_BYTES} B")
        ax.set_title(game)
        ax.set_xlabel("frame")
        ax.set_ylabel("prequential PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def bench_quality(args) -> dict:
    overrides = parse_overrides(args.set)
    tasks = [
        {"game": g, "optimizer": o, "frames": args.frames, "seed": args.seed, "overrides": overrides,
         "lr": args.lr, "threads": args.threads, "index": i}
        for i, (g, o) in enumerate((g, o) for g in args.games for o in args.optimizers)
    ]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(quality_run, tasks))
    else:
        rows = [quality_run(t) for t in tasks]
    if args.plot:
        plot_quality(rows, args.plot)
        log(f"plot: {args.plot}")
    for row in rows:
        log(f"{row['game']:>14} {row['optimizer']:>13}: {row['psnr']:6.2f} dB  floor {row['floor_psnr']:6.2f}  "
            f"JPEG {row['jpeg_psnr']:6.2f} ({row['jpeg_bytes']:.0f} B)")
        if not args.curves:
            del row["mse_curve"]
    return {"results": rows, "overrides": overrides}


# soak ---------------------------------------------------------------------------------------

def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_soak(args) -> dict:
    torch.set_num_threads(args.threads)
    defaults = Config()
    torch.manual_seed(0)
    model = StreamingAutoEncoder()
    env, frame = make_env(args.game, 0)
    samples = []
    every = max(1, args.frames // 40)
    warmup = max(1, args.frames // 10)
    with tempfile.TemporaryDirectory() as folder:
        model.logger = TensorBoardLogger(folder, scalar_every=defaults.log_every, image_every=defaults.image_every,
                                         histogram_every=defaults.histogram_every)
        for i in tqdm(range(1, args.frames + 1), desc="soak", file=sys.stderr, mininterval=5):
            results = model.update_params(frame)
            frame = next_frame(env)
            if i % every == 0 or i == warmup:
                samples.append((i, round(resident_mb(), 1)))
        model.logger.close(results, model)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed", help="updates/s, loop FPS, FLOPs and the roofline")
    speed.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    speed.add_argument("--updates", type=int, default=60, help="updates per timing window")
    speed.add_argument("--optimizer", default="obgd-adaptive", choices=list(OPTIMIZERS))
    speed.add_argument("--compile", action="store_true", help="torch.compile network and loss (warm-up compiles)")
    speed.add_argument("--cuda-graph", default="auto", choices=["auto", "on", "off"],
                       help="capture each update as one CUDA graph (auto: with --compile on CUDA)")
    speed.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ModelConfig overrides")
    quality = sub.add_parser("quality", help="prequential PSNR against the mean-frame floor and JPEG")
    quality.add_argument("--frames", type=int, required=True)
    quality.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES))
    quality.add_argument("--optimizers", nargs="+", default=["obgd-adaptive"], choices=list(OPTIMIZERS))
    quality.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ModelConfig overrides")
    quality.add_argument("--plot", help="PNG path for the PSNR-over-frames plot")
    quality.add_argument("--jobs", type=int, default=1, help="streams run in parallel processes")
    quality.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per stream")
    quality.add_argument("--curves", action="store_true", help="keep per-frame MSE curves in the JSON")
    soak = sub.add_parser("soak", help="resident memory and TensorBoard disk use over a long run")
    soak.add_argument("--frames", type=int, required=True)
    soak.add_argument("--game", default="Breakout")
    soak.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    for p in (speed, quality, soak):
        p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = parser.parse_args()
    result = {"speed": bench_speed, "quality": bench_quality, "soak": bench_soak}[args.command](args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

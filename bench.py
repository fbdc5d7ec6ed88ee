"""Benchmarks: speed, learning quality, continual learning and long-run memory.

    uv run bench.py speed [--device cpu|cuda] [--window] [--json]
    uv run bench.py quality --frames N [--games G ...] [--optimizers O ...] [--plot P] [--json]
    uv run bench.py rate --frames N [--games G ...] [--points C:B ...] [--plot P] [--json]
    uv run bench.py continual --games A B C --switch-every N --cycles C [--optimizers O ...] [--seeds S ...]
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
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import bjontegaard
import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from autoencoder import StreamingAutoEncoder
from baselines import CODECS, baseline_fields, bytes_at_psnr, rate_curves
from continual import EVAL_EVERY, PROBE_FRAMES, forgetting_summary, plasticity_metrics, probe_psnrs, scoring
from metrics import floor_psnr, psnr, psnr_value
from model import ModelConfig
from monitoring import TensorBoardLogger
from optim import DEFAULT_OPTIMIZER, OPTIMIZERS
from stream import DEFAULT_GAMES, FrameStream, Schedule, collect_frames, env_seed, make_env, next_frame, probe_frames
from utils import FRAME_SIZE, preprocess_frame
from viewer import DISPLAY_FPS, Viewer, display_usable

HELDOUT = 300


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs for ModelConfig (ablations), values parsed as Python literals."""
    import ast

    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key] = ast.literal_eval(value)
    return overrides


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


def stage_times(model: StreamingAutoEncoder, env, frame, logger, device, count: int) -> dict:
    """Median milliseconds of each stage of the live loop, synchronised between stages.

    update_params reports its own stages through `stage_marks`; they run eagerly
    (compiled network and loss included) even where update_params replays a CUDA graph:
    a graph cannot be timed by parts.
    """
    samples = {name: [] for name in ("env", "preprocess", "forward", "backward", "optimizer", "logging")}
    last = [time.perf_counter()]

    def mark(name: str) -> None:
        sync(device)
        now = time.perf_counter()
        samples[name].append((now - last[0]) * 1e3)
        last[0] = now

    for _ in range(count):
        last[0] = time.perf_counter()
        results = model.update_params(frame, stage_marks=mark)
        logger.log_step(results, model)
        mark("logging")
        frame = next_frame(env)
        mark("env")
    return {name: round(statistics.median(values), 3) for name, values in samples.items()}


def window_rates(model, loop_step, state: dict, updates: int, device, pairs: int = 5) -> dict:
    """The loop with the real window on the current display (redrawn at most DISPLAY_FPS times a
    second) against the same loop headless, in alternating windows: (window_loop_fps, window_ratio)."""
    if not display_usable():
        raise SystemExit("bench.py speed --window: no usable display (set DISPLAY to a running X server)")
    viewer = Viewer(("Breakout",), DISPLAY_FPS)

    def window_step(i):
        loop_step(i)
        if viewer.due():
            viewer.show(state["results"], model.performance.fps, "Breakout", "Breakout")

    headless, windowed = [], []
    for _ in range(pairs):
        headless.append(timed_rate(loop_step, updates, device, repeats=1))
        windowed.append(timed_rate(window_step, updates, device, repeats=1))
    viewer.close()
    window_fps, headless_fps = statistics.median(windowed), statistics.median(headless)
    return {"window_loop_fps": round(window_fps, 2), "window_headless_loop_fps": round(headless_fps, 2),
            "window_ratio": round(window_fps / headless_fps, 3), "window_redraws": viewer.redraws}


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


def stream_rates(args, config: ModelConfig, device: torch.device, single: StreamingAutoEncoder,
                 frames: list[np.ndarray]) -> dict:
    """K streams (the default games in turn, each its own seed) in one stacked learner
    against the single learner, in alternating windows of about the same duration."""
    models = []
    for k in range(args.streams):
        torch.manual_seed(k)
        models.append(StreamingAutoEncoder(config, optimizer=args.optimizer, device=device))
    stacked = StreamingAutoEncoder.stack(models)
    stream_frames = [collect_frames(DEFAULT_GAMES[k % len(DEFAULT_GAMES)], 16, seed=k) for k in range(args.streams)]
    batches = [[f[i] for f in stream_frames] for i in range(16)]
    for i in range(3):
        stacked.update_params(batches[i])
    window = max(3, args.updates // args.streams)
    single_fps, stacked_fps = [], []
    for _ in range(args.pairs):
        single_fps.append(timed_rate(lambda i: single.update_params(frames[i % len(frames)]), args.updates, device, 1))
        stacked_fps.append(timed_rate(lambda i: stacked.update_params(batches[i % len(batches)]), window, device, 1))
    update_fps = statistics.median(stacked_fps)
    return {
        "update_fps": update_fps,
        "streams": args.streams,
        "stream_updates_per_s": round(args.streams * update_fps, 2),
        "single_update_fps": round(statistics.median(single_fps), 2),
        "speedup_vs_single": round(statistics.median(args.streams * k / s for k, s in zip(stacked_fps, single_fps)), 3),
    }


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
    streams = {}
    if args.streams:
        log(f"{args.streams} stacked streams against the single learner, {args.pairs} pairs of windows")
        streams = stream_rates(args, config, device, model, frames)
        # K streams do K single updates' arithmetic (FlopCounterMode counts a grouped convolution's
        # backward as if it were not grouped, K times too much)
        update_fps, gflop = streams.pop("update_fps"), gflop * args.streams

    log("env")
    env, frame = make_env("Breakout", env_seed(0, 0))
    env_fps = timed_rate(lambda i: next_frame(env), 500, device)

    log("loop (env + preprocess + update + TensorBoard at the default cadence)")
    with tempfile.TemporaryDirectory() as folder:
        logger = TensorBoardLogger(folder)
        state = {"frame": frame}

        def loop_step(i):
            state["results"] = model.update_params(state["frame"])
            logger.log_step(state["results"], model)
            state["frame"] = next_frame(env)

        loop_fps_unscored = timed_rate(loop_step, args.updates, device)
        window = window_rates(model, loop_step, state, args.updates, device) if args.window else {}
        log(f"probe scoring ({PROBE_FRAMES} frames and the plasticity metrics, every {EVAL_EVERY} steps in the loop)")
        probes = {"Breakout": probe_frames("Breakout", 0, PROBE_FRAMES)}
        scoring_s = 1 / timed_rate(lambda i: scoring(model, probes, "Breakout", state["results"]), 1, device, repeats=3)
        loop_fps = 1 / (1 / loop_fps_unscored + scoring_s / EVAL_EVERY)
        log("stages")
        stages = stage_times(model, env, state["frame"], logger, device, 30)
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
        **streams,
        "stages_ms": stages,
        "loop_fps_unscored": round(loop_fps_unscored, 2),
        "probe_scoring_ms": round(scoring_s * 1e3, 1),
        **window,
        "compile": args.compile,
        "cuda_graph": model.captured_step is not None,
        "config": {k: v for k, v in vars(config).items()},
    }


# quality ------------------------------------------------------------------------------------

def as_target(frame: np.ndarray) -> np.ndarray:
    """A frame as the model sees it: 224x224 RGB uint8."""
    return cv2.resize(frame, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)


def factorised_bound_bytes(codes: list[np.ndarray], alphabet: int) -> float:
    """Mean bytes per frame under the best fixed per-channel distribution of these very
    codes (their empirical one, its own cost not counted): no factorised prior, learned
    or not, codes them smaller. `codes` holds one (frames, channels, values) array per branch."""
    bits = 0.0
    for branch in codes:
        for channel in branch.transpose(1, 0, 2).reshape(branch.shape[1], -1):
            counts = np.bincount(channel, minlength=alphabet)
            p = counts[counts > 0] / channel.size
            bits -= float(channel.size * (p * np.log2(p)).sum())
    return bits / 8 / codes[0].shape[0]


@torch.no_grad()
def frozen_codec(model: StreamingAutoEncoder, targets: list[np.ndarray]) -> dict:
    """The model, frozen, as a codec on held-out frames: real bytes from `model.codec()`
    (and from a session without temporal coding, and the factorised bound, to compare),
    the PSNR of the decoded frames, what the receiver needs once, whether a second
    session decoded every frame bit-exactly, and the time per frame of each side."""
    decoder_parameters = sum(p.numel() for p in model.decoder.parameters())  # the histogram has none
    batch = torch.from_numpy(np.stack(targets)).permute(0, 3, 1, 2)
    if not model.config.latent_bits:
        return {"frozen_psnr": round(psnr_value(model.evaluate(batch).mean().item()), 2), "latent_bytes": None,
                "bpp": None, "intra_latent_bytes": None, "factorised_bound_bytes": None,
                "decoder_parameters": decoder_parameters, "decoder_bytes": 4 * decoder_parameters,
                "bit_exact": None, "encode_ms": None, "decode_ms": None}
    sender, receiver, intra = model.codec(), model.codec(), model.codec(temporal=False)
    sizes, intra_sizes, errors, codes = [], [], [], []
    encode_s = decode_s = 0.0
    bit_exact = True
    for target, x in zip(targets, batch):
        start = time.perf_counter()
        data, reconstruction = sender.encode(target)
        encoded = time.perf_counter()
        bit_exact &= torch.equal(receiver.decode(data), reconstruction)
        encode_s, decode_s = encode_s + encoded - start, decode_s + time.perf_counter() - encoded
        sizes.append(len(data))
        intra_sizes.append(len(intra.encode(target)[0]))
        errors.append((reconstruction[0].cpu() - x.float() / 255).square().mean().item())
        codes.append([p.reshape(p.shape[0], -1).copy() for p in sender.previous])  # this frame's codes
    latent_bytes = float(np.mean(sizes))
    branches = [np.stack([frame[b] for frame in codes]) for b in range(len(codes[0]))]
    return {
        "frozen_psnr": round(psnr_value(np.mean(errors)), 2),
        "latent_bytes": round(latent_bytes, 1),
        "bpp": round(latent_bytes * 8 / (FRAME_SIZE * FRAME_SIZE), 4),
        "intra_latent_bytes": round(float(np.mean(intra_sizes)), 1),
        "factorised_bound_bytes": round(factorised_bound_bytes(branches, 2**model.config.latent_bits), 1),
        "decoder_parameters": decoder_parameters,
        "decoder_bytes": 4 * decoder_parameters,
        "bit_exact": bit_exact,
        "encode_ms": round(1000 * encode_s / len(targets), 2),
        "decode_ms": round(1000 * decode_s / len(targets), 2),
    }


def build_learners(tasks: list[dict]):
    """Each task's learner, seeded as a lone run seeds it, and the learner that runs them:
    the single one, or all of them stacked (one update for every stream)."""
    models = []
    for task in tasks:
        torch.manual_seed(task["seed"])
        models.append(StreamingAutoEncoder(replace(ModelConfig(), **task["overrides"]), optimizer=task["optimizer"],
                                           lr=task["lr"]))
    return models, models[0] if len(models) == 1 else StreamingAutoEncoder.stack(models)


def quality_pack(tasks: list[dict]) -> list[dict]:
    """(game, optimizer) streams of one optimizer, learned together and scored
    prequentially, then each frozen and coded over its next `heldout` frames beside the
    named codecs; runs in its own process."""
    torch.set_num_threads(tasks[0]["threads"])
    frames_total = tasks[0]["frames"]
    models, learner = build_learners(tasks)
    envs, frames = zip(*(make_env(task["game"], env_seed(task["seed"], 0)) for task in tasks))
    frames = list(frames)
    tail_start = frames_total - max(1, frames_total // 10)
    mses = torch.empty(len(tasks), frames_total, dtype=torch.float64)  # in place: 0-d tensors in a list fragment the heap
    tail_frames = np.empty((len(tasks), frames_total - tail_start, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    label = "+".join(dict.fromkeys(task["game"] for task in tasks))
    bar = tqdm(total=frames_total, desc=f"{label}/{tasks[0]['optimizer']}", file=sys.stderr, mininterval=5,
               position=tasks[0]["index"])
    for i in range(frames_total):
        results = learner.update_params(frames if len(tasks) > 1 else frames[0])
        mses[:, i] = results["mse"]
        if i >= tail_start:
            pixels = (results["input"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
            tail_frames[:, i - tail_start] = pixels.numpy()
        frames = [next_frame(env) for env in envs]
        bar.update()
        if (i + 1) % 500 == 0:
            bar.set_postfix(psnr=f"{psnr_value(mses[:, i - 499 : i + 1].mean().item()):.2f}")
    bar.close()
    models = learner.unstack() if len(tasks) > 1 else models
    return [quality_row(task, model, env, frame, mses[k].tolist(), tail_frames[k], tail_start)
            for k, (task, model, env, frame) in enumerate(zip(tasks, models, envs, frames))]


def quality_row(task: dict, model: StreamingAutoEncoder, env, frame: np.ndarray, mses: list[float],
                tail_frames: np.ndarray, tail_start: int) -> dict:
    """A learned stream's row: its prequential PSNR and floor, then the frozen codec on the
    `heldout` frames that follow `frame`, beside the named codecs."""
    heldout = [as_target(frame)] + [as_target(next_frame(env)) for _ in range(task["heldout"] - 1)]
    codec = frozen_codec(model, heldout)
    budget = codec["latent_bytes"]
    return {
        "game": task["game"], "optimizer": task["optimizer"], "frames": task["frames"], "heldout": len(heldout),
        "psnr": round(psnr_value(np.mean(mses[tail_start:])), 2),
        "floor_psnr": round(floor_psnr(tail_frames), 2),
        **codec,
        **({**baseline_fields(heldout, budget), **bytes_at_psnr(heldout, codec["frozen_psnr"])}
           if task.get("baselines", True) else {}),
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
            ax.plot(np.arange(len(smooth)) + window, psnr(torch.from_numpy(smooth)).numpy(), label=row["optimizer"])
        row = next(r for r in rows if r["game"] == game)
        ax.axhline(row["floor_psnr"], color="gray", linestyle="--", label="mean-frame floor")
        if row.get("latent_bytes") is not None:
            ax.axhline(row["frozen_psnr"], color="tab:red", linestyle="-.",
                       label=f"frozen codec, {row['latent_bytes']:.0f} B")
        for name, style in (("webp", ":"), ("x264", "--"), ("jpeg", (0, (1, 3)))):
            if row.get(f"{name}_psnr") is not None:
                ax.axhline(row[f"{name}_psnr"], color="black", linestyle=style,
                           label=f"{name.upper()} at {row[f'{name}_bytes']:.0f} B")
        ax.set_title(game)
        ax.set_xlabel("frame")
        ax.set_ylabel("prequential PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def packs(tasks: list[dict], streams: int) -> list[list[dict]]:
    """The tasks in groups of up to `streams` that one stacked learner can run (same
    optimizer, learning rate and model overrides), each group's first task carrying its progress bar line."""
    groups: dict[tuple, list[dict]] = {}
    for task in tasks:
        key = (task["optimizer"], task["lr"], json.dumps(task["overrides"], sort_keys=True))
        groups.setdefault(key, []).append(task)
    chunks = [group[i : i + streams] for group in groups.values() for i in range(0, len(group), streams)]
    return [[{**task, "index": line} for task in chunk] for line, chunk in enumerate(chunks)]


def run_tasks(run, tasks: list[dict], args) -> list[dict]:
    """Every task's row, in the tasks' order: `run` takes a pack of tasks (`--streams` per
    pack) and returns their rows; packs run in turn, in `--jobs` processes, or as Ray tasks."""
    work = packs(tasks, args.streams)
    if args.ray is not None:
        done = run_on_ray(run, work, args.ray, tasks[0]["threads"])
    elif args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            done = list(pool.map(run, work))
    else:
        done = [run(pack) for pack in work]
    rows = {task["id"]: row for pack, pack_rows in zip(work, done) for task, row in zip(pack, pack_rows)}
    return [rows[task["id"]] for task in tasks]


def run_on_ray(run, work: list[list[dict]], address: str, threads: int) -> list[list[dict]]:
    """The packs as Ray tasks of `threads` CPUs each, on the cluster at `address` ("local":
    a cluster of this machine, started and stopped here). The code travels as the job's
    working directory; every node needs the project's dependencies installed."""
    # Ray would start workers through `uv run` when the driver was (without the ray extra); use this Python
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise SystemExit("bench.py: --ray needs Ray: uv sync --extra ray") from None
    here = Path(__file__).resolve().parent
    ray.init(address=address, runtime_env={"working_dir": str(here), "excludes": [".venv", "runs", ".git"]},
             include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        remote = ray.remote(num_cpus=threads)(run)
        return ray.get([remote.remote(pack) for pack in work])
    finally:
        ray.shutdown()


def bench_quality(args) -> dict:
    overrides = parse_overrides(args.set)
    tasks = [
        {"game": g, "optimizer": o, "frames": args.frames, "heldout": args.heldout, "seed": args.seed,
         "overrides": overrides, "lr": args.lr, "threads": args.threads, "id": i}
        for i, (g, o) in enumerate((g, o) for g in args.games for o in args.optimizers)
    ]
    rows = run_tasks(quality_pack, tasks, args)
    if args.plot:
        plot_quality(rows, args.plot)
        log(f"plot: {args.plot}")
    for row in rows:
        log(f"{row['game']:>14} {row['optimizer']:>13}: {row['psnr']:6.2f} dB  floor {row['floor_psnr']:6.2f}  "
            f"frozen {row['frozen_psnr']:6.2f} at {row['latent_bytes']} B  WebP {row.get('webp_psnr')}  "
            f"x264 {row.get('x264_psnr')}  lossless WebP {row.get('webp_lossless_bytes')} B")
        if not args.curves:
            del row["mse_curve"]
    return {"results": rows, "overrides": overrides}


# rate ---------------------------------------------------------------------------------------

RATE_POINTS = ("3:8", "3:6", "3:4", "3:2")  # latent_channels:latent_bits


def bd_rate(anchor: list[dict], test: list[dict]) -> float | None:
    """BD-rate (%) of `test` against `anchor` (negative: fewer bits at equal PSNR), by
    the bjontegaard package's Akima interpolation; None when the PSNR ranges do not
    overlap or a curve has fewer than two distinct points."""
    def points(curve):
        by_psnr = {}
        for p in sorted(curve, key=lambda p: p["bpp"]):
            by_psnr.setdefault(p["psnr"], p["bpp"])
        return [by_psnr[k] for k in sorted(by_psnr)], sorted(by_psnr)

    (rate_a, psnr_a), (rate_t, psnr_t) = points(anchor), points(test)
    if len(psnr_a) < 2 or len(psnr_t) < 2 or min(psnr_a[-1], psnr_t[-1]) <= max(psnr_a[0], psnr_t[0]):
        return None
    with warnings.catch_warnings():  # it warns on a small overlap; the interval it uses is the overlap
        warnings.simplefilter("ignore")
        value = bjontegaard.bd_rate(rate_a, psnr_a, rate_t, psnr_t, method="akima", require_matching_points=False)
    return round(float(value), 2) if np.isfinite(value) else None


def plot_rate(games: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(games), figsize=(4.2 * len(games), 3.8), squeeze=False)
    for ax, (game, entry) in zip(axes[0], games.items()):
        model = sorted(entry["model"], key=lambda p: p["bpp"])
        ax.plot([p["bpp"] for p in model], [p["psnr"] for p in model], "o-", color="tab:red", label="frozen codec")
        for name, style in (("webp", "s--"), ("jpeg", "^:"), ("x264", "d-.")):
            curve = entry["curves"][name]
            ax.plot([p["bpp"] for p in curve], [p["psnr"] for p in curve], style, ms=3, label=name.upper())
        ax.axvline(entry["webp_lossless_bpp"], color="gray", lw=0.8, label="lossless WebP")
        ax.set_xscale("log")
        ax.set_title(game)
        ax.set_xlabel("bits per pixel (224x224)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def rate_point(text: str) -> tuple[int, int]:
    """`CHANNELS:BITS`, as --points takes it."""
    channels, _, bits = text.partition(":")
    if not (channels.isdigit() and bits.isdigit() and int(channels) >= 1 and 1 <= int(bits) <= 16):
        raise argparse.ArgumentTypeError(f"a rate point is CHANNELS:BITS (channels >= 1, bits 1-16), got {text!r}")
    return int(channels), int(bits)


def bench_rate(args) -> dict:
    """Rate points of the frozen codec (one stream per latent_channels:latent_bits point
    and game) beside JPEG, WebP and x264 sweeps on the same held-out frames, with BD-rates."""
    points = args.points
    tasks = [
        {"game": g, "optimizer": DEFAULT_OPTIMIZER, "frames": args.frames, "heldout": args.heldout, "seed": args.seed,
         "overrides": {"latent_channels": c, "latent_bits": b}, "lr": None, "threads": args.threads, "id": i,
         "baselines": False}
        for i, (g, (c, b)) in enumerate((g, p) for g in args.games for p in points)
    ]
    rows = run_tasks(quality_pack, tasks, args)
    games = {}
    pixels = FRAME_SIZE * FRAME_SIZE
    for game in args.games:
        targets = [as_target(f) for f in collect_frames(game, args.frames + args.heldout, args.seed)[args.frames:]]
        log(f"{game}: baseline sweeps")
        model = [{"latent_channels": c, "latent_bits": b, "bpp": r["bpp"], "psnr": r["frozen_psnr"],
                  "latent_bytes": r["latent_bytes"], "prequential_psnr": r["psnr"]}
                 for r, (c, b) in zip((r for r in rows if r["game"] == game), points)]
        curves = rate_curves(targets)
        games[game] = {
            "model": model, "curves": curves,
            "webp_lossless_bpp": round(CODECS["webp_lossless"].size(targets) * 8 / pixels, 4),
            "bd_rate": {name: bd_rate(curve, model) for name, curve in curves.items()},
        }
        log(f"{game}: BD-rate vs " + ", ".join(f"{k} {v}" for k, v in games[game]["bd_rate"].items()))
    if args.plot:
        plot_rate(games, args.plot)
        log(f"plot: {args.plot}")
    return {"frames": args.frames, "heldout": args.heldout, "seed": args.seed, "games": games}


# continual ----------------------------------------------------------------------------------

def continual_pack(tasks: list[dict]) -> list[dict]:
    """(optimizer, seed) streams of one optimizer over the schedule, learned together, each
    one's probe sets scored at every segment end and every `eval_every` steps; runs in its
    own process."""
    torch.set_num_threads(tasks[0]["threads"])
    first = tasks[0]
    games, switch_every = first["games"], first["switch_every"]
    schedule = Schedule(tuple(games), switch_every)
    total = switch_every * len(games) * first["cycles"]
    models, learner = build_learners(tasks)
    views = models if len(tasks) == 1 else [learner.view(k) for k in range(len(tasks))]
    probes = [{g: probe_frames(g, task["seed"], task["probe_frames"]) for g in games} for task in tasks]

    def row(k: int) -> list[float]:
        scores = probe_psnrs(views[k], probes[k])
        return [round(scores[g], 3) for g in games]

    initial = [row(k) for k in range(len(tasks))]
    matrices, curves = [[] for _ in tasks], [[(0, scores)] for scores in initial]
    streams = [FrameStream(schedule, task["seed"]) for task in tasks]
    seeds = ",".join(str(task["seed"]) for task in tasks)
    bar = tqdm(total=total, desc=f"{first['optimizer']}/seed {seeds}", file=sys.stderr, mininterval=10,
               position=first["index"])
    for step in range(1, total + 1):
        frames, switched = zip(*(stream.frame_for(step) for stream in streams))
        if switched[0]:  # one schedule: every stream switches at the same step
            learner.forget_previous_frame()
        results = learner.update_params(list(frames) if len(tasks) > 1 else frames[0])
        scored = first["eval_every"] and step % first["eval_every"] == 0
        if step % switch_every == 0 or scored:
            for k in range(len(tasks)):
                scores = row(k)
                if step % switch_every == 0:
                    matrices[k].append(scores)
                if scored:
                    curves[k].append((step, scores))
        bar.update()
    bar.close()
    for stream in streams:
        stream.close()
    segment_games = [games.index(schedule.game_at(i * switch_every + 1)) for i in range(len(matrices[0]))]
    if len(tasks) > 1:
        models = learner.unstack()
    return [continual_row(task, model, probes[k], matrices[k], initial[k], curves[k], segment_games,
                          learner.stream_results(results, k) if len(tasks) > 1 else results, schedule.game_at(total))
            for k, (task, model) in enumerate(zip(tasks, models))]


def continual_row(task: dict, model: StreamingAutoEncoder, probes: dict, matrix: list, initial: list, curve: list,
                  segment_games: list[int], results: dict, last_game: str) -> dict:
    """A stream's row: its PSNR matrix, forgetting summary and plasticity at the end."""
    games = task["games"]
    floor = [round(floor_psnr(probes[g]), 3) for g in games]
    plasticity = plasticity_metrics(model, probes[last_game], results)
    summary = forgetting_summary(matrix, segment_games, floor, len(games))
    return {
        "optimizer": task["optimizer"], "seed": task["seed"], "games": games, "switch_every": task["switch_every"],
        "cycles": task["cycles"], "psnr_matrix": matrix, "initial": initial, "floor": floor,
        "forgetting": [None if f is None else round(f, 3) for f in summary["forgetting"]],
        "bwt": None if summary["bwt"] is None else round(summary["bwt"], 3),
        "segment_gain": [round(g, 3) for g in summary["segment_gain"]],
        "plasticity_trend": round(summary["plasticity_trend"], 3),
        "plasticity": {k.split("/", 1)[1]: round(v, 5) for k, v in plasticity.items()},
        "curve": curve,
    }


def plot_continual(rows: list[dict], path: str) -> None:
    """Every game's probe PSNR over the whole stream (mean over seeds), one panel per
    optimizer, each segment shaded in the colour of the game it trains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    games, switch_every = rows[0]["games"], rows[0]["switch_every"]
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(len(optimizers), 1, figsize=(11, 2.8 * len(optimizers)), squeeze=False, sharex=True)
    for ax, optimizer in zip(axes[:, 0], optimizers):
        runs = [r for r in rows if r["optimizer"] == optimizer]
        steps = [step for step, _ in runs[0]["curve"]]
        scores = np.mean([[scores for _, scores in r["curve"]] for r in runs], axis=0)
        for i in range(len(runs[0]["psnr_matrix"])):
            ax.axvspan(i * switch_every, (i + 1) * switch_every, color=colours[i % len(games)], alpha=0.08, lw=0)
        for g, game in enumerate(games):
            ax.plot(steps, scores[:, g], color=colours[g], label=game)
        ax.set_title(f"{optimizer} (mean of {len(runs)} seed{'s' * (len(runs) > 1)})", fontsize=10)
        ax.set_ylabel("probe PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=len(games), loc="lower right")
    axes[-1, 0].set_xlabel("step (shading: the game being trained)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def bench_continual(args) -> dict:
    overrides = parse_overrides(args.set)
    tasks = [
        {"games": args.games, "switch_every": args.switch_every, "cycles": args.cycles, "optimizer": o,
         "seed": s, "lr": args.lr, "overrides": overrides, "eval_every": args.eval_every,
         "probe_frames": args.probe_frames, "threads": args.threads, "id": i}
        for i, (o, s) in enumerate((o, s) for o in args.optimizers for s in args.seeds)
    ]
    rows = run_tasks(continual_pack, tasks, args)
    if args.plot:
        plot_continual(rows, args.plot)
        log(f"plot: {args.plot}")
    for row in rows:
        forgetting = " ".join(f"{g}:{f:.2f}" if f is not None else f"{g}:-" for g, f in zip(row["games"], row["forgetting"]))
        bwt = f"{row['bwt']:.2f}" if row["bwt"] is not None else "-"
        log(f"{row['optimizer']:>13} seed {row['seed']}: bwt {bwt}  trend {row['plasticity_trend']:.2f}  "
            f"forgetting {forgetting}")
        if not args.curves:
            del row["curve"]
    return {"results": rows, "overrides": overrides}


# soak ---------------------------------------------------------------------------------------

def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_soak(args) -> dict:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed", help="updates/s, loop FPS, FLOPs and the roofline")
    speed.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    speed.add_argument("--updates", type=int, default=60, help="updates per timing window")
    speed.add_argument("--optimizer", default=DEFAULT_OPTIMIZER, choices=list(OPTIMIZERS))
    speed.add_argument("--compile", action="store_true", help="torch.compile network and loss (warm-up compiles)")
    speed.add_argument("--cuda-graph", default="auto", choices=["auto", "on", "off"],
                       help="capture each update as one CUDA graph (auto: with --compile on CUDA)")
    speed.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ModelConfig overrides")
    speed.add_argument("--window", action="store_true", help="also time the loop with the real window on $DISPLAY")
    speed.add_argument("--streams", type=positive_int, default=0, metavar="K",
                       help="time K stacked streams against the single learner (update_fps and the FLOPs are "
                       "then the K-stream update's; the loop and stages stay the single learner's)")
    speed.add_argument("--pairs", type=positive_int, default=3, help="alternating windows per learner with --streams")
    quality = sub.add_parser("quality", help="prequential PSNR against the mean-frame floor and JPEG")
    quality.add_argument("--frames", type=int, required=True)
    quality.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES))
    quality.add_argument("--optimizers", nargs="+", default=[DEFAULT_OPTIMIZER], choices=list(OPTIMIZERS))
    quality.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--heldout", type=int, default=HELDOUT, help="frames coded by the frozen model after --frames")
    quality.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ModelConfig overrides")
    quality.add_argument("--plot", help="PNG path for the PSNR-over-frames plot")
    quality.add_argument("--curves", action="store_true", help="keep per-frame MSE curves in the JSON")
    rate = sub.add_parser("rate", help="rate-distortion points, JPEG/WebP/x264 curves and BD-rates")
    rate.add_argument("--frames", type=int, required=True, help="frames learned before the codec is frozen")
    rate.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES))
    rate.add_argument("--points", nargs="+", type=rate_point, default=[rate_point(p) for p in RATE_POINTS],
                      metavar="CHANNELS:BITS",
                      help="latent_channels:latent_bits of each rate point")
    rate.add_argument("--heldout", type=int, default=HELDOUT, help="frames coded by the frozen model")
    rate.add_argument("--seed", type=int, default=0)
    rate.add_argument("--plot", help="PNG path for the rate-distortion plot")
    continual = sub.add_parser("continual", help="forgetting and plasticity over a schedule of games")
    continual.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES))
    continual.add_argument("--switch-every", type=int, required=True, help="steps per game")
    continual.add_argument("--cycles", type=int, default=2, help="passes over the list of games")
    continual.add_argument("--optimizers", nargs="+", default=[DEFAULT_OPTIMIZER], choices=list(OPTIMIZERS))
    continual.add_argument("--seeds", nargs="+", type=int, default=[0])
    continual.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    continual.add_argument("--eval-every", type=int, default=500, help="steps between probe scorings for the plot "
                           "(0: only at segment ends)")
    continual.add_argument("--probe-frames", type=int, default=PROBE_FRAMES, help="held-out probe frames per game")
    continual.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ModelConfig overrides")
    continual.add_argument("--plot", help="PNG path for the probe-PSNR-over-the-stream plot")
    continual.add_argument("--curves", action="store_true", help="keep the probe PSNR curves in the JSON")
    soak = sub.add_parser("soak", help="resident memory and TensorBoard disk use over a long run")
    soak.add_argument("--frames", type=int, required=True)
    soak.add_argument("--game", default="Breakout")
    soak.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    for p in (quality, rate, continual):
        p.add_argument("--streams", type=positive_int, default=1, metavar="K",
                       help="streams per stacked learner: tasks of one optimizer learn K at a time in one update")
        p.add_argument("--jobs", type=positive_int, default=1, help="stacked learners run in parallel processes")
        p.add_argument("--threads", type=positive_int, default=torch.get_num_threads(),
                       help="torch threads per process (per Ray task with --ray)")
        p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="run the stacked learners as Ray tasks on the cluster at ADDRESS (auto, ray://host:port); "
                       "alone: on a local cluster")
    for p in (speed, quality, rate, continual, soak):
        p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = parser.parse_args()
    commands = {"speed": bench_speed, "quality": bench_quality, "rate": bench_rate, "continual": bench_continual,
                "soak": bench_soak}
    result = commands[args.command](args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

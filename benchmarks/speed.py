"""`bench.py speed`: updates per second, loop FPS, FLOPs and the roofline, stage times,
and optionally K stacked streams and the loop with the real window."""

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from autoencoder import StreamingAutoEncoder
from benchmarks.common import (
    add_method_option_argument,
    add_set_argument,
    log,
    method_options,
    one_game,
    parse_overrides,
    positive_int,
)
from continual import EVAL_EVERY, PROBE_FRAMES, scoring
from loop import FrameLoop
from methods import METHODS
from model import ModelConfig
from observers import LiveView, StageTimes, TensorBoardLog
from optim import DEFAULT_OPTIMIZER, OPTIMIZERS
from stream import DEFAULT_GAMES, collect_frames, env_seed, make_env, next_frame, probe_frames
from utils import preprocess_frame
from viewer import DISPLAY_FPS, display_usable

NAME = "speed"
HELP = "updates/s, loop FPS, FLOPs and the roofline"


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--updates", type=int, default=60, help="updates per timing window")
    parser.add_argument("--optimizer", default=DEFAULT_OPTIMIZER, choices=list(OPTIMIZERS))
    parser.add_argument("--compile", action="store_true", help="torch.compile network and loss (warm-up compiles)")
    parser.add_argument(
        "--cuda-graph",
        default="auto",
        choices=["auto", "on", "off"],
        help="capture each update as one CUDA graph (auto: with --compile on CUDA)",
    )
    add_set_argument(parser)
    parser.add_argument("--window", action="store_true", help="also time the loop with the real window on $DISPLAY")
    parser.add_argument(
        "--streams",
        type=positive_int,
        default=0,
        metavar="K",
        help="time K stacked streams against the single learner (update_fps and the FLOPs are "
        "then the K-stream update's; the loop and stages stay the single learner's)",
    )
    parser.add_argument(
        "--method",
        choices=list(METHODS),
        default="none",
        help="time this method's update against the plain one in alternating windows",
    )
    add_method_option_argument(parser)
    parser.add_argument(
        "--pairs", type=positive_int, default=3, help="alternating windows per learner with --streams or --method"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


STAGES = {  # stages_ms's name of each of StageTimes' stages
    "env": "frames",
    "preprocess": "preprocess",
    "forward": "forward",
    "backward": "backward",
    "optimizer": "optimizer",
    "logging": "observers",
}


def stage_times(model: StreamingAutoEncoder, folder: str, device: torch.device, count: int) -> dict:
    """Median milliseconds of each stage of the live loop (a loop of its own, with
    TensorBoard), synchronised between stages.

    update_params reports its own stages through `stage_marks`; they run eagerly
    (compiled network and loss included) even where update_params replays a CUDA graph:
    a graph cannot be timed by parts.
    """
    stages = StageTimes(sync=lambda: sync(device))
    FrameLoop(model, one_game("Breakout", 0), [TensorBoardLog(Path(folder)), stages]).run(count)
    return {name: round(statistics.median(stages.samples[stage]), 3) for name, stage in STAGES.items()}


def window_rates(loop: FrameLoop, updates: int, device: torch.device, pairs: int = 5) -> dict:
    """The loop with the real window on the current display (redrawn at most DISPLAY_FPS times a
    second) against the same loop headless, in alternating windows: (window_loop_fps, window_ratio)."""
    if not display_usable():
        raise SystemExit("bench.py speed --window: no usable display (set DISPLAY to a running X server)")
    view = LiveView(loop.sources[0].schedule, window=True, display_fps=DISPLAY_FPS, steps=0)
    headless_observers, window_observers = loop.observers, [*loop.observers, view]
    headless, windowed = [], []
    for _ in range(pairs):
        loop.observers = headless_observers
        headless.append(timed_rate(lambda i: loop.advance(), updates, device, repeats=1))
        loop.observers = window_observers
        windowed.append(timed_rate(lambda i: loop.advance(), updates, device, repeats=1))
    loop.observers = headless_observers
    view.on_end(loop)
    window_fps, headless_fps = statistics.median(windowed), statistics.median(headless)
    return {
        "window_loop_fps": round(window_fps, 2),
        "window_headless_loop_fps": round(headless_fps, 2),
        "window_ratio": round(window_fps / headless_fps, 3),
        "window_redraws": view.viewer.redraws,
    }


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


def stream_rates(
    args, config: ModelConfig, device: torch.device, single: StreamingAutoEncoder, frames: list[np.ndarray]
) -> dict:
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


def method_rates(
    args, config: ModelConfig, device: torch.device, plain: StreamingAutoEncoder, frames: list[np.ndarray]
) -> dict:
    """The learner with `--method` against the plain one, in alternating windows."""
    options = method_options([args.method], args.method_option)[args.method]
    torch.manual_seed(0)
    learner = StreamingAutoEncoder(
        config, optimizer=args.optimizer, device=device, method=args.method, method_options=options
    )
    for i in range(3):
        learner.update_params(frames[i])
    plain_fps, method_fps = [], []
    for _ in range(args.pairs):
        plain_fps.append(timed_rate(lambda i: plain.update_params(frames[i % len(frames)]), args.updates, device, 1))
        method_fps.append(timed_rate(lambda i: learner.update_params(frames[i % len(frames)]), args.updates, device, 1))
    return {
        "method": args.method,
        "method_options": options,
        "method_update_fps": round(statistics.median(method_fps), 2),
        "method_ratio": round(statistics.median(m / p for m, p in zip(method_fps, plain_fps)), 3),
    }


def run(args) -> dict:
    """The default model's update rate, the live loop's rate and stages, its FLOPs and the
    matmul roofline on the same device and threads."""
    device = torch.device(args.device)
    config = replace(ModelConfig(), **parse_overrides(args.set))
    frames = collect_frames("Breakout", 64)
    torch.manual_seed(0)
    cuda_graph = {"auto": None, "on": True, "off": False}[args.cuda_graph]
    if cuda_graph and device.type != "cuda":
        raise SystemExit("bench.py: --cuda-graph on needs --device cuda")
    model = StreamingAutoEncoder(
        config, optimizer=args.optimizer, device=device, compile=args.compile, cuda_graph=cuda_graph
    )
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

    method = {}
    if args.method != "none":
        log(f"method {args.method} against the plain update, {args.pairs} pairs of windows")
        method = method_rates(args, config, device, model, frames)

    log("env")
    env, _ = make_env("Breakout", env_seed(0, 0))
    env_fps = timed_rate(lambda i: next_frame(env), 500, device)
    env.close()

    log("loop (env + preprocess + update + TensorBoard at the default cadence)")
    with tempfile.TemporaryDirectory() as folder:
        loop = FrameLoop(model, one_game("Breakout", 0), [TensorBoardLog(Path(folder))])
        loop.start()
        loop.advance()  # not timed: entering the game makes its env, and the first step logs images
        loop_fps_unscored = timed_rate(lambda i: loop.advance(), args.updates, device)
        window = window_rates(loop, args.updates, device) if args.window else {}
        log(f"probe scoring ({PROBE_FRAMES} frames and the plasticity metrics, every {EVAL_EVERY} steps in the loop)")
        probes = {"Breakout": probe_frames("Breakout", 0, PROBE_FRAMES)}
        scoring_s = 1 / timed_rate(lambda i: scoring(model, probes, "Breakout", loop.results), 1, device, repeats=3)
        loop_fps = 1 / (1 / loop_fps_unscored + scoring_s / EVAL_EVERY)
        loop.end()
        log("stages")
        stages = stage_times(model, folder, device, 30)
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
        **method,
        "stages_ms": stages,
        "loop_fps_unscored": round(loop_fps_unscored, 2),
        "probe_scoring_ms": round(scoring_s * 1e3, 1),
        **window,
        "compile": args.compile,
        "cuda_graph": model.captured_step is not None,
        "config": {k: v for k, v in vars(config).items()},
    }

"""`bench.py continual`: forgetting and plasticity over a schedule of games, one row per
(optimizer, seed), with a plot of every game's probe PSNR over the whole stream."""

from dataclasses import dataclass

import numpy as np
import torch

from autoencoder import StreamingAutoEncoder
from benchmarks.common import (
    Task,
    add_method_arguments,
    add_pack_arguments,
    add_set_argument,
    build_learner,
    log,
    method_options,
    parse_overrides,
    run_tasks,
)
from continual import PROBE_FRAMES, forgetting_summary, plasticity_metrics
from loop import FrameLoop
from metrics import floor_psnr
from observers import ProbeScoring, ProgressBar
from optim import DEFAULT_OPTIMIZER, OPTIMIZERS
from stream import DEFAULT_GAMES, FrameStream, Schedule, probe_frames

NAME = "continual"
HELP = "forgetting and plasticity over a schedule of games"


def add_arguments(parser) -> None:
    parser.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES))
    parser.add_argument("--switch-every", type=int, required=True, help="steps per game")
    parser.add_argument("--cycles", type=int, default=2, help="passes over the list of games")
    parser.add_argument("--optimizers", nargs="+", default=[DEFAULT_OPTIMIZER], choices=list(OPTIMIZERS))
    add_method_arguments(parser)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    parser.add_argument(
        "--eval-every",
        type=int,
        default=500,
        help="steps between probe scorings for the plot (0: only at segment ends)",
    )
    parser.add_argument("--probe-frames", type=int, default=PROBE_FRAMES, help="held-out probe frames per game")
    add_set_argument(parser)
    parser.add_argument("--plot", help="PNG path for the probe-PSNR-over-the-stream plot")
    parser.add_argument("--curves", action="store_true", help="keep the probe PSNR curves in the JSON")
    add_pack_arguments(parser)


@dataclass(frozen=True, kw_only=True)
class ContinualTask(Task):
    """One stream over the schedule: `games` in order, `switch_every` steps each, `cycles` times."""

    games: list[str]
    switch_every: int
    cycles: int
    eval_every: int  # steps between probe scorings for the curve (0: only at segment ends)
    probe_frames: int


def run_pack(tasks: list[ContinualTask]) -> list[dict]:
    """(optimizer, seed) streams of one optimizer over the schedule, learned together, each
    one's probe sets scored at every segment end and every `eval_every` steps; runs in its
    own process."""
    torch.set_num_threads(tasks[0].threads)
    first = tasks[0]
    games, switch_every, eval_every = first.games, first.switch_every, first.eval_every
    schedule = Schedule(tuple(games), switch_every)
    total = switch_every * len(games) * first.cycles
    learner = build_learner(tasks)
    probes = [{g: probe_frames(g, task.seed, task.probe_frames) for g in games} for task in tasks]
    scorings = [
        ProbeScoring(
            probes[k], schedule, eval_every, floors=False, stream=k, plasticity=False, segment_ends=True, keep=True
        )
        for k in range(len(tasks))
    ]
    seeds = ",".join(str(task.seed) for task in tasks)
    bar = ProgressBar(total, f"{first.optimizer}/seed {seeds}", mininterval=10, position=first.bar_line)
    loop = FrameLoop(learner, [FrameStream(schedule, task.seed) for task in tasks], [*scorings, bar])
    loop.run(total)

    def row(scores: dict[str, float]) -> list[float]:
        return [round(scores[f"probe/psnr/{g}"], 3) for g in games]

    rows = []
    for k, (task, model) in enumerate(zip(tasks, learner.unstack())):
        history = [(step, row(scores)) for step, scores in scorings[k].history]
        initial = history[0][1]
        matrix = [scores for step, scores in history if step and step % switch_every == 0]
        curve = [(0, initial)] + [
            (step, scores) for step, scores in history if step and eval_every and step % eval_every == 0
        ]
        segment_games = [games.index(schedule.game_at(i * switch_every + 1)) for i in range(len(matrix))]
        results = learner.stream_results(loop.results, k)
        rows.append(
            stream_row(task, model, probes[k], matrix, initial, curve, segment_games, results, schedule.game_at(total))
        )
    return rows


def stream_row(
    task: ContinualTask,
    model: StreamingAutoEncoder,
    probes: dict,
    matrix: list,
    initial: list,
    curve: list,
    segment_games: list[int],
    results: dict,
    last_game: str,
) -> dict:
    """A stream's row: its PSNR matrix, forgetting summary and plasticity at the end."""
    games = task.games
    floor = [round(floor_psnr(probes[g]), 3) for g in games]
    plasticity = plasticity_metrics(model, probes[last_game], results)
    summary = forgetting_summary(matrix, segment_games, floor, len(games))
    return {
        "optimizer": task.optimizer,
        "method": task.method,
        "method_options": task.method_options,
        "seed": task.seed,
        "games": games,
        "switch_every": task.switch_every,
        "cycles": task.cycles,
        "psnr_matrix": matrix,
        "initial": initial,
        "floor": floor,
        "forgetting": [None if f is None else round(f, 3) for f in summary["forgetting"]],
        "bwt": None if summary["bwt"] is None else round(summary["bwt"], 3),
        "segment_gain": [round(g, 3) for g in summary["segment_gain"]],
        "plasticity_trend": round(summary["plasticity_trend"], 3),
        "plasticity": {k.split("/", 1)[1]: round(v, 5) for k, v in plasticity.items()},
        "curve": curve,
    }


def run_label(row: dict) -> str:
    return row["optimizer"] if row["method"] == "none" else f"{row['optimizer']} + {row['method']}"


def plot(rows: list[dict], path: str) -> None:
    """Every game's probe PSNR over the whole stream (mean over seeds), one panel per
    optimizer and method, each segment shaded in the colour of the game it trains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(run_label(r) for r in rows))
    games, switch_every = rows[0]["games"], rows[0]["switch_every"]
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(len(labels), 1, figsize=(11, 2.8 * len(labels)), squeeze=False, sharex=True)
    for ax, label in zip(axes[:, 0], labels):
        runs = [r for r in rows if run_label(r) == label]
        steps = [step for step, _ in runs[0]["curve"]]
        scores = np.mean([[scores for _, scores in r["curve"]] for r in runs], axis=0)
        for i in range(len(runs[0]["psnr_matrix"])):
            ax.axvspan(i * switch_every, (i + 1) * switch_every, color=colours[i % len(games)], alpha=0.08, lw=0)
        for g, game in enumerate(games):
            ax.plot(steps, scores[:, g], color=colours[g], label=game)
        ax.set_title(f"{label} (mean of {len(runs)} seed{'s' * (len(runs) > 1)})", fontsize=10)
        ax.set_ylabel("probe PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=len(games), loc="lower right")
    axes[-1, 0].set_xlabel("step (shading: the game being trained)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(args) -> dict:
    """One row per (optimizer, seed), packed into stacked learners by `--streams`."""
    overrides = parse_overrides(args.set)
    options = method_options(args.methods, args.method_option)
    runs = [(o, m, s) for o in args.optimizers for m in args.methods for s in args.seeds]
    tasks = [
        ContinualTask(
            id=i,
            games=args.games,
            switch_every=args.switch_every,
            cycles=args.cycles,
            optimizer=o,
            method=m,
            method_options=options[m],
            seed=s,
            lr=args.lr,
            overrides=overrides,
            eval_every=args.eval_every,
            probe_frames=args.probe_frames,
            threads=args.threads,
        )
        for i, (o, m, s) in enumerate(runs)
    ]
    rows = run_tasks(run_pack, tasks, args)
    if args.plot:
        plot(rows, args.plot)
        log(f"plot: {args.plot}")
    for row in rows:
        forgetting = " ".join(
            f"{g}:{f:.2f}" if f is not None else f"{g}:-" for g, f in zip(row["games"], row["forgetting"])
        )
        bwt = f"{row['bwt']:.2f}" if row["bwt"] is not None else "-"
        log(
            f"{row['optimizer']:>13} {row['method']:>14} seed {row['seed']}: bwt {bwt}  trend {row['plasticity_trend']:.2f}  "
            f"forgetting {forgetting}"
        )
        if not args.curves:
            del row["curve"]
    return {"results": rows, "overrides": overrides}

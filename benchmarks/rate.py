"""`bench.py rate`: rate points of the frozen codec (latent channels and bits), the lossy
baselines' rate curves on the same held-out frames, and BD-rates against each."""

import argparse
import warnings

import bjontegaard
import numpy as np

from baselines import CODECS, rate_curves
from benchmarks.common import add_pack_arguments, log, run_tasks
from benchmarks.quality import HELDOUT, QualityTask, as_target
from benchmarks.quality import run_pack as quality_pack
from optim import DEFAULT_OPTIMIZER
from stream import DEFAULT_GAMES, collect_frames
from utils import FRAME_SIZE

NAME = "rate"
HELP = "rate-distortion points, JPEG/WebP/x264 curves and BD-rates"
RATE_POINTS = ("3:8", "3:6", "3:4", "3:2")  # latent_channels:latent_bits
CURVE_STYLES = ("^:", "s--", "d-.", "v-", "x--")  # the lossy baselines' curves, in turn


def rate_point(text: str) -> tuple[int, int]:
    """`CHANNELS:BITS`, as --points takes it."""
    channels, _, bits = text.partition(":")
    if not (channels.isdigit() and bits.isdigit() and int(channels) >= 1 and 1 <= int(bits) <= 16):
        raise argparse.ArgumentTypeError(f"a rate point is CHANNELS:BITS (channels >= 1, bits 1-16), got {text!r}")
    return int(channels), int(bits)


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, required=True, help="frames learned before the codec is frozen")
    parser.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES))
    parser.add_argument(
        "--points",
        nargs="+",
        type=rate_point,
        default=[rate_point(p) for p in RATE_POINTS],
        metavar="CHANNELS:BITS",
        help="latent_channels:latent_bits of each rate point",
    )
    parser.add_argument("--heldout", type=int, default=HELDOUT, help="frames coded by the frozen model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="PNG path for the rate-distortion plot")
    add_pack_arguments(parser)


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


def plot(games: dict, path: str) -> None:
    """PSNR against bits per pixel per game: the frozen codec's points and the baselines' curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(games), figsize=(4.2 * len(games), 3.8), squeeze=False)
    for ax, (game, entry) in zip(axes[0], games.items()):
        model = sorted(entry["model"], key=lambda p: p["bpp"])
        ax.plot([p["bpp"] for p in model], [p["psnr"] for p in model], "o-", color="tab:red", label="frozen codec")
        for (name, curve), style in zip(entry["curves"].items(), CURVE_STYLES):
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


def run(args) -> dict:
    """Rate points of the frozen codec (one stream per latent_channels:latent_bits point
    and game) beside the lossy baselines' sweeps on the same held-out frames, with BD-rates."""
    points = args.points
    tasks = [
        QualityTask(
            id=i,
            game=g,
            optimizer=DEFAULT_OPTIMIZER,
            frames=args.frames,
            heldout=args.heldout,
            seed=args.seed,
            overrides={"latent_channels": c, "latent_bits": b},
            lr=None,
            threads=args.threads,
            baselines=False,
        )
        for i, (g, (c, b)) in enumerate((g, p) for g in args.games for p in points)
    ]
    rows = run_tasks(quality_pack, tasks, args)
    games = {}
    pixels = FRAME_SIZE * FRAME_SIZE
    for game in args.games:
        targets = [as_target(f) for f in collect_frames(game, args.frames + args.heldout, args.seed)[args.frames :]]
        log(f"{game}: baseline sweeps")
        model = [
            {
                "latent_channels": c,
                "latent_bits": b,
                "bpp": r["bpp"],
                "psnr": r["frozen_psnr"],
                "latent_bytes": r["latent_bytes"],
                "prequential_psnr": r["psnr"],
            }
            for r, (c, b) in zip((r for r in rows if r["game"] == game), points)
        ]
        curves = rate_curves(targets)
        games[game] = {
            "model": model,
            "curves": curves,
            "webp_lossless_bpp": round(CODECS["webp_lossless"].size(targets) * 8 / pixels, 4),
            "bd_rate": {name: bd_rate(curve, model) for name, curve in curves.items()},
        }
        log(f"{game}: BD-rate vs " + ", ".join(f"{k} {v}" for k, v in games[game]["bd_rate"].items()))
    if args.plot:
        plot(games, args.plot)
        log(f"plot: {args.plot}")
    return {"frames": args.frames, "heldout": args.heldout, "seed": args.seed, "games": games}

"""`bench.py quality`: prequential PSNR against the mean-frame floor, then the model frozen
as a codec on held-out frames beside the registered baseline codecs."""

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from autoencoder import StreamingAutoEncoder
from baselines import CODECS, baseline_fields, bytes_at_psnr
from benchmarks.common import (
    Task,
    add_method_arguments,
    add_pack_arguments,
    add_set_argument,
    build_learner,
    log,
    method_options,
    one_game,
    parse_overrides,
    run_tasks,
)
from loop import FrameLoop
from metrics import floor_psnr, psnr, psnr_value
from observers import HeldOutFrames, PrequentialRecord, ProgressBar
from optim import DEFAULT_OPTIMIZER, OPTIMIZERS
from stream import DEFAULT_GAMES
from utils import FRAME_SIZE

NAME = "quality"
HELP = "prequential PSNR against the mean-frame floor and JPEG"
HELDOUT = 300  # default frames coded by the frozen model
BASELINE_STYLES = ((0, (1, 3)), ":", "--", "-.", (0, (3, 1, 1, 1)))  # the lossy baselines' lines, in turn


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES))
    parser.add_argument("--optimizers", nargs="+", default=[DEFAULT_OPTIMIZER], choices=list(OPTIMIZERS))
    add_method_arguments(parser)
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=HELDOUT, help="frames coded by the frozen model after --frames")
    add_set_argument(parser)
    parser.add_argument("--plot", help="PNG path for the PSNR-over-frames plot")
    parser.add_argument("--curves", action="store_true", help="keep per-frame MSE curves in the JSON")
    add_pack_arguments(parser)


@dataclass(frozen=True, kw_only=True)
class QualityTask(Task):
    """One game learned for `frames` frames, then frozen and coded over the next `heldout`."""

    game: str
    frames: int
    heldout: int
    baselines: bool = True  # also code the held-out frames with every baseline codec


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
        return {
            "frozen_psnr": round(psnr_value(model.evaluate(batch).mean().item()), 2),
            "latent_bytes": None,
            "bpp": None,
            "intra_latent_bytes": None,
            "factorised_bound_bytes": None,
            "decoder_parameters": decoder_parameters,
            "decoder_bytes": 4 * decoder_parameters,
            "bit_exact": None,
            "encode_ms": None,
            "decode_ms": None,
        }
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


def run_pack(tasks: list[QualityTask]) -> list[dict]:
    """(game, optimizer) streams of one optimizer, learned together and scored
    prequentially, then each frozen and coded over its next `heldout` frames beside the
    baseline codecs; runs in its own process."""
    torch.set_num_threads(tasks[0].threads)
    frames = tasks[0].frames
    record = PrequentialRecord(len(tasks), frames, tail=max(1, frames // 10))
    heldout = HeldOutFrames(max(1, tasks[0].heldout), as_target)
    label = "+".join(dict.fromkeys(task.game for task in tasks))
    bar = ProgressBar(
        frames,
        f"{label}/{tasks[0].optimizer}",
        mininterval=5,
        position=tasks[0].bar_line,
        postfix=lambda step: {"psnr": f"{psnr_value(record.mses[:, step - 500 : step].mean().item()):.2f}"},
        every=500,
    )
    learner = build_learner(tasks)
    FrameLoop(learner, [one_game(task.game, task.seed) for task in tasks], [record, heldout, bar]).run(frames)
    return [
        stream_row(task, model, heldout.frames[k], record.mses[k].tolist(), record.tail_frames[k], record.tail_start)
        for k, (task, model) in enumerate(zip(tasks, learner.unstack()))
    ]


def stream_row(
    task: QualityTask,
    model: StreamingAutoEncoder,
    heldout: list[np.ndarray],
    mses: list[float],
    tail_frames: np.ndarray,
    tail_start: int,
) -> dict:
    """A learned stream's row: its prequential PSNR and floor, then the frozen codec on the
    `heldout` frames that followed its last learned one, beside the baseline codecs."""
    codec = frozen_codec(model, heldout)
    budget = codec["latent_bytes"]
    return {
        "game": task.game,
        "optimizer": task.optimizer,
        "method": task.method,
        "frames": task.frames,
        "heldout": len(heldout),
        "psnr": round(psnr_value(np.mean(mses[tail_start:])), 2),
        "floor_psnr": round(floor_psnr(tail_frames), 2),
        **codec,
        **(
            {**baseline_fields(heldout, budget), **bytes_at_psnr(heldout, codec["frozen_psnr"])}
            if task.baselines
            else {}
        ),
        "mse_curve": mses,
    }


def plot(rows: list[dict], path: str) -> None:
    """PSNR over frames per game (smoothed), with the floor, the frozen codec and the lossy baselines."""
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
            ax.axhline(
                row["frozen_psnr"], color="tab:red", linestyle="-.", label=f"frozen codec, {row['latent_bytes']:.0f} B"
            )
        for name, style in zip((c.name for c in CODECS.values() if not c.lossless), BASELINE_STYLES):
            if row.get(f"{name}_psnr") is not None:
                ax.axhline(
                    row[f"{name}_psnr"],
                    color="black",
                    linestyle=style,
                    label=f"{name.upper()} at {row[f'{name}_bytes']:.0f} B",
                )
        ax.set_title(game)
        ax.set_xlabel("frame")
        ax.set_ylabel("prequential PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(args) -> dict:
    """One row per (game, optimizer, method), packed into stacked learners by `--streams`."""
    overrides = parse_overrides(args.set)
    options = method_options(args.methods, args.method_option)
    runs = [(g, o, m) for g in args.games for o in args.optimizers for m in args.methods]
    tasks = [
        QualityTask(
            id=i,
            game=g,
            optimizer=o,
            method=m,
            method_options=options[m],
            frames=args.frames,
            heldout=args.heldout,
            seed=args.seed,
            overrides=overrides,
            lr=args.lr,
            threads=args.threads,
        )
        for i, (g, o, m) in enumerate(runs)
    ]
    rows = run_tasks(run_pack, tasks, args)
    if args.plot:
        plot(rows, args.plot)
        log(f"plot: {args.plot}")
    for row in rows:
        log(
            f"{row['game']:>14} {row['optimizer']:>13} {row['method']:>14}: {row['psnr']:6.2f} dB  floor {row['floor_psnr']:6.2f}  "
            f"frozen {row['frozen_psnr']:6.2f} at {row['latent_bytes']} B  WebP {row.get('webp_psnr')}  "
            f"x264 {row.get('x264_psnr')}  lossless WebP {row.get('webp_lossless_bytes')} B"
        )
        if not args.curves:
            del row["mse_curve"]
    return {"results": rows, "overrides": overrides}

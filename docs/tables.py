"""Markdown tables and plots for docs/BENCHMARKS.md from the JSON in docs/results/.

    uv run docs/tables.py

Draws docs/quality_20k.png (float latents on the five games) and docs/optimizers_5k.png
(the optimizers side by side): prequential PSNR over frames, with each game's
mean-frame floor and JPEG line (the streams of one game share their frames). The
continual, quality-5k and rate plots are drawn by `bench.py` itself.
"""

import json
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
RESULTS = DOCS / "results"
sys.path.insert(0, str(DOCS.parent))
GAMES = ("Breakout", "Assault", "SpaceInvaders", "Pacman", "Asteroids")
CANDIDATES = [  # (label, quality run, candidate name in docs/cpu_profile.py)
    (
        "**default** (one 3x3 fusion, encoder 8,8, layer norm in the decoder, change detector, reachable sigmoid)",
        "default_3k_seed0",
        "default",
    ),
    ("+ encoder layer norm (`encoder_layer_norm=True`)", "encoder_layer_norm_3k_seed0", "+ encoder layer norm"),
    (
        "branch heads, encoder 8,16 (`branch_heads=True encoder_widths=8,16`) *",
        "candidate_previous_default_3k",
        "branch heads, encoder 8,16, encoder layer norm",
    ),
    ("+ branch heads (`branch_heads=True`) *", "candidate_branch_heads_3k", "branch heads"),
    ("encoder 8,16 (`encoder_widths=8,16`) *", "candidate_encoder_8_16_3k", "encoder 8,16"),
    ("8 channels at 56x56 (`upsampled_width=8`) *", "candidate_upsampled_8_3k", "upsampled width 8"),
    ("+ residual *", "ablation_residual_3k", "+ residual"),
    ("+ transformer *", "ablation_transformer_3k", "+ transformer"),
    ("- layer norm (everywhere) *", "ablation_no_layer_norm_3k", "- layer norm"),
    ("- change detector *", "ablation_no_change_detector_3k", "- change detector"),
    ("plain sigmoid head (`output_margin=0`) *", "ablation_plain_sigmoid_3k", "plain sigmoid"),
]
SEEDS = (0, 1, 2)


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() and path.read_text().strip() else None


def rows(name: str) -> list[dict]:
    return (load(name) or {"results": []})["results"]


def quality_table(results: list[dict]) -> str:
    lines = [
        "| game | optimizer | frames | PSNR (dB) | floor (dB) | PSNR - floor | JPEG at 4,495 B (dB) | PSNR - JPEG |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['game']} | {r['optimizer']} | {r['frames']:,} | {r['psnr']:.2f} | {r['floor_psnr']:.2f} | "
            f"{r['psnr'] - r['floor_psnr']:+.2f} | {r['jpeg_psnr']:.2f} | {r['psnr'] - r['jpeg_psnr']:+.2f} |"
        )
    return "\n".join(lines)


def fmt(value, spec: str = ".2f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def codec_table(results: list[dict]) -> str:
    """The frozen codec on the held-out frames beside the named codecs at its bytes."""
    lines = [
        "| game | prequential PSNR | floor | frozen PSNR | latent bytes | bpp | WebP at those bytes | JPEG | x264 | "
        "PNG bytes | lossless WebP bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['game']} | {r['psnr']:.2f} | {r['floor_psnr']:.2f} | **{r['frozen_psnr']:.2f}** | "
            f"{r['latent_bytes']:,.0f} | {r['bpp']:.3f} | {fmt(r['webp_psnr'])} | {fmt(r['jpeg_psnr'])} | "
            f"{fmt(r['x264_psnr'])} | {r['png_bytes']:,.0f} | {r['webp_lossless_bytes']:,.0f} |"
        )
    return "\n".join(lines)


def equal_psnr_table(results: list[dict]) -> str:
    """Bytes per frame each codec needs for the frozen codec's PSNR on the same frames."""
    lines = ["| game | frozen PSNR | frozen codec | WebP | JPEG | x264 |", "|---|---|---|---|---|---|"]
    for r in results:
        cells = " | ".join(fmt(r[f"{name}_bytes_at_frozen_psnr"], ",.0f", " B") for name in ("webp", "jpeg", "x264"))
        lines.append(f"| {r['game']} | {r['frozen_psnr']:.2f} dB | {r['latent_bytes']:,.0f} B | {cells} |")
    return "\n".join(lines)


def design_speeds() -> dict[str, list[float]]:
    """update_fps per design from speed_codec_designs.txt (`<set> <json>` per line, in turns)."""
    path = RESULTS / "speed_codec_designs.txt"
    speeds: dict[str, list[float]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        name, _, report = line.partition(" ")
        speeds.setdefault(name, []).append(json.loads(report)["update_fps"])
    return speeds


def designs_table() -> str:
    """Float latents, 8 bits straight-through (the default) and 8 bits through noise, on
    Breakout and Assault at 5,000 frames, with their update speed."""
    designs = [
        ("float latents (`latent_bits=0`)", "codec_float_5k", "latent_bits=0"),
        ("**8 bits, straight-through** (default)", "codec_default_5k", "latent_bits=8"),
        ("8 bits, noise in learning (`latent_noise=True`)", "codec_noise_5k", "latent_noise=True"),
    ]
    speeds = design_speeds()
    base = speeds.get("latent_bits=0")
    lines = [
        "| design | game | prequential PSNR | frozen PSNR | latent bytes | without temporal coding | "
        "factorised bound | update_fps (3 runs) | vs float |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, name, key in designs:
        fps = speeds.get(key)
        ratio = f"{sum(a / b for a, b in zip(fps, base)) / len(fps):.3f}" if fps and base else "-"
        fps_text = ", ".join(f"{f:.1f}" for f in fps) if fps else "-"
        for r in (r for r in rows(name) if r["game"] in ("Breakout", "Assault")):
            lines.append(
                f"| {label} | {r['game']} | {r['psnr']:.2f} | {r['frozen_psnr']:.2f} | "
                f"{fmt(r['latent_bytes'], ',.0f')} | {fmt(r['intra_latent_bytes'], ',.0f')} | "
                f"{fmt(r['factorised_bound_bytes'], ',.0f')} | {fps_text} | {ratio} |"
            )
    return "\n".join(lines)


def rate_table(name: str) -> str:
    """Per game: each rate point's bytes and PSNR, and the BD-rates against the named codecs."""
    report = load(name)
    if report is None:
        return ""
    points = next(iter(report["games"].values()))["model"]
    lines = [
        "| game | "
        + " | ".join(f"{p['latent_channels']}:{p['latent_bits']}" for p in points)
        + " | BD-rate vs WebP | vs JPEG | vs x264 |",
        "|---|" + "---|" * (len(points) + 3),
    ]
    for game, entry in report["games"].items():
        cells = " | ".join(f"{p['latent_bytes']:,.0f} B, {p['psnr']:.2f} dB" for p in entry["model"])
        bd = entry["bd_rate"]
        lines.append(
            f"| {game} | {cells} | {fmt(bd['webp'], '+.1f', '%')} | {fmt(bd['jpeg'], '+.1f', '%')} | "
            f"{fmt(bd['x264'], '+.1f', '%')} |"
        )
    return "\n".join(lines)


def candidate_speeds() -> dict[str, tuple[float, float]]:
    """(GFLOP, time relative to the default) per candidate, from `docs/cpu_profile.py candidates`."""
    path = RESULTS / "cpu_profile.txt"
    pattern = re.compile(r"candidates: (.+): ([\d.]+) GFLOP, median [\d.]+ ms per update, ([\d.]+) x")
    matches = (pattern.match(line) for line in (path.read_text().splitlines() if path.exists() else []))
    return {m[1]: (float(m[2]), float(m[3])) for m in matches if m}


def ablation_table() -> str:
    lines = [
        "| model | GFLOP/update | time per update vs default | Breakout PSNR - floor | Assault PSNR - floor |",
        "|---|---|---|---|---|",
    ]
    speeds = candidate_speeds()
    for label, name, candidate in CANDIDATES:
        by_game = {r["game"]: r["psnr"] - r["floor_psnr"] for r in rows(name)}
        fast = f"{speeds[candidate][0]:.3f} | {speeds[candidate][1]:.2f}x" if candidate in speeds else "- | -"
        cells = " | ".join(f"{by_game[g]:+.2f} dB" if g in by_game else "-" for g in ("Breakout", "Assault"))
        lines.append(f"| {label} | {fast} | {cells} |")
    return "\n".join(lines)


def seeds_table() -> str:
    """PSNR - floor of the default and of + encoder layer norm, per seed, and their means."""
    lines = [
        "| model | game | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean |",
        "|---|---|" + "---|" * (len(SEEDS) + 1),
    ]
    for label, prefix in (("default", "default_3k"), ("+ encoder layer norm", "encoder_layer_norm_3k")):
        for game in ("Breakout", "Assault"):
            gains = [
                next(r["psnr"] - r["floor_psnr"] for r in rows(f"{prefix}_seed{s}") if r["game"] == game) for s in SEEDS
            ]
            lines.append(
                f"| {label} | {game} | "
                + " | ".join(f"{g:+.2f}" for g in gains)
                + f" | {sum(gains) / len(gains):+.2f} |"
            )
    return "\n".join(lines)


def speed_table() -> str:
    lines = [
        "| run | update_fps | loop_fps | roofline_fraction | forward ms | backward ms | optimizer ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("speed_default_run*.json")):
        r = load(path.stem)
        if r:
            st = r["stages_ms"]
            lines.append(
                f"| {path.stem} | {r['update_fps']:.1f} | {r['loop_fps']:.1f} | {r['roofline_fraction']:.3f} | "
                f"{st['forward']:.1f} | {st['backward']:.1f} | {st['optimizer']:.1f} |"
            )
    return "\n".join(lines)


def streams_table() -> str:
    """`bench.py speed --streams K` over K, one run per K (docs/results/speed_streams.jsonl)."""
    path = RESULTS / "speed_streams.jsonl"
    if not path.exists():
        return "(no results)"
    lines = [
        "| K | K-stream updates/s | stream-updates/s | lone learner, same run (updates/s) | speedup_vs_single | "
        "roofline_fraction |",
        "|---|---|---|---|---|---|",
    ]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        lines.append(
            f"| {r['streams']} | {r['update_fps']:.2f} | {r['stream_updates_per_s']:.1f} | "
            f"{r['single_update_fps']:.1f} | **{r['speedup_vs_single']:.2f}** | {r['roofline_fraction']:.3f} |"
        )
    return "\n".join(lines)


def continual_tables(name: str) -> str:
    """Per optimizer, the mean over seeds (and the range) of BWT, plasticity trend (with more
    than one cycle) and the last cycle's mean segment gain; then forgetting per game; then the final plasticity metrics."""
    results = rows(name)
    if not results:
        return "(no results)"
    games = results[0]["games"]
    optimizers = list(dict.fromkeys(r["optimizer"] for r in results))

    def spread(values: list[float | None], sign: str = "+") -> str:
        if None in values:  # forgetting of a game only trained in the last segment
            return "-"
        mean = sum(values) / len(values)
        return f"{mean:{sign}.2f}" + (
            f" ({min(values):{sign}.2f} to {max(values):{sign}.2f})" if len(values) > 1 else ""
        )

    cycles = results[0]["cycles"] > 1  # the plasticity trend compares cycles: none with one
    summary = [
        "| optimizer | seeds | BWT (dB) | "
        + ("plasticity trend (dB) | " if cycles else "")
        + "last-cycle gain over floor (dB) | final probe PSNR, mean of games (dB) |",
        "|---|---|---|" + "---|" * cycles + "---|---|",
    ]
    forgetting = ["| optimizer | " + " | ".join(games) + " |", "|---|" + "---|" * len(games)]
    plasticity = [
        "| optimizer | UPGD | dormant fraction | effective rank | weight L2 | grad L2 |",
        "|---|---|---|---|---|---|",
    ]
    for optimizer in optimizers:
        runs = [r for r in results if r["optimizer"] == optimizer]
        last_gain = [sum(r["segment_gain"][-len(games) :]) / len(games) for r in runs]
        final = [sum(r["psnr_matrix"][-1]) / len(games) for r in runs]
        trend = f"{spread([r['plasticity_trend'] for r in runs])} | " if cycles else ""
        summary.append(
            f"| `{optimizer}` | {len(runs)} | {spread([r['bwt'] for r in runs])} | {trend}"
            f"{spread(last_gain)} | {spread(final, '')} |"
        )
        forgetting.append(
            f"| `{optimizer}` | "
            + " | ".join(spread([r["forgetting"][g] for r in runs]) for g in range(len(games)))
            + " |"
        )
        metrics = [
            sum(r["plasticity"][k] for r in runs) / len(runs)
            for k in ("upgd", "dormant_fraction", "effective_rank", "weight_l2", "grad_l2")
        ]
        plasticity.append(f"| `{optimizer}` | " + " | ".join(f"{m:.3g}" for m in metrics) + " |")
    return (
        "\n".join(summary)
        + "\n\nForgetting per game (dB):\n\n"
        + "\n".join(forgetting)
        + "\n\nPlasticity at the end of the stream (mean over seeds):\n\n"
        + "\n".join(plasticity)
    )


if __name__ == "__main__":
    from benchmarks.quality import plot as plot_quality

    sections = [
        ("Float latents at 20,000 frames", [r for g in GAMES for r in rows(f"default_20k_{g}")], "quality_20k.png"),
        ("Optimizers at 5,000 frames", rows("optimizers_5k"), "optimizers_5k.png"),
        ("Other games at 5,000 frames", rows("other_games_5k"), None),
    ]
    for title, results, plot in sections:
        print(f"## {title}\n\n{quality_table(results)}\n")
        if plot and results:
            plot_quality(results, str(DOCS / plot))
    print(f"## Speed of the default\n\n{speed_table()}\n")
    print(f"## Candidates and ablations\n\n{ablation_table()}\n")
    print(f"## Encoder layer norm over three seeds\n\n{seeds_table()}\n")
    print(f"## Continual learning\n\n{continual_tables('continual_5k')}\n")
    print(f"## Continual learning, two cycles at 2,000 frames\n\n{continual_tables('continual_2k')}\n")
    print(f"## Many streams in one process\n\n{streams_table()}\n")
    print(f"## The frozen codec at 5,000 frames\n\n{codec_table(rows('codec_default_5k'))}\n")
    print(f"## Bytes at the frozen PSNR\n\n{equal_psnr_table(rows('codec_default_5k'))}\n")
    print(f"## Latent designs\n\n{designs_table()}\n")
    print(f"## Rate points at 2,000 frames\n\n{rate_table('rate_2k')}")

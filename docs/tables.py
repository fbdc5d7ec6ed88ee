"""Markdown tables and plots for docs/BENCHMARKS.md from the JSON in docs/results/.

    uv run docs/tables.py

Draws docs/quality_20k.png (the default on the five games) and docs/optimizers_5k.png
(the optimizers side by side): prequential PSNR over frames, with each game's
mean-frame floor and JPEG line (the streams of one game share their frames).
"""

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
RESULTS = DOCS / "results"
sys.path.insert(0, str(DOCS.parent))
GAMES = ("Breakout", "Assault", "SpaceInvaders", "Pacman", "Asteroids")
ABLATIONS = [  # (label, quality run, speed run)
    ("**default** (layer norm, change detector, reachable sigmoid)", "ablation_default_3k", "speed_default"),
    ("+ residual", "ablation_residual_3k", "speed_residual"),
    ("+ transformer", "ablation_transformer_3k", "speed_transformer"),
    ("- layer norm", "ablation_no_layer_norm_3k", "speed_no_layer_norm"),
    ("- change detector", "ablation_no_change_detector_3k", "speed_no_change_detector"),
    ("plain sigmoid head (`output_margin=0`)", "ablation_plain_sigmoid_3k", "speed_plain_sigmoid"),
]


def load(name: str) -> dict | None:
    """One run's JSON; "speed_default" is the median (by update_fps) of the repeated runs."""
    if name == "speed_default":
        runs = sorted(filter(None, map(load, sorted(p.stem for p in RESULTS.glob("speed_default_run*.json")))),
                      key=lambda r: r["update_fps"])
        return runs[len(runs) // 2] if runs else None
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() and path.read_text().strip() else None


def rows(name: str) -> list[dict]:
    return (load(name) or {"results": []})["results"]


def quality_table(results: list[dict]) -> str:
    lines = ["| game | optimizer | frames | PSNR (dB) | floor (dB) | PSNR - floor | JPEG at 4,495 B (dB) | PSNR - JPEG |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['game']} | {r['optimizer']} | {r['frames']:,} | {r['psnr']:.2f} | {r['floor_psnr']:.2f} | "
                     f"{r['psnr'] - r['floor_psnr']:+.2f} | {r['jpeg_psnr']:.2f} | {r['psnr'] - r['jpeg_psnr']:+.2f} |")
    return "\n".join(lines)


def ablation_table() -> str:
    lines = ["| model | GFLOP/update | updates/s | loop FPS | Breakout PSNR - floor | Assault PSNR - floor |",
             "|---|---|---|---|---|---|"]
    for label, name, speed_name in ABLATIONS:
        by_game = {r["game"]: r["psnr"] - r["floor_psnr"] for r in rows(name)}
        measured = load(speed_name)
        fast = (f"{measured['gflop_per_update']:.3f} | {measured['update_fps']:.1f} | {measured['loop_fps']:.1f}"
                if measured else "- | - | -")
        cells = " | ".join(f"{by_game[g]:+.2f} dB" if g in by_game else "-" for g in ("Breakout", "Assault"))
        lines.append(f"| {label} | {fast} | {cells} |")
    return "\n".join(lines)


def speed_table() -> str:
    lines = ["| run | update_fps | loop_fps | roofline_fraction | forward ms | backward ms | optimizer ms |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("speed_default_run*.json")):
        r = load(path.stem)
        if r:
            st = r["stages_ms"]
            lines.append(f"| {path.stem} | {r['update_fps']:.1f} | {r['loop_fps']:.1f} | {r['roofline_fraction']:.3f} | "
                         f"{st['forward']:.1f} | {st['backward']:.1f} | {st['optimizer']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from bench import plot_quality

    sections = [
        ("The default at 20,000 frames", [r for g in GAMES for r in rows(f"default_20k_{g}")], "quality_20k.png"),
        ("Optimizers at 5,000 frames", rows("optimizers_5k"), "optimizers_5k.png"),
        ("Other games at 5,000 frames", rows("other_games_5k"), None),
    ]
    for title, results, plot in sections:
        print(f"## {title}\n\n{quality_table(results)}\n")
        if plot and results:
            plot_quality(results, str(DOCS / plot))
    print(f"## Speed of the default\n\n{speed_table()}\n")
    print(f"## Candidates and ablations\n\n{ablation_table()}")

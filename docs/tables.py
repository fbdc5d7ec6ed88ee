"""Markdown tables for docs/BENCHMARKS.md from the JSON in docs/results/.

    uv run docs/tables.py

It also draws docs/quality_3k.png: prequential PSNR over frames for every optimizer,
with each game's mean-frame floor and JPEG line (the streams share their frames).
"""

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
RESULTS = DOCS / "results"
sys.path.insert(0, str(DOCS.parent))
ABLATIONS = [  # (label, quality run, speed run)
    ("**default** (layer norm + change detector)", "ablation_default_3k", "speed_default"),
    ("+ residual + transformer (all parts)", "ablation_full_3k", "speed_full"),
    ("+ transformer", "ablation_transformer_3k", "speed_transformer"),
    ("+ residual", "ablation_residual_3k", "speed_residual"),
    ("- layer norm", "ablation_no_layer_norm_3k", "speed_no_layer_norm"),
    ("- change detector", "ablation_no_change_detector_3k", "speed_no_change_detector"),
]


def rows(name: str) -> list[dict]:
    path = RESULTS / f"{name}.json"
    if not path.exists() or not path.read_text().strip():
        return []
    return json.loads(path.read_text())["results"]


def quality_table(results: list[dict]) -> str:
    lines = ["| game | optimizer | PSNR (dB) | floor (dB) | PSNR - floor | JPEG at 4,495 B (dB) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['game']} | {r['optimizer']} | {r['psnr']:.2f} | {r['floor_psnr']:.2f} | "
                     f"{r['psnr'] - r['floor_psnr']:+.2f} | {r['jpeg_psnr']:.2f} |")
    return "\n".join(lines)


def speed(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() and path.read_text().strip() else None


def ablation_table() -> str:
    lines = ["| model | GFLOP/update | updates/s | loop FPS | Breakout PSNR - floor | Assault PSNR - floor |",
             "|---|---|---|---|---|---|"]
    for label, name, speed_name in ABLATIONS:
        by_game = {r["game"]: r["psnr"] - r["floor_psnr"] for r in rows(name)}
        measured = speed(speed_name)
        fast = (f"{measured['gflop_per_update']:.3f} | {measured['update_fps']:.1f} | {measured['loop_fps']:.1f}"
                if measured else "- | - | -")
        cells = " | ".join(f"{by_game[g]:+.2f} dB" if g in by_game else "-" for g in ("Breakout", "Assault"))
        lines.append(f"| {label} | {fast} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    default = rows("ablation_default_3k")
    print("## Optimizers at 3,000 frames\n")
    print(quality_table(default + rows("optimizers_3k")))
    if default and rows("optimizers_3k"):
        from bench import plot_quality

        plot_quality(default + rows("optimizers_3k"), str(DOCS / "quality_3k.png"))
    print("\n## Candidates and ablations\n")
    print(ablation_table())

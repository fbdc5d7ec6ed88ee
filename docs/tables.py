"""Markdown tables for docs/BENCHMARKS.md from the JSON in docs/results/.

    uv run docs/tables.py
"""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ABLATIONS = [
    ("default (layer norm + change detector)", "ablation_default_3k"),
    ("+ residual + transformer (all parts)", "ablation_full_3k"),
    ("+ transformer", "ablation_transformer_3k"),
    ("+ residual", "ablation_residual_3k"),
    ("- layer norm", "ablation_no_layer_norm_3k"),
    ("- change detector", "ablation_no_change_detector_3k"),
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


def ablation_table() -> str:
    lines = ["| model | Breakout PSNR - floor | Assault PSNR - floor |", "|---|---|---|"]
    for label, name in ABLATIONS:
        by_game = {r["game"]: r["psnr"] - r["floor_psnr"] for r in rows(name)}
        if by_game:
            cells = " | ".join(f"{by_game[g]:+.2f} dB" if g in by_game else "-" for g in ("Breakout", "Assault"))
            lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("## Optimizers at 5,000 frames\n")
    print(quality_table(rows("optimizers_5k") + rows("sgd_5k")))
    print("\n## Ablations at 3,000 frames\n")
    print(ablation_table())

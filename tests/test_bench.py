"""bench.py's contract: the spec's JSON fields, measured honestly on tiny runs."""

import json
import subprocess
import sys

import cv2
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # end-to-end: real main.py / bench.py processes


def run_bench(*args: str, cwd=ROOT) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench.py"), *args, "--json"], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip()  # progress goes to stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_speed_reports_every_spec_field(speed_report):
    report = speed_report
    assert report["streams"] == 2
    assert report["stream_updates_per_s"] == pytest.approx(2 * report["update_fps"], rel=0.01)
    assert report["single_update_fps"] > 0 and report["speedup_vs_single"] > 0
    assert {
        "device",
        "threads",
        "update_fps",
        "loop_fps",
        "env_fps",
        "gflop_per_update",
        "achieved_gflops",
        "matmul_gflops",
        "roofline_fraction",
        "stages_ms",
    } <= report.keys()
    assert set(report["stages_ms"]) == {"env", "preprocess", "forward", "backward", "optimizer", "logging"}
    assert report["gflop_per_update"] > 0.1 and report["update_fps"] > 0 and report["matmul_gflops"] > 1
    assert report["achieved_gflops"] == pytest.approx(
        report["gflop_per_update"] * report["update_fps"], rel=0.01, abs=0.01
    )
    assert report["roofline_fraction"] == pytest.approx(
        report["achieved_gflops"] / report["matmul_gflops"], rel=0.01, abs=1e-4
    )
    assert report["method"] == "shrink-perturb" and report["method_update_fps"] > 0
    assert report["method_ratio"] > 0 and report["method_options"] == {"shrink": 1e-4, "sigma": 1e-4}


CODEC_FIELDS = {
    "frozen_psnr",
    "latent_bytes",
    "bpp",
    "decoder_parameters",
    "decoder_bytes",
    "jpeg_psnr",
    "webp_psnr",
    "x264_psnr",
    "png_bytes",
    "webp_lossless_bytes",
    "webp_bytes_at_frozen_psnr",
    "jpeg_bytes_at_frozen_psnr",
    "x264_bytes_at_frozen_psnr",
}


def test_quality_rows_codec_fields_and_plot(tmp_path):
    plot = tmp_path / "quality.png"
    report = run_bench(
        "quality", "--frames", "30", "--heldout", "12", "--games", "Breakout", "MsPacman", "--plot", str(plot)
    )
    rows = report["results"]
    assert [(r["game"], r["optimizer"], r["frames"], r["heldout"]) for r in rows] == [
        ("Breakout", "obgd-adaptive", 30, 12),
        ("MsPacman", "obgd-adaptive", 30, 12),
    ]
    for row in rows:
        assert {"psnr", "floor_psnr"} | CODEC_FIELDS <= row.keys()
        assert row["bpp"] == pytest.approx(row["latent_bytes"] * 8 / 224**2, abs=1e-4)
        assert row["decoder_bytes"] == 4 * row["decoder_parameters"] > 0
        assert row["bit_exact"] is True and row["encode_ms"] > 0 and row["decode_ms"] > 0
        assert row["floor_psnr"] > 10 and row["frozen_psnr"] > 5 and row["png_bytes"] > row["webp_lossless_bytes"] > 0
        for name in ("jpeg", "webp", "x264"):  # null, or a quality whose mean size fits the latent bytes
            assert row[f"{name}_psnr"] is None or row[f"{name}_bytes"] <= row["latent_bytes"]
    assert cv2.imread(str(plot)) is not None


def test_float_latents_have_no_bytes():
    row = run_bench("quality", "--frames", "10", "--heldout", "4", "--games", "Breakout", "--set", "latent_bits=0")[
        "results"
    ][0]
    assert row["latent_bytes"] is None and row["bpp"] is None and row["webp_psnr"] is None
    assert row["frozen_psnr"] > 5


def test_rate_points_curves_bd_rates_and_plot(tmp_path):
    plot = tmp_path / "rate.png"
    report = run_bench(
        "rate", "--frames", "20", "--heldout", "6", "--games", "Breakout", "--points", "3:8", "1:4", "--plot", str(plot)
    )
    entry = report["games"]["Breakout"]
    assert [(p["latent_channels"], p["latent_bits"]) for p in entry["model"]] == [(3, 8), (1, 4)]
    assert entry["model"][1]["latent_bytes"] < entry["model"][0]["latent_bytes"]  # fewer channels, fewer bits
    assert set(entry["curves"]) == {"jpeg", "webp", "x264"} == set(entry["bd_rate"])
    for name, curve in entry["curves"].items():
        assert len(curve) >= 7 and all(p["bpp"] > 0 and 10 < p["psnr"] < 100 for p in curve), name
        assert curve[-1]["psnr"] > curve[0]["psnr"] and curve[-1]["bpp"] > curve[0]["bpp"]  # worst to best quality
    assert cv2.imread(str(plot)) is not None


def test_soak_reports_memory_growth_and_log_size():
    report = run_bench("soak", "--frames", "40")
    assert report["frames"] == 40
    assert len(report["rss_mb"]) >= 2 and report["rss_peak_mb"] > 100
    assert report["tensorboard_bytes"] > 0 and report["tensorboard_mb_per_100k_frames"] > 0


def test_continual_rows_matrix_summary_and_plot(tmp_path):
    from continual import forgetting_summary

    plot = tmp_path / "continual.png"
    report = run_bench(
        "continual",
        "--games",
        "Breakout",
        "Pong",
        "--switch-every",
        "8",
        "--cycles",
        "2",
        "--optimizers",
        "obgd",
        "sgd",
        "--seeds",
        "0",
        "--eval-every",
        "4",
        "--probe-frames",
        "4",
        "--plot",
        str(plot),
    )
    rows = report["results"]
    assert [(r["optimizer"], r["seed"]) for r in rows] == [("obgd", 0), ("sgd", 0)]
    for row in rows:
        assert len(row["psnr_matrix"]) == 4 and all(len(r) == 2 for r in row["psnr_matrix"])
        assert len(row["initial"]) == len(row["floor"]) == 2
        assert row["initial"] == rows[0]["initial"]  # same seed, same initial weights and probe sets
        assert row["psnr_matrix"] != [row["initial"]] * 4  # learning moved the scores
        summary = forgetting_summary(row["psnr_matrix"], [0, 1, 0, 1], row["floor"], 2)
        assert row["forgetting"] == pytest.approx(summary["forgetting"], abs=1e-3)
        assert row["bwt"] == pytest.approx(summary["bwt"], abs=1e-3)
        assert row["plasticity_trend"] == pytest.approx(summary["plasticity_trend"], abs=1e-3)
        assert len(row["segment_gain"]) == 4
        assert {"upgd", "dormant_fraction", "effective_rank", "weight_l2", "grad_l2"} == row["plasticity"].keys()
    assert cv2.imread(str(plot)) is not None


def quality_psnrs(report: dict) -> list[tuple]:
    return [(r["game"], r["psnr"], r["floor_psnr"], r["frozen_psnr"]) for r in report["results"]]


def assert_rows_within(ours: list[tuple], theirs: list[tuple], db: float = 0.05) -> None:
    assert [row[0] for row in ours] == [row[0] for row in theirs]
    for a, b in zip(ours, theirs):
        assert a[1:] == pytest.approx(b[1:], abs=db), (a, b)


QUALITY = ("quality", "--frames", "20", "--games", "Breakout", "Pacman", "Assault", "--heldout", "2")


def test_packed_quality_rows_equal_the_unpacked_ones_locally_and_on_ray():
    """Three games in one stacked learner of two streams and one of one, against three lone
    runs; then the same packs as Ray tasks on a local cluster."""
    alone, packed = run_bench(*QUALITY), run_bench(*QUALITY, "--streams", "2")
    assert_rows_within(quality_psnrs(packed), quality_psnrs(alone))
    assert [r["latent_bytes"] for r in packed["results"]] == pytest.approx(
        [r["latent_bytes"] for r in alone["results"]], rel=0.02
    )
    pytest.importorskip("ray")
    assert_rows_within(quality_psnrs(run_bench(*QUALITY, "--streams", "2", "--ray")), quality_psnrs(packed))


def test_packed_continual_rows_equal_the_unpacked_ones():
    args = (
        "continual",
        "--games",
        "Breakout",
        "Pacman",
        "--switch-every",
        "6",
        "--cycles",
        "1",
        "--seeds",
        "0",
        "1",
        "--optimizers",
        "adam",
        "--probe-frames",
        "3",
        "--eval-every",
        "0",
    )
    alone, packed = run_bench(*args), run_bench(*args, "--streams", "2")
    assert [(r["optimizer"], r["seed"]) for r in packed["results"]] == [("adam", 0), ("adam", 1)]
    for ours, theirs in zip(packed["results"], alone["results"]):
        for mine, lone in zip(ours["psnr_matrix"] + [ours["initial"]], theirs["psnr_matrix"] + [theirs["initial"]]):
            assert mine == pytest.approx(lone, abs=0.05)
        assert ours["plasticity"]["weight_l2"] == pytest.approx(theirs["plasticity"]["weight_l2"], rel=1e-3)

"""The live viewer end to end: real ALE, real event files, real checkpoints."""

import json
import signal
import urllib.request

import pytest
import torch
from helpers import call_main, read_scalars, run_main, signal_group, start_main, wait_for

import main

pytestmark = pytest.mark.slow  # end-to-end: real main.py / bench.py processes

SPEC_SCALARS = {
    "loss/total",
    "loss/mse",
    "loss/l1",
    "loss/ssim",
    "quality/psnr",
    "perf/fps",
    "perf/step_ms",
    "optim/step_size",
    "optim/skipped",
    "change/fraction",
}
SPEC_IMAGES = {"frames/input_reconstruction", "frames/change_mask", "features/3x3", "features/5x5", "features/7x7"}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A 40-step run, then the same command resumed to 80 steps."""
    folder = tmp_path_factory.mktemp("resume")
    args = ["--game", "Breakout", "--seed", "7", "--window", "off", "--log-dir", "runs/demo"]
    first = run_main([*args, "--steps", "40"], folder)
    second = run_main([*args, "--steps", "80"], folder)
    return folder, first, second


def test_a_run_writes_every_spec_tag_and_a_checkpoint(resumed_run):
    folder, first, _ = resumed_run
    assert first.returncode == 0, first.stderr
    assert (
        "game: Breakout" in first.stdout and "device: cpu" in first.stdout and "log folder: runs/demo" in first.stdout
    )
    events = read_scalars(folder / "runs" / "demo")
    tags = events.Tags()
    assert SPEC_SCALARS <= set(tags["scalars"])
    assert SPEC_IMAGES <= set(tags["images"])
    assert any(tag.startswith("params/") for tag in tags["histograms"])
    assert "config/text_summary" in tags["tensors"]
    checkpoint = torch.load(folder / "quick_demo_model.pth", weights_only=True)
    assert {"model", "optimizer", "step", "game", "seed", "config", "format_version"} <= checkpoint.keys()
    assert checkpoint["optimizer"]["state"][0]["trace"].abs().sum() > 0


def test_resume_continues_the_step_axis_once_per_step(resumed_run):
    folder, _, second = resumed_run
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout and "step 40" in second.stdout
    events = read_scalars(folder / "runs" / "demo")
    steps = [event.step for event in events.Scalars("loss/total")]
    assert steps == list(range(1, 81))
    assert torch.load(folder / "quick_demo_model.pth", weights_only=True)["step"] == 80
    image_steps = [event.step for event in events.Images("frames/input_reconstruction")]
    assert image_steps[0] == 1 and 41 in image_steps and image_steps[-1] == 80


def test_a_finished_run_validates_and_exits_without_training(resumed_run):
    folder, _, _ = resumed_run
    before = (folder / "quick_demo_model.pth").read_bytes()
    done = call_main(["--steps", "80", "--window", "off"], folder)
    assert done.returncode == 0 and "already at step 80" in done.stdout
    assert (folder / "quick_demo_model.pth").read_bytes() == before


def test_the_seed_picks_the_game(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    picks = {}
    for seed in range(12):
        config, _, schedule, _ = main.prepare(["--seed", str(seed)])
        game = config.game
        assert schedule.games == (game,) and game == main.prepare(["--seed", str(seed)])[0].game
        assert game in main.DEFAULT_GAMES
        picks[seed] = game
    assert len(set(picks.values())) > 1
    assert not list(tmp_path.iterdir())  # choosing writes nothing


def test_any_installed_game_is_accepted_and_an_unknown_one_lists_names(tmp_path):
    config, _, schedule, _ = main.prepare(["--game", "MsPacman", "--checkpoint", str(tmp_path / "c.pth")])
    assert schedule.games == ("MsPacman",)
    bad = call_main(["--game", "Brekout", "--window", "off"], tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "Brekout" in lines[0] and "Breakout" in lines[0] and "SpaceInvaders" in lines[0]


def test_tensorboard_server_lists_the_runs_loss(tmp_path):
    process = start_main(
        ["--game", "Assault", "--seed", "1", "--window", "off", "--tensorboard", "--log-dir", "runs/live"], tmp_path
    )
    url = None
    try:

        def server_url():
            nonlocal url
            line = process.stdout.readline()
            if line.startswith("TensorBoard: "):
                url = line.split()[1]
            return url is not None

        assert wait_for(server_url, 120, interval=0)

        def has_loss():
            try:
                with urllib.request.urlopen(url + "data/plugin/scalars/tags", timeout=5) as response:
                    tags = json.load(response)
            except OSError:
                return False
            return "loss/total" in tags.get("live", {})

        assert wait_for(has_loss, 120, interval=1)
    finally:
        signal_group(process, signal.SIGINT)
        process.wait(timeout=120)
    assert process.returncode == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_a_display_without_a_server_falls_back_to_headless(tmp_path):
    result = run_main(["--steps", "3", "--game", "Breakout", "--seed", "2"], tmp_path, DISPLAY=":87")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "quick_demo_model.pth").exists()


def test_online_floor_psnr_against_a_hand_computation(resumed_run):
    """quality/floor_psnr at step t: the PSNR of the mean of frames 1..t-1 as the prediction of frame t."""
    import numpy as np

    from stream import FrameStream, Schedule
    from utils import preprocess_frame

    folder, _, _ = resumed_run
    frames_stream = FrameStream(Schedule(("Breakout",), 5000), 7)
    frames = [preprocess_frame(frames_stream.frame_for(t)[0]).double().numpy() for t in range(1, 6)]
    frames_stream.close()
    expected = {
        t: 10 * np.log10(1 / np.mean((frames[t - 1] - np.mean(frames[: t - 1], axis=0)) ** 2)) for t in range(2, 6)
    }
    logged = {e.step: e.value for e in read_scalars(folder / "runs" / "demo").Scalars("quality/floor_psnr")}
    assert min(logged) == 2 and sorted(logged) == list(range(2, 81))  # every step from the second, across the resume
    for t, value in expected.items():
        assert logged[t] == pytest.approx(value, abs=1e-3)
    saved = torch.load(folder / "quick_demo_model.pth", weights_only=True)["online_floor"]
    assert saved["count"] == 80


def test_custom_scalars_layout_puts_psnr_beside_the_floor(resumed_run):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    folder, _, _ = resumed_run
    events = read_scalars(folder / "runs" / "demo")
    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0])
    first = layout.category[0].chart[0]
    assert list(first.multiline.tag) == ["quality/psnr", "quality/floor_psnr"]

"""A real OpenCV window under Xvfb: three panels and the probe strip drawn, `q` quits and saves."""

import numpy as np
import pytest
from helpers import start_main, wait_for
from xwindow import Xvfb, missing_tools

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}")]


@pytest.fixture
def xserver():
    server = Xvfb()
    yield server
    server.close()


PANELS, STATUS, STRIP = 448, 36, 120  # heights in the window, at scale 2


def test_window_shows_three_panels_and_q_quits_cleanly(tmp_path, xserver):
    process = start_main(
        [
            "--window",
            "on",
            "--game",
            "Breakout,Pong",
            "--switch-every",
            "50",
            "--seed",
            "4",
            "--steps",
            "0",
            "--eval-every",
            "3",
            "--probe-frames",
            "4",
        ],
        tmp_path,
        DISPLAY=xserver.display,
    )
    try:
        window = None

        def window_is_up():
            nonlocal window
            window = xserver.find_window("Streaming autoencoder")
            return window is not None and process.poll() is None

        assert wait_for(window_is_up, 120), (
            process.stderr.read() if process.poll() is not None else "no window",
            f"Xvfb running: {xserver.process.poll() is None}",
        )

        def drawn():
            image = xserver.screenshot(window)
            return image.shape[1] >= 3 * 448 and all(
                panel.std() > 1 for panel in np.array_split(image[:448, : 3 * 448], 3, axis=1)
            )

        assert wait_for(drawn, 60, interval=0.5)
        image = xserver.screenshot(window)
        panels = np.array_split(image[:448, : 3 * 448], 3, axis=1)
        assert all(panel.max() > 0 for panel in panels)
        assert not np.array_equal(panels[0], panels[2])

        def strip_plots_drawn():  # PSNR and floor curves on the left, coloured probe curves on the right
            strip = xserver.screenshot(window)[PANELS + STATUS : PANELS + STATUS + STRIP].astype(int)
            quality, probes = strip[22:, : strip.shape[1] // 2], strip[22:, strip.shape[1] // 2 :]
            coloured = (probes.max(axis=2) - probes.min(axis=2)) > 60
            return strip.shape[0] == STRIP and (quality.min(axis=2) > 240).sum() > 20 and coloured.sum() > 20

        assert wait_for(strip_plots_drawn, 60, interval=0.5)
        xserver.run("xdotool", "windowfocus", "--sync", window)
        xserver.run("xdotool", "key", "--window", window, "q")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    assert "quit key" in output
    assert (tmp_path / "quick_demo_model.pth").exists()


def test_redraws_are_capped_while_every_frame_is_learned(tmp_path, xserver):
    import re
    import time

    process = start_main(
        ["--window", "on", "--game", "Breakout", "--seed", "4", "--display-fps", "1", "--eval-every", "0"],
        tmp_path,
        DISPLAY=xserver.display,
    )
    try:
        assert wait_for(lambda: xserver.find_window("Streaming autoencoder") is not None, 120)
        opened = time.monotonic()
        time.sleep(6)
        window = xserver.find_window("Streaming autoencoder")
        xserver.run("xdotool", "windowfocus", "--sync", window)
        xserver.run("xdotool", "key", "--window", window, "q")
        assert process.wait(timeout=60) == 0
        elapsed = time.monotonic() - opened
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    steps, redraws = map(int, re.search(r"at step (\d+) \((\d+) window redraws\)", output).groups())
    assert 2 <= redraws <= 1 * elapsed + 3  # at most --display-fps a second
    assert steps >= 3 * redraws  # learning ran on every frame, drawn or not (a loaded machine still does 3 a second)


def test_bench_speed_window_times_the_loop_with_the_real_window(speed_report):
    report = speed_report  # run with --window on a private Xvfb display
    assert report["window_redraws"] >= 1 and report["window_loop_fps"] > 0
    assert report["window_ratio"] == pytest.approx(
        report["window_loop_fps"] / report["window_headless_loop_fps"], rel=0.01
    )

"""A real OpenCV window under Xvfb: three panels drawn, `q` quits and saves."""

import numpy as np
import pytest

from helpers import start_main, wait_for
from xwindow import Xvfb, missing_tools

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}")


@pytest.fixture
def xserver():
    server = Xvfb()
    yield server
    server.close()


def test_window_shows_three_panels_and_q_quits_cleanly(tmp_path, xserver):
    process = start_main(["--window", "on", "--game", "Breakout", "--seed", "4", "--steps", "0"], tmp_path,
                         DISPLAY=xserver.display)
    try:
        window = None

        def window_is_up():
            nonlocal window
            window = xserver.find_window("Streaming autoencoder")
            return window is not None and process.poll() is None

        assert wait_for(window_is_up, 120), (process.stderr.read() if process.poll() is not None else "no window",
                                             f"Xvfb running: {xserver.process.poll() is None}")

        def drawn():
            image = xserver.screenshot(window)
            return image.shape[1] >= 3 * 448 and all(
                panel.std() > 1 for panel in np.array_split(image[:448, : 3 * 448], 3, axis=1))

        assert wait_for(drawn, 60, interval=0.5)
        image = xserver.screenshot(window)
        panels = np.array_split(image[:448, : 3 * 448], 3, axis=1)
        assert all(panel.max() > 0 for panel in panels)
        assert not np.array_equal(panels[0], panels[2])
        xserver.run("xdotool", "windowfocus", "--sync", window)
        xserver.run("xdotool", "key", "--window", window, "q")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    assert "quit key" in output
    assert (tmp_path / "quick_demo_model.pth").exists()

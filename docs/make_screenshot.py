"""Screenshot of the live window for the README, taken under a private Xvfb server.

    uv run docs/make_screenshot.py [--steps 2000] [--game A,B,C] [--switch-every 500] [--out docs/live_window.png]

In a scratch folder it runs the real main.py headless for `--steps` frames of the schedule,
resumes that checkpoint with `--window on` for `--window-seconds`, so that the live strip
has a history, captures the window with xwd and quits it with `q`.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import run_main, start_main, wait_for  # noqa: E402
from xwindow import Xvfb  # noqa: E402

TITLE = "Streaming autoencoder"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="frames learned headless before the window opens")
    parser.add_argument(
        "--window-seconds", type=float, default=20, help="seconds of learning in the window before the shot"
    )
    parser.add_argument("--game", default="Breakout,Assault,SpaceInvaders,Pacman,Asteroids")
    parser.add_argument("--switch-every", default="500")
    parser.add_argument("--out", default=str(ROOT / "docs" / "live_window.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        trained = run_main(
            [
                "--window",
                "off",
                "--game",
                args.game,
                "--switch-every",
                args.switch_every,
                "--seed",
                "0",
                "--steps",
                str(args.steps),
                "--eval-every",
                "100",
            ],
            folder,
            timeout=3600,
        )
        if trained.returncode != 0:
            raise SystemExit(trained.stderr)
        server = Xvfb()
        process = start_main(["--window", "on"], folder, DISPLAY=server.display)
        try:
            if not wait_for(lambda: server.find_window(TITLE) is not None, 120):
                raise SystemExit("the window did not open")
            window = server.find_window(TITLE)
            time.sleep(args.window_seconds)
            image = server.screenshot(window)
            cv2.imwrite(args.out, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            server.run("xdotool", "windowfocus", "--sync", window)
            server.run("xdotool", "key", "--window", window, "q")
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        finally:
            server.close()
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]})", file=sys.stderr)


if __name__ == "__main__":
    main()

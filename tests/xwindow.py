"""A private Xvfb server, window lookup with xdotool and screenshots with xwd."""

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

TOOLS = ("Xvfb", "xdotool", "xwd")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


class Xvfb:
    """Xvfb on a free display number; `display` is the DISPLAY value."""

    def __init__(self, size: str = "1600x1000x24"):
        self.display = None
        for number in range(90, 140):
            if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
                self.display = f":{number}"
                break
        self.process = subprocess.Popen(
            ["Xvfb", self.display, "-screen", "0", size, "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not self.answers():  # a client connects, not just the socket file exists
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("Xvfb did not start")
            time.sleep(0.1)

    def answers(self) -> bool:
        return (
            Path(f"/tmp/.X11-unix/X{self.display[1:]}").exists()
            and self.run("xdotool", "getdisplaygeometry").returncode == 0
        )

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, env={"DISPLAY": self.display, "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=30
        )

    def find_window(self, title: str) -> str | None:
        found = self.run("xdotool", "search", "--name", title).stdout.split()
        return found[-1].decode() if found else None

    def screenshot(self, window: str) -> np.ndarray:
        """The window's pixels as an HxWx3 uint8 RGB array (xwd's ZPixmap, 32 bpp)."""
        return parse_xwd(self.run("xwd", "-id", window, "-silent").stdout)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def parse_xwd(data: bytes) -> np.ndarray:
    header = np.frombuffer(data[:100], dtype=">u4")
    header_size, width, height = int(header[0]), int(header[4]), int(header[5])
    bits_per_pixel, bytes_per_line, ncolors = int(header[11]), int(header[12]), int(header[19])
    byte_order = int(header[7])
    if bits_per_pixel != 32:
        raise ValueError(f"expected a 32-bit xwd image, got {bits_per_pixel}")
    start = header_size + 12 * ncolors
    rows = np.frombuffer(data[start : start + height * bytes_per_line], dtype=np.uint8).reshape(height, bytes_per_line)
    pixels = rows[:, : width * 4].reshape(height, width, 4)
    return pixels[..., [2, 1, 0]] if byte_order == 0 else pixels[..., [1, 2, 3]]

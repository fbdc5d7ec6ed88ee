"""Shared, expensive set-up: real ALE frames are rendered once per session."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def ale_frames(game: str, count: int, seed: int = 0) -> list[np.ndarray]:
    """Real frames from a seeded random-policy ALE stream."""
    from stream import collect_frames

    return collect_frames(game, count, seed)


@pytest.fixture(scope="session")
def breakout_frames() -> list[np.ndarray]:
    return ale_frames("Breakout", 40)


@pytest.fixture(scope="session")
def pacman_frame() -> np.ndarray:
    return ale_frames("Pacman", 1)[0]


@pytest.fixture(scope="session")
def speed_report() -> dict:
    """One short `bench.py speed` run shared by the tests of its fields: two stacked streams,
    a method against the plain update, and, where Xvfb is installed, the loop with a real
    window on a private display."""
    import json
    import subprocess

    from helpers import main_env
    from xwindow import Xvfb, missing_tools

    command = [sys.executable, str(ROOT / "bench.py"), "speed", "--updates", "4", "--streams", "2", "--pairs", "1"]
    command += ["--method", "shrink-perturb", "--json"]
    server = None if missing_tools() else Xvfb()
    try:
        env = main_env(DISPLAY=server.display) if server else main_env()
        result = subprocess.run(
            command + (["--window"] if server else []), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        if server:
            server.close()
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip()  # progress goes to stderr
    return json.loads(result.stdout.strip().splitlines()[-1])

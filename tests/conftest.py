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

"""Shared, expensive set-up: real ALE frames are rendered once per session."""

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def ale_frames(game: str, count: int, seed: int = 0) -> list[np.ndarray]:
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5")
    frame, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    frames = [frame]
    while len(frames) < count:
        frame, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            frame, _ = env.reset()
        frames.append(frame)
    env.close()
    return frames


@pytest.fixture(scope="session")
def breakout_frames() -> list[np.ndarray]:
    return ale_frames("Breakout", 40)


@pytest.fixture(scope="session")
def pacman_frame() -> np.ndarray:
    return ale_frames("Pacman", 1)[0]

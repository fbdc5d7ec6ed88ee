"""The frame stream: ALE games played by a seeded random policy, game schedules, probe sets.

A schedule plays its games in order, `switch_every` steps each, cycling for ever: the
game at step t (1-based) is games[((t - 1) // switch_every) % len(games)]. Probe sets
are frames held out from learning, from envs of their own, for scoring without an update.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from utils import preprocess_frame

DEFAULT_GAMES = ("Breakout", "Assault", "SpaceInvaders", "Pacman", "Asteroids")
PROBE_SKIP = 60  # frames skipped after every reset of a probe env
PROBE_STRIDE = 8  # then every 8th frame is kept


def env_id(game: str) -> str:
    return f"ALE/{game}-v5"


def installed_games() -> list[str]:
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    return sorted(name[4:-3] for name in gym.registry if name.startswith("ALE/") and name.endswith("-v5"))


def env_seed(seed: int, step: int) -> int:
    """A fresh env seed per (run seed, step), so a resumed run sees new frames."""
    return (seed * 1_000_003 + step) % (2**31 - 1)


def probe_seed(seed: int, game: str) -> int:
    """The probe env's seed: a salted hash of (run seed, game), apart from every training seed."""
    digest = hashlib.sha256(f"probe-set:{seed}:{game}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2**31 - 1)


def make_env(game: str, env_seed_value: int):
    """The ALE v5 env with its random policy seeded, reset to a first frame."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(env_id(game))
    frame, _ = env.reset(seed=env_seed_value)
    env.action_space.seed(env_seed_value)
    return env, frame


def next_frame(env) -> np.ndarray:
    """One random-policy step; a finished episode resets and goes on."""
    frame, _, terminated, truncated, _ = env.step(env.action_space.sample())
    if terminated or truncated:
        frame, _ = env.reset()
    return frame


def collect_frames(game: str, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` consecutive frames of a seeded random-policy stream."""
    env, frame = make_env(game, env_seed(seed, 0))
    frames = [frame]
    while len(frames) < count:
        frames.append(next_frame(env))
    env.close()
    return frames


def probe_frames(game: str, seed: int, count: int) -> torch.Tensor:
    """The held-out probe set of `game` for a run seed: (count, 3, 224, 224) uint8.

    From an env of its own seeded by `probe_seed`: after each reset PROBE_SKIP frames are
    skipped, then every PROBE_STRIDE-th frame is kept; an episode end resets and skips again.
    """
    env, frame = make_env(game, probe_seed(seed, game))
    kept, since_reset = [], 0
    while len(kept) < count:
        if since_reset >= PROBE_SKIP and (since_reset - PROBE_SKIP) % PROBE_STRIDE == 0:
            kept.append(preprocess_frame(frame).mul_(255).round_().to(torch.uint8)[0])
        frame, _, terminated, truncated, _ = env.step(env.action_space.sample())
        since_reset += 1
        if terminated or truncated:
            frame, _ = env.reset()
            since_reset = 0
    env.close()
    return torch.stack(kept)


@dataclass(frozen=True)
class Schedule:
    """Which game is played at each step: `games` in order, `switch_every` steps each."""

    games: tuple[str, ...]
    switch_every: int

    def game_at(self, step: int) -> str:
        return self.games[self.segment_at(step) % len(self.games)]

    def segment_at(self, step: int) -> int:
        """The 0-based segment of step t (1-based)."""
        return (step - 1) // self.switch_every

    def position(self, step: int) -> str:
        """Where step t stands: 'game i/n, step s/N of the segment' in words."""
        index = self.segment_at(step) % len(self.games)
        into = (step - 1) % self.switch_every + 1
        if len(self.games) == 1:
            return self.games[0]
        return f"{self.games[index]} ({index + 1}/{len(self.games)}, {into}/{self.switch_every})"


class FrameStream:
    """The training frames of a schedule, one per step, from one env at a time.

    Entering a game (the first step, a resume, a switch) makes its env, seeded from the
    run seed and the step, so a resumed run sees new frames. `frame_for(step)` returns
    the frame to learn at step t and whether the game changed since the previous call.
    """

    def __init__(self, schedule: Schedule, seed: int):
        self.schedule = schedule
        self.seed = seed
        self.game = None
        self.env = None
        self._frame = None

    def frame_for(self, step: int) -> tuple[np.ndarray, bool]:
        game = self.schedule.game_at(step)
        switched = game != self.game
        if switched:
            self.close()
            self.env, self._frame = make_env(game, env_seed(self.seed, step - 1))
            self.game = game
        else:
            self._frame = next_frame(self.env)
        return self._frame, switched

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

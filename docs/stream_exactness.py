"""How closely a stacked stream follows its lone learner, against how closely a lone learner
follows itself when only the summation order changes (behind docs/BENCHMARKS.md).

    uv run docs/stream_exactness.py [updates]

Four games, one stream each, every optimizer: the relative weight difference after
`updates` (default 50) updates of (a) each stream of a 4-stream stack against its lone
learner, in float64 and in float32, and (b) the lone learner on one torch thread against
itself on two, in float32. Float latents (`latent_bits=0`), as the tolerances are stated.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autoencoder import StreamingAutoEncoder  # noqa: E402
from model import ModelConfig  # noqa: E402
from optim import OPTIMIZERS  # noqa: E402
from stream import collect_frames  # noqa: E402
from utils import preprocess_frame  # noqa: E402

GAMES = ("Breakout", "Assault", "SpaceInvaders", "Pacman")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def learners(optimizer: str, count: int) -> list[StreamingAutoEncoder]:
    """`count` copies of the same four initial learners."""
    config = ModelConfig(latent_bits=0)
    first = []
    for seed in range(len(GAMES)):
        torch.manual_seed(seed)
        first.append(StreamingAutoEncoder(config, optimizer=optimizer))
    copies = [first]
    for _ in range(count - 1):
        twins = [StreamingAutoEncoder(config, optimizer=optimizer) for _ in GAMES]
        for twin, model in zip(twins, first):
            twin.load_state_dict(model.state_dict())
        copies.append(twins)
    return copies


def stacked_against_alone(optimizer: str, frames: dict, updates: int, dtype: torch.dtype) -> list[float]:
    torch.set_default_dtype(dtype)
    try:
        alone, twins = learners(optimizer, 2)
        stacked = StreamingAutoEncoder.stack(twins)
        for step in range(updates):
            inputs = [frames[game][step].to(dtype) for game in GAMES]
            for model, x in zip(alone, inputs):
                model.update_params(x)
            stacked.update_params(torch.cat(inputs))
        return [relative(stacked.flat_params[k], model.flat_params) for k, model in enumerate(alone)]
    finally:
        torch.set_default_dtype(torch.float32)


def one_thread_against_two(optimizer: str, frames: dict, updates: int) -> list[float]:
    two, one = learners(optimizer, 2)
    threads = torch.get_num_threads()
    for step in range(updates):
        for model, game in zip(two, GAMES):
            model.update_params(frames[game][step])
        torch.set_num_threads(1)
        for model, game in zip(one, GAMES):
            model.update_params(frames[game][step])
        torch.set_num_threads(threads)
    return [relative(a.flat_params, b.flat_params) for a, b in zip(one, two)]


def main() -> None:
    updates = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    frames = {
        game: [preprocess_frame(f) for f in collect_frames(game, updates, seed=i)] for i, game in enumerate(GAMES)
    }
    print(f"relative weight difference after {updates} updates, per game ({', '.join(GAMES)})")
    for optimizer in OPTIMIZERS:
        rows = {
            "stacked, float64": stacked_against_alone(optimizer, frames, updates, torch.float64),
            "stacked, float32": stacked_against_alone(optimizer, frames, updates, torch.float32),
            "1 thread vs 2, float32": one_thread_against_two(optimizer, frames, updates),
        }
        for name, values in rows.items():
            print(f"{optimizer}: {name}: " + " ".join(f"{v:.1e}" for v in values))


if __name__ == "__main__":
    main()

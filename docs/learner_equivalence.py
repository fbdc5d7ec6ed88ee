"""Does the rewritten learner compute what the old one did? (docs/results/learner_equivalence.txt)

    uv run python docs/learner_equivalence.py --old /tmp/old_learner

The old learner is commit e1ff7c0, where a K-stream learner was `stacked.StackedAutoEncoder`
and every optimizer had a single-stream and a stacked class; check it out beside this one
(`git worktree add /tmp/old_learner e1ff7c0`); both sides run on this repository's Python.
The two versions cannot be imported in one process, so the script runs itself once per side
(`--side ROOT --out FILE`), one side after the other, each on one torch thread, and compares
what the two saved:

- construction (float32, default configuration, seed 0, each optimizer): the `state_dict`
  bitwise equal, and the `torch.rand(1)` drawn right after it equal (the same random numbers
  consumed);
- learning (float64, each optimizer, 30 updates): one learner (seed 0, Breakout) and a
  4-stream stack (learners seeded 0..3, one game each), the largest relative difference
  ||new - old|| / ||old|| over updates and streams of the reconstruction and of the weights
  (`flat_params`) after each update.

It exits non-zero if a construction differs or a relative difference exceeds 1e-9.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

OPTIMIZERS = ("obgd", "obgd-adaptive", "adam", "sgd")
GAMES = ("Breakout", "Assault", "SpaceInvaders", "Pacman")
UPDATES = 30
TOLERANCE = 1e-9
NEW = Path(__file__).resolve().parent.parent


def run_side(root: str, out: str) -> None:
    """Construct and train with the learner found at `root`; save what the parent compares."""
    sys.path.insert(0, root)
    from autoencoder import StreamingAutoEncoder
    from model import ModelConfig
    from stream import collect_frames
    from utils import preprocess_frame

    torch.set_num_threads(1)
    frames = torch.stack(
        [
            torch.cat([preprocess_frame(f) for f in collect_frames(game, UPDATES, seed)])
            for seed, game in enumerate(GAMES)
        ],
        1,
    )  # (updates, games, 3, 224, 224)
    saved = {"frames": frames}
    for name in OPTIMIZERS:
        torch.manual_seed(0)
        model = StreamingAutoEncoder(ModelConfig(), optimizer=name)
        saved[name, "construction"] = ({k: v.clone() for k, v in model.state_dict().items()}, torch.rand(1))

    torch.set_default_dtype(torch.float64)
    frames = frames.double()
    for name in OPTIMIZERS:
        for streams in (1, len(GAMES)):
            models = []
            for seed in range(streams):
                torch.manual_seed(seed)
                models.append(StreamingAutoEncoder(ModelConfig(), optimizer=name))
            learner = models[0] if streams == 1 else StreamingAutoEncoder.stack(models)
            reconstructions, weights = [], []
            for step in range(UPDATES):
                results = learner.update_params(frames[step, :streams])
                reconstructions.append(results["reconstruction"].contiguous())
                weights.append(learner.flat_params.detach().clone().view(streams, -1))
            saved[name, streams] = torch.stack(reconstructions), torch.stack(weights)
    torch.save(saved, out)


def commit(root: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (
        "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    )


def bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and torch.equal(a[k].contiguous().view(torch.uint8), b[k].contiguous().view(torch.uint8))
        for k in a
    )


def largest_relative(new: torch.Tensor, old: torch.Tensor) -> float:
    """max over updates and streams of ||new - old|| / ||old||; inputs are (updates, streams, ...)."""
    return ((new - old).flatten(2).norm(dim=2) / old.flatten(2).norm(dim=2)).max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="a checkout of the old learner (commit e1ff7c0)")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args.side, args.out)
        return
    if not args.old:
        parser.error("--old is required")

    print(f"new side {commit(NEW)} ({NEW}), old side {commit(Path(args.old))} ({args.old})")
    sides = {}
    with tempfile.TemporaryDirectory() as scratch:
        for side, root in (("new", NEW), ("old", Path(args.old).resolve())):
            out = f"{scratch}/{side}.pt"
            subprocess.run([sys.executable, __file__, "--side", str(root), "--out", out], check=True)
            sides[side] = torch.load(out)
    new, old = sides["new"], sides["old"]
    if not torch.equal(new["frames"], old["frames"]):
        sys.exit("the two sides collected different frames")

    failed = False
    print("construction (float32, default config, seed 0): state_dict bitwise equal, next torch.rand(1) equal")
    for name in OPTIMIZERS:
        (new_state, new_draw), (old_state, old_draw) = new[name, "construction"], old[name, "construction"]
        same_state, same_draw = bitwise_equal(new_state, old_state), torch.equal(new_draw, old_draw)
        failed |= not (same_state and same_draw)
        print(f"  {name:14s} {same_state!s:5s} {same_draw}")
    print(f"learning (float64, {UPDATES} updates): largest relative difference, new against old")
    for name in OPTIMIZERS:
        for streams in (1, len(GAMES)):
            (new_rec, new_w), (old_rec, old_w) = new[name, streams], old[name, streams]
            rec, weights = largest_relative(new_rec, old_rec), largest_relative(new_w, old_w)
            failed |= not (rec <= TOLERANCE and weights <= TOLERANCE)
            print(f"  {name:14s} K={streams}  reconstruction {rec:.1e}  weights {weights:.1e}")
    print("FAIL" if failed else f"PASS: all within {TOLERANCE:.0e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

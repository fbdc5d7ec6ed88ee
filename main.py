"""Live viewer: play Atari games at random and learn to compress every frame.

    uv run main.py [--game Breakout | --game A,B,C --switch-every N] [--steps N] [--window on|off|auto] ...

Each frame goes through `StreamingAutoEncoder.update_params` (one ObGD step).
Input, reconstruction and change mask are shown live, held-out probe sets of every
game are scored without an update, everything streams to TensorBoard, and the run
resumes from its checkpoint (`quick_demo_model.pth`).

This file is the command line and the wiring: the frame loop is `loop.py`, its
observers (TensorBoard, probe scoring, checkpoints, the view) `observers.py`, and what
keeps a run safe (checkpoint file and lock, signals, failed writes) `runtime.py`.
"""

import argparse
import os
import random
import sys
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

import torch

from autoencoder import StreamingAutoEncoder
from continual import EVAL_EVERY, PROBE_FRAMES
from loop import FrameLoop
from methods import METHODS, parse_options
from metrics import OnlineFloor
from model import ModelConfig
from monitoring import HISTOGRAM_EVERY, IMAGE_EVERY, SCALAR_EVERY
from observers import CheckpointSaver, LiveView, OnlineFloorScore, ProbeScoring, TensorBoardLog
from optim import DEFAULT_OPTIMIZER, OPTIMIZERS
from runtime import (
    StopFlag,
    UsageError,
    WriteFailure,
    check_writable_folder,
    load_checkpoint,
    lock_checkpoint,
    merge_with_checkpoint,
    report_failed_writes,
    restore_model,
    start_tensorboard,
)
from stream import DEFAULT_GAMES, FrameStream, Schedule, env_id, installed_games, probe_frames
from viewer import DISPLAY_FPS, display_usable


@dataclass
class Config:
    """Every flag of main.py; `--help` prints these help texts."""

    game: str | None = field(
        default=None,
        metadata={
            "help": "CamelCase ALE game (Breakout, MsPacman, ...), or a "
            "comma-separated schedule A,B,C; default: one of " + ", ".join(DEFAULT_GAMES) + " picked from --seed"
        },
    )
    switch_every: int = field(default=5000, metadata={"help": "steps per game when --game lists several"})
    eval_every: int = field(
        default=EVAL_EVERY,
        metadata={"help": "steps between scorings of the held-out probe sets (and at the last step); 0 = never"},
    )
    probe_frames: int = field(default=PROBE_FRAMES, metadata={"help": "held-out probe frames per game"})
    steps: int = field(
        default=0, metadata={"help": "stop at this total step count, resumed steps included; 0 = until Ctrl+C"}
    )
    seed: int | None = field(
        default=None, metadata={"help": "seeds the game choice, policy, env and torch (default: random, printed)"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    window: str = field(default="auto", metadata={"help": "auto (a window when a display is usable), on, off"})
    log_dir: str | None = field(
        default=None,
        metadata={
            "help": "TensorBoard folder (default: runs/<game>__<seed>__<time>, or the checkpoint's when resuming)"
        },
    )
    checkpoint: str = field(
        default="quick_demo_model.pth", metadata={"help": "checkpoint file to resume from and save to"}
    )
    fresh: bool = field(
        default=False, metadata={"help": "ignore an existing checkpoint (it is replaced at the first save)"}
    )
    save_every: int = field(default=1000, metadata={"help": "steps between checkpoint saves (and at every normal end)"})
    optimizer: str = field(
        default=DEFAULT_OPTIMIZER, metadata={"help": "; ".join(f"{k}: {v.summary}" for k, v in OPTIMIZERS.items())}
    )
    lr: float | None = field(
        default=None,
        metadata={
            "help": "learning rate (default per optimizer: "
            + ", ".join(f"{k} {v.default_lr:g}" for k, v in OPTIMIZERS.items())
            + ")"
        },
    )
    method: str = field(
        default="none",
        metadata={"help": "method against forgetting and loss of plasticity (methods/): " + ", ".join(METHODS)},
    )
    method_option: list[str] = field(
        default_factory=list,
        metadata={
            "help": "KEY=VALUE hyper-parameters of --method "
            "(default: the method's own; when resuming, the checkpoint's)"
        },
    )
    latent_channels: int = field(default=3, metadata={"help": "channels of the 3x3 branch's latent"})
    latent_bits: int = field(
        default=8,
        metadata={"help": "bits per latent value, rounded in the forward pass (0 = float latents, no bitstream)"},
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the network and loss, and on CUDA replay "
            "each update as one captured CUDA graph (faster per step, a minute or more to compile first)"
        },
    )
    tensorboard: bool = field(
        default=False, metadata={"help": "also start a TensorBoard server on 127.0.0.1 and print its URL"}
    )
    display_fps: float = field(
        default=DISPLAY_FPS, metadata={"help": "most window redraws per second (learning runs on every frame)"}
    )
    log_every: int = field(default=SCALAR_EVERY, metadata={"help": "steps between TensorBoard scalar points"})
    image_every: int = field(
        default=IMAGE_EVERY, metadata={"help": "steps between TensorBoard images (also at the first and last step)"}
    )
    histogram_every: int = field(
        default=HISTOGRAM_EVERY, metadata={"help": "steps between parameter histograms (also first and last step)"}
    )


def _flag_type(annotation) -> type:
    if getattr(annotation, "__origin__", None) is list:
        return list
    for kind in (bool, int, float):
        if annotation is kind or kind in getattr(annotation, "__args__", ()):
            return kind
    return str


def parse_args(argv: list[str] | None = None) -> tuple[Config, set[str]]:
    """The config and the names of the flags the user actually gave."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = _flag_type(f.type)
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif kind is list:
            parser.add_argument(flag, nargs="*", action="extend", help=f.metadata["help"], metavar="KEY=VALUE")
        else:
            parser.add_argument(flag, type=kind, help=f.metadata["help"], metavar=kind.__name__.upper())
    given = vars(parser.parse_args(argv))
    return Config(**given), set(given)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


def validate(config: Config) -> None:
    if config.steps < 0:
        raise UsageError(f"--steps must be >= 0 (0 = until Ctrl+C), got {config.steps}")
    for name in (
        "save_every",
        "log_every",
        "image_every",
        "histogram_every",
        "latent_channels",
        "switch_every",
        "probe_frames",
    ):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if not 0 <= config.latent_bits <= 16:
        raise UsageError(f"--latent-bits must be 0 (float latents) to 16, got {config.latent_bits}")
    if config.eval_every < 0:
        raise UsageError(f"--eval-every must be >= 0 (0 = never), got {config.eval_every}")
    if not config.display_fps > 0:
        raise UsageError(f"--display-fps must be > 0, got {config.display_fps}")
    if config.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {config.device!r}")
    if config.window not in ("auto", "on", "off"):
        raise UsageError(f"--window must be auto, on or off, got {config.window!r}")
    if config.optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    if config.lr is not None and not config.lr > 0:
        raise UsageError(f"--lr must be > 0, got {config.lr}")
    try:
        parse_options(config.method, config.method_option)
    except ValueError as error:
        raise UsageError(f"--method {config.method}: {error}") from None


def parse_games(text: str) -> tuple[str, ...]:
    """`Breakout` or `Breakout,Pacman,Assault`: every name must be an installed game."""
    games = tuple(name.strip() for name in text.split(","))
    valid = installed_games()
    for game in games:
        if game not in valid:
            raise UsageError(f"unknown game {game!r}; valid names: {', '.join(valid)}")
    return games


def check_flags(argv: list[str] | None) -> tuple[Config, set[str]]:
    """Parse and validate every flag that can be judged without the checkpoint: the config
    and the names of the flags given. Raises UsageError before anything is written."""
    config, given = parse_args(argv)
    validate(config)
    checkpoint_path = Path(config.checkpoint)
    check_writable_folder(checkpoint_path.parent.resolve(), "checkpoint folder")
    if checkpoint_path.is_dir():
        raise UsageError(f"--checkpoint {checkpoint_path} is a folder, not a file")
    if config.game is not None:
        parse_games(config.game)
    resolve_device(config.device)
    if config.log_dir is not None:
        check_writable_folder(Path(config.log_dir).resolve(), "log folder")
    return config, given


def resolve(config: Config, given: set[str]) -> tuple[Config, dict | None, Schedule, Path]:
    """Load the checkpoint (unless --fresh), merge it with the flags, and settle the seed,
    the schedule and the log folder: (config, checkpoint, schedule, log folder)."""
    checkpoint_path = Path(config.checkpoint)
    checkpoint = None
    if checkpoint_path.exists() and not config.fresh:
        checkpoint = load_checkpoint(checkpoint_path)
        config = merge_with_checkpoint(config, given, checkpoint)
    if config.seed is None:
        config.seed = random.SystemRandom().randrange(2**31)
    config.game = ",".join(parse_games(config.game or random.Random(config.seed).choice(DEFAULT_GAMES)))
    schedule = Schedule(tuple(config.game.split(",")), config.switch_every)
    if config.log_dir is None:
        if checkpoint and checkpoint.get("log_dir"):
            config.log_dir = checkpoint["log_dir"]
        else:
            name = "+".join(schedule.games)
            config.log_dir = str(Path("runs") / f"{name}__{config.seed}__{datetime.now():%Y%m%d-%H%M%S}")
    log_dir = Path(config.log_dir)
    check_writable_folder(log_dir.resolve(), "log folder")
    return config, checkpoint, schedule, log_dir


def prepare(argv: list[str] | None) -> tuple[Config, dict | None, Schedule, Path]:
    """Everything `run` settles before it starts, without the lock: writes nothing."""
    return resolve(*check_flags(argv))


def build_model(config: Config, checkpoint: dict | None, device: torch.device) -> StreamingAutoEncoder:
    torch.manual_seed(config.seed)
    if checkpoint is not None:
        return restore_model(checkpoint, config.lr, device, config.compile, config.checkpoint, config.method_option)
    return StreamingAutoEncoder(
        ModelConfig(latent_channels=config.latent_channels, latent_bits=config.latent_bits),
        optimizer=config.optimizer,
        lr=config.lr,
        device=device,
        compile=config.compile,
        method=config.method,
        method_options=config.method_option,
    )


def live_loop(
    config: Config,
    model: StreamingAutoEncoder,
    schedule: Schedule,
    log_dir: Path,
    checkpoint: dict | None,
    window: bool,
) -> tuple[FrameLoop, CheckpointSaver, LiveView]:
    """The live viewer's loop over the schedule's frames, with its checkpoint saver and view.
    Its observers, in order: the online floor, TensorBoard, probe scoring (unless
    --eval-every 0), checkpoints, the view."""
    start_step = model.step
    floor = OnlineFloor()
    if checkpoint:
        floor.load_state_dict(checkpoint["online_floor"], model.device)
    events = []
    changed = checkpoint is not None and checkpoint["schedule"]["games"] != list(schedule.games)
    if changed:
        events.append(
            (
                f"schedule changed from {','.join(checkpoint['schedule']['games'])} to "
                f"{','.join(schedule.games)} at step {start_step}",
                start_step,
            )
        )
    settings = {**asdict(config), "device": str(model.device), "resumed_at": start_step}
    observers = [
        OnlineFloorScore(floor),
        TensorBoardLog(
            log_dir,
            config.log_every,
            config.image_every,
            config.histogram_every,
            resumed_at=start_step if checkpoint else None,
            settings=settings,
            events=events,
        ),
    ]
    if config.eval_every:
        probe_sets = {g: probe_frames(g, config.seed, config.probe_frames) for g in schedule.games}
        observers.append(
            ProbeScoring(
                probe_sets,
                schedule,
                config.eval_every,
                last_step=config.steps,
                floors=checkpoint is None or changed,
                log_start=checkpoint is None,
            )
        )
    saver = CheckpointSaver(
        Path(config.checkpoint),
        config.save_every,
        config,
        schedule,
        log_dir,
        floor,
        saved_step=start_step if checkpoint else None,
    )
    view = LiveView(schedule, window, config.display_fps, config.steps)
    games = [checkpoint["game"] if checkpoint else None]
    loop = FrameLoop(model, FrameStream(schedule, config.seed), [*observers, saver, view], step=start_step, games=games)
    return loop, saver, view


def run(argv: list[str] | None = None) -> int:
    config, given = check_flags(argv)
    lock = lock_checkpoint(Path(config.checkpoint))  # before the load: no other run can save after it
    try:
        return run_locked(config, given)
    finally:
        os.close(lock)


def run_locked(config: Config, given: set[str]) -> int:
    config, checkpoint, schedule, log_dir = resolve(config, given)
    start_step = int(checkpoint["step"]) if checkpoint else 0
    if config.steps and start_step >= config.steps:
        print(
            f"checkpoint {config.checkpoint} is already at step {start_step} >= --steps {config.steps}; nothing to do"
        )
        return 0
    device = resolve_device(config.device)
    model = build_model(config, checkpoint, device)  # a checkpoint that does not fit ends here, exit 2
    stop = StopFlag()  # from here on, Ctrl+C and SIGTERM end the run with a save
    report_failed_writes()
    window = config.window == "on" or (config.window == "auto" and display_usable())

    games = ", ".join(f"{g} ({env_id(g)})" for g in schedule.games)
    every = f", {schedule.switch_every} steps each" if len(schedule.games) > 1 else ""
    print(f"game: {games}{every}  seed: {config.seed}")
    method = f"  method: {model.method_name} {asdict(model.method.options)}" if model.method_name != "none" else ""
    print(f"device: {device}  optimizer: {model.optimizer_name} (lr {model.lr:g}){method}")
    print(f"log folder: {log_dir}")
    if checkpoint:
        print(f"resumed from {config.checkpoint} at step {start_step}")

    loop, saver, view = live_loop(config, model, schedule, log_dir, checkpoint, window)
    server = None
    if config.tensorboard:
        server, url = start_tensorboard(log_dir)
        print(f"TensorBoard: {url}", flush=True)
    try:
        if not loop.run(config.steps, stop=lambda: bool(stop)):
            stop.reason = "quit key"
    except WriteFailure as failure:
        if saver.saved_step is not None:
            intact = f"the checkpoint at step {saver.saved_step} is intact"
        else:
            intact = (
                "the checkpoint file already there is intact"
                if Path(config.checkpoint).exists()
                else "no checkpoint was saved"
            )
        sys.stdout.flush()
        print(f"error: {failure}; {intact}", file=sys.stderr, flush=True)
        return 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        stop.ignore_further()
    ended = f"stopped by {stop.reason}" if stop else f"reached step {model.step}"
    redraws = f" ({view.viewer.redraws} window redraws)" if view.viewer is not None else ""
    print(f"{ended}; saved {saver.path} at step {model.step}{redraws}")
    return 0


def main() -> None:
    try:
        sys.exit(run())
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Live viewer: play an Atari game at random and learn to compress every frame.

    uv run main.py [--game Breakout] [--steps N] [--window on|off|auto] ...

Each frame goes through `StreamingAutoEncoder.update_params` (one ObGD step).
Input, reconstruction and change mask are shown live, everything streams to
TensorBoard, and the run resumes from its checkpoint (`quick_demo_model.pth`).
"""

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from autoencoder import StreamingAutoEncoder
from model import ModelConfig
from monitoring import TensorBoardLogger
from optim import OPTIMIZERS
from utils import postprocess_output

DEFAULT_GAMES = ("Breakout", "Assault", "SpaceInvaders", "Pacman", "Asteroids")
CHECKPOINT_FORMAT = 1
# Architecture fields added after format 1 was fixed, with the values older checkpoints were built with
# (their upsampled width was decoder_width // 2, and main.py always used decoder_width 32).
LEGACY_ARCHITECTURE = {"branch_heads": True, "upsampled_width": 16, "encoder_layer_norm": True}
WINDOW_TITLE = "Streaming autoencoder"


@dataclass
class Config:
    """Every flag of main.py; `--help` prints these help texts."""

    game: str | None = field(default=None, metadata={"help": "CamelCase ALE game (Breakout, MsPacman, ...); default: one of "
                             + ", ".join(DEFAULT_GAMES) + " picked from --seed"})
    steps: int = field(default=0, metadata={"help": "stop at this total step count, resumed steps included; 0 = until Ctrl+C"})
    seed: int | None = field(default=None, metadata={"help": "seeds the game choice, policy, env and torch (default: random, printed)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    window: str = field(default="auto", metadata={"help": "auto (a window when a display is usable), on, off"})
    log_dir: str | None = field(default=None, metadata={"help": "TensorBoard folder (default: runs/<game>__<seed>__<time>, "
                                "or the checkpoint's when resuming)"})
    checkpoint: str = field(default="quick_demo_model.pth", metadata={"help": "checkpoint file to resume from and save to"})
    fresh: bool = field(default=False, metadata={"help": "ignore an existing checkpoint (it is replaced at the first save)"})
    save_every: int = field(default=1000, metadata={"help": "steps between checkpoint saves (and at every normal end)"})
    optimizer: str = field(default="obgd-adaptive", metadata={"help": "; ".join(f"{k}: {v.summary}" for k, v in OPTIMIZERS.items())})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default per optimizer: "
                             + ", ".join(f"{k} {v.default_lr:g}" for k, v in OPTIMIZERS.items()) + ")"})
    latent_channels: int = field(default=3, metadata={"help": "channels of the 3x3 branch's latent"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the network and loss, and on CUDA replay "
                          "each update as one captured CUDA graph (faster per step, a minute or more to compile first)"})
    tensorboard: bool = field(default=False, metadata={"help": "also start a TensorBoard server on 127.0.0.1 and print its URL"})
    log_every: int = field(default=1, metadata={"help": "steps between TensorBoard scalar points"})
    image_every: int = field(default=500, metadata={"help": "steps between TensorBoard images (also at the first and last step)"})
    histogram_every: int = field(default=2000, metadata={"help": "steps between parameter histograms (also first and last step)"})


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2, nothing touched."""


def _flag_type(annotation) -> type:
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
        else:
            parser.add_argument(flag, type=kind, help=f.metadata["help"], metavar=kind.__name__.upper())
    given = vars(parser.parse_args(argv))
    return Config(**given), set(given)


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


def make_env(game: str, seed: int, step: int = 0):
    """The ALE v5 env and its seeded random policy, reset to a first frame."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(env_id(game))
    frame, _ = env.reset(seed=env_seed(seed, step))
    env.action_space.seed(env_seed(seed, step))
    return env, frame


def next_frame(env):
    """One random-policy step; a finished episode resets and goes on."""
    frame, _, terminated, truncated, _ = env.step(env.action_space.sample())
    if terminated or truncated:
        frame, _ = env.reset()
    return frame


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


def validate(config: Config) -> None:
    if config.steps < 0:
        raise UsageError(f"--steps must be >= 0 (0 = until Ctrl+C), got {config.steps}")
    for name in ("save_every", "log_every", "image_every", "histogram_every", "latent_channels"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {config.device!r}")
    if config.window not in ("auto", "on", "off"):
        raise UsageError(f"--window must be auto, on or off, got {config.window!r}")
    if config.optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    if config.lr is not None and not config.lr > 0:
        raise UsageError(f"--lr must be > 0, got {config.lr}")


def check_writable_folder(path: Path, what: str) -> None:
    """Fail now, before training, if `path` (a folder to create) cannot exist."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {path} cannot be created: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise UsageError(f"{what} {path} cannot be created: {parent} is not writable")
            return


# Checkpoints ---------------------------------------------------------------------------------

def load_checkpoint(path: Path) -> dict:
    """A validated checkpoint dict; UsageError naming the problem otherwise."""
    start_over = "start over with --fresh, or pick another --checkpoint"
    if path.stat().st_size == 0:
        raise UsageError(f"checkpoint {path} is empty; {start_over}")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickles; the error below says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad files
        text = str(error).lower()
        if "weights_only" in text or "unsupported global" in text or "unpickl" in text:
            reason = "it holds pickled objects or code that safe loading refuses"
        else:
            reason = "it is corrupt or truncated"
        raise UsageError(f"checkpoint {path} cannot be loaded: {reason}; {start_over}") from None
    required = {"format_version", "model", "optimizer", "step", "game", "seed", "config", "architecture"}
    if not isinstance(checkpoint, dict) or not required <= checkpoint.keys():
        raise UsageError(f"checkpoint {path} is not a checkpoint of this tool (a foreign torch file); {start_over}")
    if checkpoint["format_version"] != CHECKPOINT_FORMAT:
        raise UsageError(f"checkpoint {path} has format {checkpoint['format_version']}, "
                         f"this version reads {CHECKPOINT_FORMAT}; {start_over}")
    return checkpoint


def save_checkpoint(path: Path, model: StreamingAutoEncoder, config: Config, game: str, log_dir: str) -> None:
    """Atomic save: temp file in the same folder, fsync, rename, fsync the folder."""
    checkpoint = {
        "format_version": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": model.optimizer.state_dict(),
        "step": model.step,
        "game": game,
        "seed": config.seed,
        "config": asdict(config),
        "architecture": model.architecture(),
        "log_dir": log_dir,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def merge_with_checkpoint(config: Config, given: set[str], checkpoint: dict) -> Config:
    """Flags not given take the checkpoint's values; contradictions are errors."""
    saved = checkpoint["config"]
    architecture = checkpoint["architecture"]
    for flag, key in (("latent_channels", "latent_channels"), ("optimizer", "optimizer")):
        if flag in given and getattr(config, flag) != architecture[key]:
            raise UsageError(
                f"--{flag.replace('_', '-')} {getattr(config, flag)} contradicts the checkpoint's "
                f"{architecture[key]}; start over with --fresh, or pick another --checkpoint"
            )
    resumable = {"seed", "lr", "latent_channels", "optimizer", "save_every", "log_every", "image_every",
                 "histogram_every", "compile"}
    values = {k: saved[k] for k in resumable if k in saved and k not in given}
    values["latent_channels"] = architecture["latent_channels"]
    values["optimizer"] = architecture["optimizer"]
    return Config(**{**asdict(config), **values})


# Display ------------------------------------------------------------------------------------

def display_usable() -> bool:
    """True when an X display answers. OpenCV's GUI build aborts the whole process
    (uncatchably) on a DISPLAY with no server, so probe it in a child process first."""
    display = os.environ.get("DISPLAY")
    if not display:
        return False
    probe = "import cv2; cv2.namedWindow('probe'); cv2.waitKey(1); cv2.destroyAllWindows()"
    try:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


class Viewer:
    """The live window: input | reconstruction | change mask, with a status bar."""

    def __init__(self, game: str, scale: int = 2):
        import cv2

        self.cv2 = cv2
        self.game = game
        self.scale = scale
        cv2.namedWindow(WINDOW_TITLE, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)

    def show(self, results: dict, fps: float) -> bool:
        """Draw one frame; False when the user asked to quit (q, Esc, window closed)."""
        cv2 = self.cv2
        mask = results["change_mask"].expand(-1, 3, -1, -1)
        panels = torch.cat([results["input"][0], results["reconstruction"][0], mask[0]], dim=2)
        image = cv2.cvtColor(postprocess_output(panels), cv2.COLOR_RGB2BGR)
        image = cv2.resize(image, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_NEAREST)
        bar = np.zeros((36, image.shape[1], 3), np.uint8)
        psnr = float(results["psnr"])
        status = f"{self.game}  step {results['step']}  {fps:5.1f} FPS  PSNR {psnr:5.2f} dB"
        cv2.putText(bar, status, (8, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
        width = image.shape[1] // 3
        for i, label in enumerate(("input", "reconstruction", "change mask")):
            cv2.putText(image, label, (i * width + 8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 1, cv2.LINE_AA)
        cv2.imshow(WINDOW_TITLE, np.vstack([image, bar]))
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            return False
        return cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        self.cv2.destroyAllWindows()


class Progress:
    """Headless progress: one live line on a terminal, plain periodic lines otherwise."""

    def __init__(self, game: str, total: int):
        self.game = game
        self.total = total
        self.live = sys.stdout.isatty()
        self.every = 0.25 if self.live else 10.0
        self.last = time.monotonic()

    def update(self, results: dict, fps: float) -> None:
        if time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        target = f"/{self.total}" if self.total else ""
        line = f"{self.game} step {results['step']}{target}  {fps:6.1f} FPS  PSNR {float(results['psnr']):6.2f} dB"
        print(f"\r{line}   " if self.live else line, end="" if self.live else "\n", flush=True)

    def close(self) -> None:
        if self.live:
            print()


def start_tensorboard(log_dir: Path) -> tuple[subprocess.Popen, str]:
    """A real TensorBoard server on 127.0.0.1 at a free port, showing every run beside this one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(log_dir.parent),
               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "2"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return server, f"http://127.0.0.1:{port}/"


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks, so a second Ctrl+C (or `uv run`
    forwarding the same signal) can never interrupt the final save."""

    def __init__(self):
        self.reason = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.reason is None:
            self.reason = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return self.reason is not None


# The run ------------------------------------------------------------------------------------

def prepare(argv: list[str] | None) -> tuple[Config, dict | None, str, Path]:
    """Parse, validate and resolve everything; raises UsageError before anything is written."""
    config, given = parse_args(argv)
    validate(config)
    checkpoint_path = Path(config.checkpoint)
    check_writable_folder(checkpoint_path.parent.resolve(), "checkpoint folder")
    if checkpoint_path.is_dir():
        raise UsageError(f"--checkpoint {checkpoint_path} is a folder, not a file")
    checkpoint = None
    if checkpoint_path.exists() and not config.fresh:
        checkpoint = load_checkpoint(checkpoint_path)
        config = merge_with_checkpoint(config, given, checkpoint)
    if config.seed is None:
        config.seed = random.SystemRandom().randrange(2**31)
    games = installed_games()
    game = config.game or (checkpoint["game"] if checkpoint else random.Random(config.seed).choice(DEFAULT_GAMES))
    if game not in games:
        raise UsageError(f"unknown game {game!r}; valid names: {', '.join(games)}")
    config.game = game
    resolve_device(config.device)
    if config.log_dir is None:
        if checkpoint and checkpoint.get("log_dir"):
            config.log_dir = checkpoint["log_dir"]
        else:
            config.log_dir = str(Path("runs") / f"{game}__{config.seed}__{datetime.now():%Y%m%d-%H%M%S}")
    log_dir = Path(config.log_dir)
    check_writable_folder(log_dir.resolve(), "log folder")
    return config, checkpoint, game, log_dir


def build_model(config: Config, checkpoint: dict | None, device: torch.device) -> StreamingAutoEncoder:
    torch.manual_seed(config.seed)
    if checkpoint is None:
        return StreamingAutoEncoder(ModelConfig(latent_channels=config.latent_channels),
                                    optimizer=config.optimizer, lr=config.lr, device=device, compile=config.compile)
    architecture = {**LEGACY_ARCHITECTURE, **checkpoint["architecture"]}
    optimizer = architecture.pop("optimizer")
    try:
        model_config = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in architecture.items()})
        model = StreamingAutoEncoder(model_config, optimizer=optimizer, lr=config.lr, device=device,
                                     compile=config.compile)
        model.load_state_dict(checkpoint["model"])
        model.optimizer.load_state_dict(checkpoint["optimizer"])
        for group in model.optimizer.param_groups:
            group["lr"] = model.lr
            if "capturable" in group:  # Adam saved without a CUDA graph refuses to be captured in one
                group["capturable"] = model.captured_step is not None
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"checkpoint {config.checkpoint} does not fit this model ({first_line}); "
                         "start over with --fresh, or pick another --checkpoint") from None
    model.step = int(checkpoint["step"])
    return model


def run(argv: list[str] | None = None) -> int:
    config, checkpoint, game, log_dir = prepare(argv)
    start_step = int(checkpoint["step"]) if checkpoint else 0
    if config.steps and start_step >= config.steps:
        print(f"checkpoint {config.checkpoint} is already at step {start_step} >= --steps {config.steps}; nothing to do")
        return 0
    stop = StopFlag()  # from here on, Ctrl+C and SIGTERM end the run with a save
    device = resolve_device(config.device)
    model = build_model(config, checkpoint, device)
    window = config.window == "on" or (config.window == "auto" and display_usable())

    print(f"game: {game} ({env_id(game)})  seed: {config.seed}")
    print(f"device: {device}  optimizer: {model.optimizer_name} (lr {model.lr:g})")
    print(f"log folder: {log_dir}")
    if checkpoint:
        print(f"resumed from {config.checkpoint} at step {start_step}")

    logger = TensorBoardLogger(str(log_dir), scalar_every=config.log_every, image_every=config.image_every,
                               histogram_every=config.histogram_every,
                               purge_step=start_step + 1 if checkpoint else None)
    model.logger = logger
    logger.log_config({**asdict(config), "device": str(device), "resumed_at": start_step})
    if checkpoint and checkpoint["game"] != game:
        logger.writer.add_text("events", f"switched game from {checkpoint['game']} to {game} at step {start_step}", start_step)
        print(f"switching game: {checkpoint['game']} -> {game}")

    server = None
    if config.tensorboard:
        server, url = start_tensorboard(log_dir)
        print(f"TensorBoard: {url}", flush=True)

    env, frame = make_env(game, config.seed, start_step)
    viewer = Viewer(game) if window else None
    progress = None if window else Progress(game, config.steps)
    results = None
    checkpoint_path = Path(config.checkpoint)
    try:
        while not stop and not (config.steps and model.step >= config.steps):
            results = model.update_params(frame)
            fps = model.performance.fps
            if viewer is not None:
                if not viewer.show(results, fps):
                    stop.reason = "quit key"
            else:
                progress.update(results, fps)
            if model.step % config.save_every == 0:
                save_checkpoint(checkpoint_path, model, config, game, str(log_dir))
            frame = next_frame(env)
    finally:
        save_checkpoint(checkpoint_path, model, config, game, str(log_dir))
        logger.close(results, model)
        if progress is not None:
            progress.close()
        if viewer is not None:
            viewer.close()
        env.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    ended = f"stopped by {stop.reason}" if stop else f"reached step {model.step}"
    print(f"{ended}; saved {checkpoint_path} at step {model.step}")
    return 0


def main() -> None:
    try:
        sys.exit(run())
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Live viewer: play Atari games at random and learn to compress every frame.

    uv run main.py [--game Breakout | --game A,B,C --switch-every N] [--steps N] [--window on|off|auto] ...

Each frame goes through `StreamingAutoEncoder.update_params` (one ObGD step).
Input, reconstruction and change mask are shown live, held-out probe sets of every
game are scored without an update, everything streams to TensorBoard, and the run
resumes from its checkpoint (`quick_demo_model.pth`).
"""

import argparse
import fcntl
import io
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

import torch

from autoencoder import StreamingAutoEncoder
from continual import EVAL_EVERY, PROBE_FRAMES, floor_psnr, scoring
from model import ModelConfig
from monitoring import HISTOGRAM_EVERY, IMAGE_EVERY, SCALAR_EVERY, OnlineFloor, TensorBoardLogger
from optim import DEFAULT_OPTIMIZER, OPTIMIZERS
from stream import DEFAULT_GAMES, FrameStream, Schedule, env_id, installed_games, probe_frames
from viewer import DISPLAY_FPS, Progress, Viewer, display_usable

CHECKPOINT_FORMAT = 3


@dataclass
class Config:
    """Every flag of main.py; `--help` prints these help texts."""

    game: str | None = field(default=None, metadata={"help": "CamelCase ALE game (Breakout, MsPacman, ...), or a "
                             "comma-separated schedule A,B,C; default: one of " + ", ".join(DEFAULT_GAMES)
                             + " picked from --seed"})
    switch_every: int = field(default=5000, metadata={"help": "steps per game when --game lists several"})
    eval_every: int = field(default=EVAL_EVERY, metadata={"help": "steps between scorings of the held-out probe "
                            "sets (and at the last step); 0 = never"})
    probe_frames: int = field(default=PROBE_FRAMES, metadata={"help": "held-out probe frames per game"})
    steps: int = field(default=0, metadata={"help": "stop at this total step count, resumed steps included; 0 = until Ctrl+C"})
    seed: int | None = field(default=None, metadata={"help": "seeds the game choice, policy, env and torch (default: random, printed)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    window: str = field(default="auto", metadata={"help": "auto (a window when a display is usable), on, off"})
    log_dir: str | None = field(default=None, metadata={"help": "TensorBoard folder (default: runs/<game>__<seed>__<time>, "
                                "or the checkpoint's when resuming)"})
    checkpoint: str = field(default="quick_demo_model.pth", metadata={"help": "checkpoint file to resume from and save to"})
    fresh: bool = field(default=False, metadata={"help": "ignore an existing checkpoint (it is replaced at the first save)"})
    save_every: int = field(default=1000, metadata={"help": "steps between checkpoint saves (and at every normal end)"})
    optimizer: str = field(default=DEFAULT_OPTIMIZER, metadata={"help": "; ".join(f"{k}: {v.summary}" for k, v in OPTIMIZERS.items())})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default per optimizer: "
                             + ", ".join(f"{k} {v.default_lr:g}" for k, v in OPTIMIZERS.items()) + ")"})
    latent_channels: int = field(default=3, metadata={"help": "channels of the 3x3 branch's latent"})
    latent_bits: int = field(default=8, metadata={"help": "bits per latent value, rounded in the forward pass "
                             "(0 = float latents, no bitstream)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the network and loss, and on CUDA replay "
                          "each update as one captured CUDA graph (faster per step, a minute or more to compile first)"})
    tensorboard: bool = field(default=False, metadata={"help": "also start a TensorBoard server on 127.0.0.1 and print its URL"})
    display_fps: float = field(default=DISPLAY_FPS, metadata={"help": "most window redraws per second (learning runs on every frame)"})
    log_every: int = field(default=SCALAR_EVERY, metadata={"help": "steps between TensorBoard scalar points"})
    image_every: int = field(default=IMAGE_EVERY, metadata={"help": "steps between TensorBoard images (also at the first "
                             "and last step)"})
    histogram_every: int = field(default=HISTOGRAM_EVERY, metadata={"help": "steps between parameter histograms (also "
                                 "first and last step)"})


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2, nothing touched."""


class WriteFailure(Exception):
    """A checkpoint or TensorBoard write failed (disk full, a file-size limit, a read-only
    folder): the run ends with one line and exit status 1."""

    def __init__(self, path, error: OSError):
        super().__init__(f"could not write {path} ({error.strerror or error})")


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


def validate(config: Config) -> None:
    if config.steps < 0:
        raise UsageError(f"--steps must be >= 0 (0 = until Ctrl+C), got {config.steps}")
    for name in ("save_every", "log_every", "image_every", "histogram_every", "latent_channels", "switch_every",
                 "probe_frames"):
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


def save_checkpoint(path: Path, model: StreamingAutoEncoder, config: Config, schedule: Schedule, log_dir: str,
                    floor: OnlineFloor | None = None) -> None:
    """Atomic save: temp file in the same folder, fsync, rename, fsync the folder.

    The checkpoint is serialised in memory first, so a failed write is a plain OSError,
    raised as WriteFailure; the file already on disk is never touched before the rename.
    """
    checkpoint = {
        "format_version": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": model.optimizer.state_dict(),
        "step": model.step,
        "game": schedule.game_at(max(model.step, 1)),
        "schedule": {"games": list(schedule.games), "switch_every": schedule.switch_every},
        "seed": config.seed,
        "config": asdict(config),
        "architecture": model.architecture(),
        "log_dir": log_dir,
        "online_floor": (floor or OnlineFloor()).state_dict(),
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temp, "wb") as file:
                file.write(buffer.getbuffer())
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
    except OSError as error:
        raise WriteFailure(path, error) from None


def merge_with_checkpoint(config: Config, given: set[str], checkpoint: dict) -> Config:
    """Flags not given take the checkpoint's values; contradictions are errors."""
    saved = checkpoint["config"]
    architecture = checkpoint["architecture"]
    for flag in ("latent_channels", "latent_bits", "optimizer"):
        if flag in given and getattr(config, flag) != architecture[flag]:
            raise UsageError(
                f"--{flag.replace('_', '-')} {getattr(config, flag)} contradicts the checkpoint's "
                f"{architecture[flag]}; start over with --fresh, or pick another --checkpoint"
            )
    resumable = {"seed", "lr", "latent_channels", "latent_bits", "optimizer", "save_every", "log_every", "image_every",
                 "histogram_every", "compile", "eval_every", "probe_frames", "display_fps"}
    values = {k: saved[k] for k in resumable if k in saved and k not in given}
    values["latent_channels"] = architecture["latent_channels"]
    values["latent_bits"] = architecture["latent_bits"]
    values["optimizer"] = architecture["optimizer"]
    if "game" not in given:
        values["game"] = ",".join(checkpoint["schedule"]["games"])
    if "switch_every" not in given:
        values["switch_every"] = checkpoint["schedule"]["switch_every"]
    return Config(**{**asdict(config), **values})


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

def parse_games(text: str) -> tuple[str, ...]:
    """`Breakout` or `Breakout,Pacman,Assault`: every name must be an installed game."""
    games = tuple(name.strip() for name in text.split(","))
    valid = installed_games()
    for game in games:
        if game not in valid:
            raise UsageError(f"unknown game {game!r}; valid names: {', '.join(valid)}")
    return games


def lock_checkpoint(path: Path) -> int:
    """Hold `<checkpoint>.lock` for the life of this process: one run per checkpoint.

    An OS advisory lock (flock), so a run that was killed never blocks the next one: the
    OS drops its lock with the process. The file holds the holder's pid, for the error.
    """
    lock_path = path.with_name(path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise UsageError(f"checkpoint {path} is in use by another run (pid {holder}); wait for it to end, "
                         "or pick another --checkpoint") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor


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
    if checkpoint is None:
        return StreamingAutoEncoder(ModelConfig(latent_channels=config.latent_channels, latent_bits=config.latent_bits),
                                    optimizer=config.optimizer, lr=config.lr, device=device, compile=config.compile)
    architecture = dict(checkpoint["architecture"])
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


class LiveRun:
    """The loop's parts wired together: frame stream, learner, online floor, probe scoring,
    TensorBoard, window or progress line, checkpoints."""

    def __init__(self, config: Config, model: StreamingAutoEncoder, schedule: Schedule, log_dir: Path,
                 checkpoint: dict | None, window: bool):
        self.config, self.model, self.schedule, self.log_dir = config, model, schedule, log_dir
        self.checkpoint_path = Path(config.checkpoint)
        self.saved_step = int(checkpoint["step"]) if checkpoint else None
        start_step = model.step
        self.floor = OnlineFloor()
        if checkpoint:
            self.floor.load_state_dict(checkpoint["online_floor"], model.device)
        self.previous_game = checkpoint["game"] if checkpoint else None
        self.stream = FrameStream(schedule, config.seed)
        self.viewer = Viewer(schedule.games, config.display_fps) if window else None
        self.progress = None if window else Progress(config.steps)
        self.probe: dict[str, float] = {}
        self.results = None
        self.scored_step = None
        self.probe_sets = {}
        if config.eval_every:
            self.probe_sets = {g: probe_frames(g, config.seed, config.probe_frames) for g in schedule.games}
        self.logger = None
        with self.tensorboard():
            self.logger = TensorBoardLogger(str(log_dir), scalar_every=config.log_every,
                                            image_every=config.image_every, histogram_every=config.histogram_every,
                                            purge_step=start_step + 1 if checkpoint else None)
            self.logger.log_config({**asdict(config), "device": str(model.device), "resumed_at": start_step})
            changed = checkpoint is not None and checkpoint["schedule"]["games"] != list(schedule.games)
            if changed:
                self.logger.log_event(f"schedule changed from {','.join(checkpoint['schedule']['games'])} to "
                                      f"{','.join(schedule.games)} at step {start_step}", start_step)
            if checkpoint is None or changed:
                self.logger.log_scalars({f"probe/floor/{g}": floor_psnr(f) for g, f in self.probe_sets.items()},
                                        start_step)
        if self.probe_sets:  # where the run starts from; a resumed run's was logged by the run before
            self.score(log=checkpoint is None)

    @contextmanager
    def tensorboard(self):
        """A context in which a failed TensorBoard write becomes a WriteFailure naming the event file."""
        try:
            yield
        except OSError as error:
            raise WriteFailure(self.logger.event_file() if self.logger is not None else self.log_dir, error) from None

    def step(self) -> bool:
        """Learn one frame; False when the user asked to quit."""
        step = self.model.step + 1
        frame, entered = self.stream.frame_for(step)
        game = self.stream.game
        if entered:
            self.model.forget_previous_frame()
            if self.previous_game is not None and game != self.previous_game:
                with self.tensorboard():
                    self.logger.log_event(f"switched to {game} at step {step}", step)
                if self.viewer is not None:
                    self.viewer.add_switch(step)
                if self.progress is not None:
                    self.progress.close()
                print(f"switching game: {self.previous_game} -> {game} at step {step}", flush=True)
            self.previous_game = game
        self.results = self.model.update_params(frame)
        self.results["floor_psnr"] = self.floor.update(self.results["input"])
        with self.tensorboard():
            self.logger.log_step(self.results, self.model)
        if self.config.eval_every and (step % self.config.eval_every == 0 or step == self.config.steps):
            self.score()
        if step % self.config.save_every == 0:
            self.save()
        position = self.schedule.position(step)
        fps = self.model.performance.fps
        if self.viewer is None:
            self.progress.update(self.results, fps, position, self.probe, game)
        elif self.viewer.due():
            return self.viewer.show(self.results, fps, position, game)
        return True

    def score(self, log: bool = True) -> None:
        """Score every probe set and the plasticity metrics at this step, without an update."""
        tags = scoring(self.model, self.probe_sets, self.stream.game or self.schedule.game_at(self.model.step + 1),
                       self.results)
        if log:
            with self.tensorboard():
                self.logger.log_scalars(tags, self.model.step)
        self.probe = {g: tags[f"probe/psnr/{g}"] for g in self.probe_sets}
        if self.viewer is not None:
            self.viewer.add_probe(self.model.step, self.probe)
        self.scored_step = self.model.step

    def save(self) -> None:
        save_checkpoint(self.checkpoint_path, self.model, self.config, self.schedule, str(self.log_dir), self.floor)
        self.saved_step = self.model.step

    def finish(self) -> None:
        """The last step's scoring (unless done), then the final save and closing everything."""
        if self.config.eval_every and self.results is not None and self.scored_step != self.model.step:
            self.score()
        self.save()
        with self.tensorboard():
            self.logger.close(self.results, self.model)
        self.close_views()

    def abort(self) -> None:
        """After a failed write: still try the (atomic) final save, flush what TensorBoard can."""
        for attempt in (self.save, lambda: self.logger and self.logger.close(self.results, self.model)):
            try:
                attempt()
            except (WriteFailure, OSError):
                pass
        self.close_views()

    def close_views(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.viewer is not None:
            self.viewer.close()
        self.stream.close()


def quiet_tensorboard_thread(args) -> None:
    """threading.excepthook: TensorBoard's writer thread re-raises its write error in the
    main thread, which ends the run with one line; its own traceback would be noise."""
    if type(args.thread).__name__ != "_AsyncWriterThread" or not issubclass(args.exc_type, OSError):
        threading.__excepthook__(args)


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
        print(f"checkpoint {config.checkpoint} is already at step {start_step} >= --steps {config.steps}; nothing to do")
        return 0
    stop = StopFlag()  # from here on, Ctrl+C and SIGTERM end the run with a save
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past a file-size limit a write fails instead of killing us
    threading.excepthook = quiet_tensorboard_thread
    device = resolve_device(config.device)
    model = build_model(config, checkpoint, device)
    window = config.window == "on" or (config.window == "auto" and display_usable())

    games = ", ".join(f"{g} ({env_id(g)})" for g in schedule.games)
    every = f", {schedule.switch_every} steps each" if len(schedule.games) > 1 else ""
    print(f"game: {games}{every}  seed: {config.seed}")
    print(f"device: {device}  optimizer: {model.optimizer_name} (lr {model.lr:g})")
    print(f"log folder: {log_dir}")
    if checkpoint:
        print(f"resumed from {config.checkpoint} at step {start_step}")

    server = None
    if config.tensorboard:
        server, url = start_tensorboard(log_dir)
        print(f"TensorBoard: {url}", flush=True)
    live = None
    try:
        live = LiveRun(config, model, schedule, log_dir, checkpoint, window)
        while not stop and not (config.steps and model.step >= config.steps):
            if not live.step():
                stop.reason = "quit key"
        live.finish()
    except WriteFailure as failure:
        if live is not None:
            live.abort()
        saved = live.saved_step if live is not None else (start_step if checkpoint else None)
        if saved is not None:
            intact = f"the checkpoint at step {saved} is intact"
        else:
            intact = "the checkpoint file already there is intact" if Path(config.checkpoint).exists() \
                else "no checkpoint was saved"
        sys.stdout.flush()
        print(f"error: {failure}; {intact}", file=sys.stderr, flush=True)
        return 1
    except BaseException:
        if live is not None:
            live.abort()
        raise
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    ended = f"stopped by {stop.reason}" if stop else f"reached step {model.step}"
    redraws = f" ({live.viewer.redraws} window redraws)" if live.viewer is not None else ""
    print(f"{ended}; saved {live.checkpoint_path} at step {model.step}{redraws}")
    return 0


def main() -> None:
    try:
        sys.exit(run())
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""What keeps a live run safe: one-line errors, the checkpoint file and its lock, signals,
failed writes, and the optional TensorBoard server.

A bad flag or checkpoint is a UsageError (one line, exit status 2, nothing touched); a
failed checkpoint or TensorBoard write is a WriteFailure (one line, exit status 1, the
checkpoint on disk left intact). Checkpoints are written atomically and loaded safely
(`weights_only=True`), and one lock per checkpoint keeps two runs from sharing it.
"""

import fcntl
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch

from autoencoder import StreamingAutoEncoder
from metrics import OnlineFloor
from model import ModelConfig
from stream import Schedule

CHECKPOINT_FORMAT = 3
START_OVER = "start over with --fresh, or pick another --checkpoint"


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2, nothing touched."""


class WriteFailure(Exception):
    """A checkpoint or TensorBoard write failed (disk full, a file-size limit, a read-only
    folder): the run ends with one line and exit status 1."""

    def __init__(self, path, error: OSError):
        super().__init__(f"could not write {path} ({error.strerror or error})")


def check_writable_folder(path: Path, what: str) -> None:
    """Fail now, before training, if `path` (a folder to create) cannot exist."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {path} cannot be created: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise UsageError(f"{what} {path} cannot be created: {parent} is not writable")
            return


# The checkpoint file -------------------------------------------------------------------------


def load_checkpoint(path: Path) -> dict:
    """A validated checkpoint dict; UsageError naming the problem otherwise."""
    if path.stat().st_size == 0:
        raise UsageError(f"checkpoint {path} is empty; {START_OVER}")
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
        raise UsageError(f"checkpoint {path} cannot be loaded: {reason}; {START_OVER}") from None
    required = {"format_version", "model", "optimizer", "step", "game", "seed", "config", "architecture"}
    if not isinstance(checkpoint, dict) or not required <= checkpoint.keys():
        raise UsageError(f"checkpoint {path} is not a checkpoint of this tool (a foreign torch file); {START_OVER}")
    if checkpoint["format_version"] != CHECKPOINT_FORMAT:
        raise UsageError(
            f"checkpoint {path} has format {checkpoint['format_version']}, "
            f"this version reads {CHECKPOINT_FORMAT}; {START_OVER}"
        )
    return checkpoint


def save_checkpoint(
    path: Path, model: StreamingAutoEncoder, config, schedule: Schedule, log_dir: str, floor: OnlineFloor | None = None
) -> None:
    """Atomic save: temp file in the same folder, fsync, rename, fsync the folder.

    `config` is main.py's Config (a dataclass of every flag). The checkpoint is serialised
    in memory first, so a failed write is a plain OSError, raised as WriteFailure; the file
    already on disk is never touched before the rename.
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
        "method_state": model.method.state_dict(),
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


def merge_with_checkpoint(config, given: set[str], checkpoint: dict):
    """Flags not given take the checkpoint's values; contradictions are errors."""
    saved = checkpoint["config"]
    architecture = checkpoint["architecture"]
    saved_architecture = {"method": "none", **architecture}  # checkpoints made before methods: none
    for flag in ("latent_channels", "latent_bits", "optimizer", "method"):
        if flag in given and getattr(config, flag) != saved_architecture[flag]:
            raise UsageError(
                f"--{flag.replace('_', '-')} {getattr(config, flag)} contradicts the checkpoint's "
                f"{saved_architecture[flag]}; {START_OVER}"
            )
    resumable = {
        "seed",
        "lr",
        "latent_channels",
        "latent_bits",
        "optimizer",
        "save_every",
        "log_every",
        "image_every",
        "histogram_every",
        "compile",
        "eval_every",
        "probe_frames",
        "display_fps",
    }
    values = {k: saved[k] for k in resumable if k in saved and k not in given}
    values["latent_channels"] = architecture["latent_channels"]
    values["latent_bits"] = architecture["latent_bits"]
    values["optimizer"] = architecture["optimizer"]
    values["method"] = saved_architecture["method"]
    if "method_option" not in given:
        values["method_option"] = [f"{k}={v}" for k, v in architecture.get("method_options", {}).items()]
    if "game" not in given:
        values["game"] = ",".join(checkpoint["schedule"]["games"])
    if "switch_every" not in given:
        values["switch_every"] = checkpoint["schedule"]["switch_every"]
    return replace(config, **values)


def restore_model(
    checkpoint: dict,
    lr: float | None,
    device: torch.device,
    compile: bool,
    path: str,
    method_options: list[str] | None = None,
) -> StreamingAutoEncoder:
    """The learner saved in `checkpoint` (weights, optimizer and method state, step), its
    method's options `method_options` where given; UsageError when it does not fit this
    code's model."""
    architecture = dict(checkpoint["architecture"])
    optimizer = architecture.pop("optimizer")
    method = architecture.pop("method", "none")
    options = method_options if method_options is not None else architecture.pop("method_options", {})
    architecture.pop("method_options", None)
    try:
        model_config = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in architecture.items()})
        model = StreamingAutoEncoder(
            model_config,
            optimizer=optimizer,
            lr=lr,
            device=device,
            compile=compile,
            method=method,
            method_options=options,
        )
        model.load_state_dict(checkpoint["model"])
        model.optimizer.load_state_dict(checkpoint["optimizer"])
        model.method.load_state_dict(checkpoint.get("method_state", {}))
        for group in model.optimizer.param_groups:
            group["lr"] = model.lr
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"checkpoint {path} does not fit this model ({first_line}); {START_OVER}") from None
    model.step = int(checkpoint["step"])
    return model


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
        raise UsageError(
            f"checkpoint {path} is in use by another run (pid {holder}); wait for it to end, "
            "or pick another --checkpoint"
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor


# Signals and failed writes -------------------------------------------------------------------


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

    def ignore_further(self) -> None:
        """After the final save: ignore SIGINT/SIGTERM for the rest of the process. While the
        interpreter shuts down, Python puts its own handlers back to the default one (but leaves
        an ignored signal ignored), so a repeated Ctrl+C arriving then would kill a run that
        has already saved and finished."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def quiet_tensorboard_thread(args) -> None:
    """threading.excepthook: TensorBoard's writer thread re-raises its write error in the
    main thread, which ends the run with one line; its own traceback would be noise."""
    if type(args.thread).__name__ != "_AsyncWriterThread" or not issubclass(args.exc_type, OSError):
        threading.__excepthook__(args)


def report_failed_writes() -> None:
    """Make every failed write an OSError that ends the run in one line: past a file-size
    limit a write fails instead of killing the process (SIGXFSZ), and TensorBoard's writer
    thread stays quiet about the error it hands to the main thread."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    threading.excepthook = quiet_tensorboard_thread


def start_tensorboard(log_dir: Path) -> tuple[subprocess.Popen, str]:
    """A real TensorBoard server on 127.0.0.1 at a free port, showing every run beside this one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(log_dir.parent),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--reload_interval",
        "2",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return server, f"http://127.0.0.1:{port}/"

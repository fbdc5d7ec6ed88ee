"""Drive the real main.py in a subprocess, as a user would."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

MAIN = str(ROOT / "main.py")


def main_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_main(args: list[str], cwd: Path, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, MAIN, *args], cwd=cwd, env=main_env(**env), capture_output=True, text=True, timeout=timeout
    )


def call_main(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """main.py's command line run in this process, for input it refuses before a run starts:
    its exit status and what it printed, as `run_main` reports them, without a second
    interpreter's start-up."""
    import contextlib
    import io

    import main

    out, err = io.StringIO(), io.StringIO()
    previous, argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    sys.argv = [MAIN, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main.main()
                status = 0
            except SystemExit as exit:
                status = exit.code
    finally:
        os.chdir(previous)
        sys.argv = argv
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


def start_main(args: list[str], cwd: Path, **env) -> subprocess.Popen:
    """A run in its own process group, so signals go to the group as a terminal sends them."""
    return subprocess.Popen(
        [sys.executable, MAIN, *args],
        cwd=cwd,
        env=main_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def signal_group(process: subprocess.Popen, sig: int) -> None:
    os.killpg(process.pid, sig)


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def read_scalars(log_dir: Path) -> dict:
    """Every tag in a run folder, read back with TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(log_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def checkpoint_step(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["step"])


__all__ = ["run_main", "start_main", "signal_group", "wait_for", "read_scalars", "checkpoint_step", "signal"]

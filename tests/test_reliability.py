"""Nothing lost under signals, crashes, bad checkpoints and bad input: real main.py runs."""

import os
import pickle
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import call_main, checkpoint_step, read_scalars, run_main, signal_group, start_main, wait_for
from torch import nn

import main
import runtime
from autoencoder import StreamingAutoEncoder, create_streaming_ae
from model import ModelConfig
from stream import Schedule

pytestmark = pytest.mark.slow  # end-to-end: real main.py / bench.py processes

HEADLESS = ["--window", "off", "--game", "Breakout", "--seed", "5", "--eval-every", "0"]  # no probe scoring


def _started(process) -> bool:
    """Block until the run has learned its first frame (the progress line of step 1)."""
    return wait_for(lambda: " step 1" in process.stdout.readline(), 120, interval=0)


def _last_logged_step(log_dir: Path) -> int:
    return read_scalars(log_dir).Scalars("loss/total")[-1].step


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_flushes_and_exits_zero(tmp_path, sig):
    process = start_main([*HEADLESS, "--save-every", "100000", "--log-dir", "runs/r"], tmp_path)
    assert _started(process)
    signal_group(process, sig)
    assert process.wait(timeout=120) == 0, process.stderr.read()
    step = checkpoint_step(tmp_path / "quick_demo_model.pth")
    assert step > 0
    assert _last_logged_step(tmp_path / "runs" / "r") == step
    assert f"stopped by {sig.name}" in process.stdout.read()


def test_a_double_ctrl_c_never_breaks_the_save(tmp_path):
    process = start_main([*HEADLESS, "--save-every", "100000", "--log-dir", "runs/r"], tmp_path)
    assert _started(process)
    signal_group(process, signal.SIGINT)
    time.sleep(0.05)
    signal_group(process, signal.SIGINT)
    time.sleep(0.05)
    signal_group(process, signal.SIGINT)
    assert process.wait(timeout=120) == 0, process.stderr.read()
    step = checkpoint_step(tmp_path / "quick_demo_model.pth")
    assert step > 0 and _last_logged_step(tmp_path / "runs" / "r") == step


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    checkpoint = tmp_path / "quick_demo_model.pth"
    last = 0
    for delay in (0.5, 2.3):
        process = start_main([*HEADLESS, "--save-every", "1"], tmp_path)
        assert _started(process)
        wait_for(lambda: checkpoint.exists() and checkpoint_step(checkpoint) > last, 60)
        time.sleep(delay)
        signal_group(process, signal.SIGKILL)
        process.wait(timeout=30)
        step = checkpoint_step(checkpoint)
        assert step > last
        last = step
    resumed = run_main([*HEADLESS, "--steps", str(last + 3)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from quick_demo_model.pth at step {last}" in resumed.stdout
    assert checkpoint_step(checkpoint) == last + 3


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _valid_checkpoint(path: Path, model: StreamingAutoEncoder | None = None) -> None:
    config, _ = main.parse_args(["--seed", "1", "--game", "Breakout"])
    runtime.save_checkpoint(path, model or create_streaming_ae(), config, Schedule(("Breakout",), 5000), "runs/x")


def _bad_checkpoint(kind: str, path: Path, marker: Path) -> None:
    if kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _valid_checkpoint(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "foreign":
        torch.save(nn.Linear(3, 3).state_dict(), path)
    elif kind == "incompatible":
        _valid_checkpoint(path, StreamingAutoEncoder(ModelConfig(encoder_widths=(4, 8))))
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["architecture"]["encoder_widths"] = ModelConfig().encoder_widths
        torch.save(checkpoint, path)
    elif kind == "older format":
        _valid_checkpoint(path)
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["format_version"] = runtime.CHECKPOINT_FORMAT - 1
        torch.save(checkpoint, path)
    elif kind == "code":
        with open(path, "wb") as file:
            pickle.dump({"model": _RunsCode(str(marker))}, file)


@pytest.mark.parametrize(
    "kind", ["random bytes", "empty", "truncated", "foreign", "incompatible", "older format", "code"]
)
def test_a_bad_checkpoint_is_refused_in_one_line_and_left_untouched(tmp_path, kind):
    path, marker = tmp_path / "quick_demo_model.pth", tmp_path / "code_ran"
    _bad_checkpoint(kind, path, marker)
    before = path.read_bytes()
    result = call_main([*HEADLESS, "--steps", "5"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "--fresh" in lines[0] and "checkpoint" in lines[0]
    assert path.read_bytes() == before
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()


def _flag_cases():
    cases = [
        ("negative steps", ["--steps", "-1"], "--steps"),
        ("unknown device", ["--device", "tpu"], "--device"),
        ("log folder under a file", ["--log-dir", "afile/runs"], "afile"),
        ("checkpoint under a file", ["--checkpoint", "afile/c.pth"], "afile"),
        ("unknown optimizer", ["--optimizer", "lbfgs"], "--optimizer"),
        ("latent bits out of range", ["--latent-bits", "17"], "--latent-bits"),
    ]
    if not torch.cuda.is_available():
        cases.append(("cuda without a GPU", ["--device", "cuda"], "CUDA"))
    return cases


@pytest.mark.parametrize("name, flags, named", _flag_cases(), ids=[c[0] for c in _flag_cases()])
def test_bad_flags_exit_2_before_anything_is_touched(tmp_path, name, flags, named):
    (tmp_path / "afile").write_text("a regular file")
    _valid_checkpoint(tmp_path / "quick_demo_model.pth")
    before = (tmp_path / "quick_demo_model.pth").read_bytes()
    result = call_main(["--window", "off", *flags], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert (tmp_path / "quick_demo_model.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "quick_demo_model.pth"]


def test_latent_bits_against_the_checkpoints_exit_2_and_leave_it_untouched(tmp_path):
    _valid_checkpoint(tmp_path / "quick_demo_model.pth")
    before = (tmp_path / "quick_demo_model.pth").read_bytes()
    result = call_main(["--window", "off", "--latent-bits", "4"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--latent-bits 4 contradicts the checkpoint's 8" in lines[0], result.stderr
    assert (tmp_path / "quick_demo_model.pth").read_bytes() == before
    assert not (tmp_path / "runs").exists()


def test_skipped_updates_are_counted_in_tensorboard(tmp_path, breakout_frames):
    torch.manual_seed(0)
    model = create_streaming_ae(use_tensorboard=True, log_dir=str(tmp_path))
    model.update_params(breakout_frames[0])
    poisoned = torch.full((1, 3, 224, 224), float("nan"))
    results = model.update_params(poisoned)
    model.update_params(breakout_frames[1])
    model.logger.close(results, model)
    skipped = [(e.step, e.value) for e in read_scalars(tmp_path).Scalars("optim/skipped")]
    assert skipped == [(1, 0.0), (2, 1.0), (3, 0.0)]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_second_run_on_a_locked_checkpoint_exits_2_and_a_killed_holder_never_blocks(tmp_path):
    holder = start_main([*HEADLESS, "--save-every", "100000", "--log-dir", "runs/r"], tmp_path)
    try:
        assert _started(holder)
        second = call_main([*HEADLESS, "--steps", "3"], tmp_path)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "in use" in lines[0], second.stderr
        assert holder.poll() is None  # the first run is unharmed and goes on
        checkpoint = tmp_path / "quick_demo_model.pth"
        checkpoint.write_bytes(b"not a checkpoint")  # the lock is taken before the load: the file is not read
        blocked = call_main([*HEADLESS, "--steps", "3"], tmp_path)
        assert blocked.returncode == 2 and "in use" in blocked.stderr and "corrupt" not in blocked.stderr
        signal_group(holder, signal.SIGINT)
        assert holder.wait(timeout=120) == 0
        first_step = checkpoint_step(tmp_path / "quick_demo_model.pth")
        assert first_step > 0
        killed = start_main([*HEADLESS, "--save-every", "100000"], tmp_path)
        assert _started(killed)
        signal_group(killed, signal.SIGKILL)
        killed.wait(timeout=30)
        after = run_main([*HEADLESS, "--steps", str(first_step + 2)], tmp_path)
        assert after.returncode == 0, after.stderr
        assert checkpoint_step(tmp_path / "quick_demo_model.pth") == first_step + 2
    finally:
        if holder.poll() is None:
            holder.kill()


def _limited(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("what, limit", [("checkpoint", 700_000), ("event file", 150_000)])
def test_a_write_past_a_file_size_limit_ends_in_one_line_and_keeps_the_checkpoint(tmp_path, what, limit):
    """The checkpoint is about 1 MB; the TensorBoard event file passes 150 kB within its first images."""
    import subprocess
    import sys

    from helpers import MAIN, main_env

    first = run_main([*HEADLESS, "--steps", "30", "--log-dir", "runs/r"], tmp_path)
    assert first.returncode == 0, first.stderr
    checkpoint = tmp_path / "quick_demo_model.pth"
    before = checkpoint.read_bytes()
    assert len(before) > 700_000
    limited = subprocess.run(
        [
            sys.executable,
            MAIN,
            *HEADLESS,
            "--steps",
            "400",
            "--save-every",
            "50",
            "--image-every",
            "10",
        ],
        cwd=tmp_path,
        env=main_env(),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limited(limit),
    )
    assert limited.returncode == 1, limited.stderr
    last = limited.stderr.strip().splitlines()[-1]
    named = "quick_demo_model.pth" if what == "checkpoint" else "events.out.tfevents"
    assert last.startswith("error: could not write ") and named in last, limited.stderr
    assert last.endswith("the checkpoint at step 30 is intact") and "Traceback" not in limited.stderr
    assert checkpoint.read_bytes() == before


def test_a_checkpoint_in_a_new_folder_is_created_with_its_lock(tmp_path):
    result = run_main([*HEADLESS, "--steps", "2", "--checkpoint", "new/sub/c.pth"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert checkpoint_step(tmp_path / "new" / "sub" / "c.pth") == 2
    assert (tmp_path / "new" / "sub" / "c.pth.lock").exists()

"""The frame loop with each observer: real ALE streams, real learners (small ones), real files."""

import math
import os

import pytest
import torch
from helpers import read_scalars

import main
import observers
from autoencoder import StreamingAutoEncoder
from loop import FrameLoop, Observer
from metrics import OnlineFloor
from model import ModelConfig
from observers import (
    CheckpointSaver,
    HeldOutFrames,
    LiveView,
    MemorySamples,
    OnlineFloorScore,
    PrequentialRecord,
    ProbeScoring,
    ProgressBar,
    StageTimes,
    TensorBoardLog,
)
from runtime import UsageError, lock_checkpoint
from stream import FrameStream, Schedule, collect_frames, probe_frames

SMALL = ModelConfig(encoder_widths=(4, 4), decoder_width=8, upsampled_width=4)
SPEC_SCALARS = {
    "loss/total",
    "loss/mse",
    "loss/l1",
    "loss/ssim",
    "quality/psnr",
    "quality/floor_psnr",
    "perf/fps",
    "perf/step_ms",
    "optim/step_size",
    "optim/skipped",
    "change/fraction",
}


def small_learner(seed: int = 0) -> StreamingAutoEncoder:
    torch.manual_seed(seed)
    return StreamingAutoEncoder(SMALL)


class Recorder(Observer):
    """Every hook call, in order, as (hook, step, detail)."""

    def __init__(self, stop_at: int | None = None):
        self.calls, self.stop_at = [], stop_at

    def on_start(self, loop):
        self.calls.append(("start", loop.step, None))

    def on_switch(self, loop, step, stream, previous, game):
        self.calls.append(("switch", step, (stream, previous, game)))

    def on_step(self, loop, step, results):
        self.calls.append(("step", step, None))
        return step != self.stop_at

    def on_scores(self, loop, step, scores, log):
        self.calls.append(("scores", step, (sorted(scores), log)))

    def on_end(self, loop):
        self.calls.append(("end", loop.step, None))

    def on_abort(self, loop):
        self.calls.append(("abort", loop.step, None))

    def hooks(self, name: str) -> list:
        return [(step, detail) for hook, step, detail in self.calls if hook == name]


def test_the_loop_calls_every_hook_in_order_and_an_observer_can_stop_it():
    recorder = Recorder(stop_at=3)
    loop = FrameLoop(small_learner(), FrameStream(Schedule(("Breakout", "Pong"), 2), 1), [recorder])
    assert loop.run(steps=10) is False  # the observer asked to stop
    assert [hook for hook, _, _ in recorder.calls] == ["start", "step", "step", "switch", "step", "end"]
    assert recorder.hooks("switch") == [(3, (0, "Breakout", "Pong"))]
    assert loop.step == loop.learner.step == 3 and loop.sources[0].env is None  # sources closed at the end


def test_a_resumed_loop_hears_a_switch_only_into_another_game():
    recorder = Recorder()
    FrameLoop(small_learner(), FrameStream(Schedule(("Pong",), 9), 1), [recorder], step=4, games=["Breakout"]).run(5)
    assert recorder.hooks("switch") == [(5, (0, "Breakout", "Pong"))]
    same = Recorder()
    FrameLoop(small_learner(), FrameStream(Schedule(("Pong",), 9), 1), [same], step=4, games=["Pong"]).run(5)
    assert same.hooks("switch") == []


def test_a_failure_aborts_every_observer_in_reverse_order_and_is_raised():
    class Failing(Observer):
        def on_step(self, loop, step, results):
            if step == 2:
                raise OSError("disk full")

    first, last = Recorder(), Recorder()
    order = []
    first.on_abort = lambda loop: order.append("first")
    last.on_abort = lambda loop: order.append("last")
    loop = FrameLoop(small_learner(), FrameStream(Schedule(("Breakout",), 9), 1), [first, Failing(), last])
    with pytest.raises(OSError, match="disk full"):
        loop.run(steps=5)
    assert order == ["last", "first"] and loop.step == 2 and loop.sources[0].env is None


def test_the_tensorboard_observer_writes_every_spec_tag_at_its_cadence(tmp_path):
    log = TensorBoardLog(
        tmp_path, scalar_every=1, image_every=2, histogram_every=3, settings={"seed": 1}, events=[("a note", 0)]
    )
    loop = FrameLoop(
        small_learner(), FrameStream(Schedule(("Breakout", "Pong"), 2), 1), [OnlineFloorScore(OnlineFloor()), log]
    )
    loop.run(steps=5)
    events = read_scalars(tmp_path)
    tags = events.Tags()
    assert SPEC_SCALARS <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4, 5]
    assert [e.step for e in events.Scalars("quality/floor_psnr")] == [2, 3, 4, 5]  # no floor before a second frame
    assert [e.step for e in events.Images("frames/input_reconstruction")] == [1, 2, 4, 5]  # first, every 2nd, last
    assert {"frames/change_mask", "features/3x3", "features/5x5", "features/7x7"} <= set(tags["images"])
    assert [e.step for e in events.Histograms("params/network.decoder.fuse.weight")] == [1, 3, 5]
    texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors("events/text_summary")]
    assert sorted(texts) == [(0, "a note"), (3, "switched to Pong at step 3"), (5, "switched to Breakout at step 5")]
    assert "config/text_summary" in tags["tensors"]


def test_probe_scoring_reports_at_start_every_n_steps_and_at_the_last_step(tmp_path):
    probes = {g: probe_frames(g, 1, 2) for g in ("Breakout", "Pong")}
    recorder = Recorder()
    log = TensorBoardLog(tmp_path, 1, 100, 100)
    scoring = ProbeScoring(probes, Schedule(("Breakout", "Pong"), 3), every=2, last_step=3)
    FrameLoop(small_learner(), FrameStream(Schedule(("Breakout", "Pong"), 3), 1), [log, scoring, recorder]).run(3)
    scored = recorder.hooks("scores")
    assert [step for step, _ in scored] == [0, 0, 2, 3]  # floors, the start, every 2nd step, the last (not twice)
    assert scored[0][1] == (["probe/floor/Breakout", "probe/floor/Pong"], True)
    assert "plasticity/upgd" not in scored[1][1][0] and "plasticity/upgd" in scored[2][1][0]
    logged = read_scalars(tmp_path)
    assert [e.step for e in logged.Scalars("probe/psnr/Pong")] == [0, 2, 3]
    assert [e.step for e in logged.Scalars("plasticity/dormant_fraction")] == [0, 2, 3]


def test_a_resumed_probe_scoring_shows_its_first_scores_without_logging_them(tmp_path):
    probes = {"Breakout": probe_frames("Breakout", 1, 2)}
    recorder, log = Recorder(), TensorBoardLog(tmp_path, 1, 100, 100, resumed_at=6)
    scoring = ProbeScoring(probes, Schedule(("Breakout",), 9), every=8, floors=False, log_start=False)
    view = LiveView(Schedule(("Breakout",), 9), window=False, display_fps=10, steps=0)
    FrameLoop(
        small_learner(),
        FrameStream(Schedule(("Breakout",), 9), 1),
        [log, scoring, view, recorder],
        step=6,
        games=["Breakout"],
    ).run(8)
    assert [(step, logged) for step, (_, logged) in recorder.hooks("scores")] == [(6, False), (8, True)]
    assert [e.step for e in read_scalars(tmp_path).Scalars("probe/psnr/Breakout")] == [8]
    assert set(view.probe) == {"Breakout"}


def test_probe_scoring_of_the_probe_sets_alone_at_segment_ends_keeps_its_history():
    probes = {g: probe_frames(g, 1, 2) for g in ("Breakout", "Pong")}
    schedule = Schedule(("Breakout", "Pong"), 3)
    scoring = ProbeScoring(probes, schedule, every=0, floors=False, plasticity=False, segment_ends=True, keep=True)
    loop = FrameLoop(small_learner(), FrameStream(schedule, 1), [scoring])
    loop.run(7)
    assert [step for step, _ in scoring.history] == [0, 3, 6, 7]  # the start, each segment end, the end
    assert all(set(scores) == {"probe/psnr/Breakout", "probe/psnr/Pong"} for _, scores in scoring.history)
    assert scoring.history[-1][1]["probe/psnr/Pong"] == pytest.approx(
        10 * math.log10(1 / loop.learner.evaluate(probes["Pong"]).mean().item())
    )


def test_a_benchmark_records_each_streams_mse_its_last_frames_and_the_held_out_frames_after_them(capsys):
    learner = StreamingAutoEncoder.stack([small_learner(0), small_learner(1)])
    record, heldout = PrequentialRecord(2, 4, tail=2), HeldOutFrames(3, lambda frame: frame[:2])
    bar = ProgressBar(4, "packed", mininterval=0, postfix=lambda step: {"at": f"{step}"}, every=2)
    sources = [FrameStream(Schedule(("Breakout",), 1), 1), FrameStream(Schedule(("Pong",), 1), 2)]
    loop = FrameLoop(learner, sources, [record, heldout, bar])
    loop.run(4)
    assert record.mses[:, 3].tolist() == pytest.approx(loop.results["mse"].tolist())
    assert record.tail_start == 2 and record.tail_frames.shape == (2, 2, 224, 224, 3)
    last = (loop.results["input"][1].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert (record.tail_frames[1, -1] == last).all()
    following = collect_frames("Pong", 7, seed=2)[4:]  # the frames after the 4 learned ones
    assert all((mine == theirs[:2]).all() for mine, theirs in zip(heldout.frames[1], following))
    assert len(heldout.frames) == 2 and len(heldout.frames[0]) == 3 and loop.sources[1].env is None
    progress = capsys.readouterr().err
    assert "packed: 100%" in progress and "4/4" in progress and "at=4" in progress


def test_the_checkpoint_observer_saves_every_n_steps_and_at_the_end(tmp_path, monkeypatch):
    saved = []
    real_save = observers.save_checkpoint
    monkeypatch.setattr(
        observers,
        "save_checkpoint",
        lambda path, model, *rest: (saved.append(model.step), real_save(path, model, *rest)),
    )
    config = main.parse_args(["--seed", "1", "--game", "Breakout"])[0]
    schedule = Schedule(("Breakout",), 9)
    saver = CheckpointSaver(tmp_path / "c.pth", 2, config, schedule, tmp_path / "runs", OnlineFloor())
    FrameLoop(small_learner(), FrameStream(schedule, 1), [saver]).run(steps=5)
    assert saved == [2, 4, 5] and saver.saved_step == 5
    checkpoint = torch.load(tmp_path / "c.pth", weights_only=True)
    assert checkpoint["step"] == 5 and checkpoint["game"] == "Breakout"
    assert checkpoint["log_dir"] == str(tmp_path / "runs") and checkpoint["online_floor"]["count"] == 0


def test_the_checkpoint_observer_saves_after_a_failure_but_not_before_the_run_began(tmp_path):
    class FailAt(Observer):
        def __init__(self, hook):
            self.hook = hook

        def on_start(self, loop):
            if self.hook == "start":
                raise OSError("no room")

        def on_step(self, loop, step, results):
            if self.hook == "step" and step == 3:
                raise OSError("no room")

    config = main.parse_args(["--seed", "1"])[0]
    schedule = Schedule(("Breakout",), 9)
    for hook, expected in (("start", None), ("step", 3)):
        path = tmp_path / f"{hook}.pth"
        saver = CheckpointSaver(path, 100, config, schedule, tmp_path, OnlineFloor())
        with pytest.raises(OSError):
            FrameLoop(small_learner(), FrameStream(schedule, 1), [FailAt(hook), saver]).run(steps=5)
        assert saver.saved_step == expected
        assert (torch.load(path, weights_only=True)["step"] if path.exists() else None) == expected


def test_one_run_per_checkpoint_lock(tmp_path):
    path = tmp_path / "c.pth"
    held = lock_checkpoint(path)
    try:
        with pytest.raises(UsageError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            lock_checkpoint(path)
    finally:
        os.close(held)
    os.close(lock_checkpoint(path))  # released with its holder


def test_the_headless_view_prints_progress_and_each_switch(capsys):
    view = LiveView(Schedule(("Breakout", "Pong"), 2), window=False, display_fps=10, steps=3)
    assert FrameLoop(small_learner(), FrameStream(Schedule(("Breakout", "Pong"), 2), 1), [view]).run(3) is True
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Breakout (1/2, 1/2) step 1/3 ") and "PSNR" in lines[0]
    assert "switching game: Breakout -> Pong at step 3" in lines
    assert view.viewer is None


def test_stage_times_and_memory_samples_cover_every_step():
    stages, memory = StageTimes(), MemorySamples(every=2, warmup=1)
    FrameLoop(small_learner(), FrameStream(Schedule(("Breakout",), 9), 1), [stages, memory]).run(steps=3)
    assert set(stages.samples) == {"frames", "preprocess", "forward", "backward", "optimizer", "observers"}
    assert all(len(times) == 3 and min(times) >= 0 for times in stages.samples.values())
    assert [step for step, _ in memory.samples] == [1, 2] and all(mb > 10 for _, mb in memory.samples)


def test_a_two_stream_learner_cuts_only_the_stream_whose_game_switched():
    learner = StreamingAutoEncoder.stack([small_learner(0), small_learner(1)])
    cuts = []
    real_forget = learner.forget_previous_frame
    learner.forget_previous_frame = lambda streams=None: (
        cuts.append((recorder_steps(), streams)),
        real_forget(streams),
    )
    sources = [FrameStream(Schedule(("Breakout", "Pong"), 2), 1), FrameStream(Schedule(("Breakout",), 9), 2)]
    recorder, masks = Recorder(), []

    class Masks(Observer):
        def on_step(self, loop, step, results):
            masks.append(results["change_mask"].flatten(1).sum(1).tolist())

    def recorder_steps():
        return len(recorder.hooks("step")) + 1

    probes = {g: probe_frames(g, 2, 2) for g in ("Breakout",)}
    second = ProbeScoring(probes, Schedule(("Breakout",), 9), every=2, floors=False, stream=1)
    loop = FrameLoop(learner, sources, [recorder, Masks(), second])
    loop.run(steps=4)
    assert cuts == [(1, [0, 1]), (3, [0])]
    assert recorder.hooks("switch") == [(3, (0, "Breakout", "Pong"))]
    assert masks[2][0] == 0  # stream 0 entered Pong: no motion across the cut
    assert loop.games == ["Pong", "Breakout"] and loop.results["loss"].shape == (2,)
    assert [step for step, _ in recorder.hooks("scores")] == [0, 2, 4]
    assert "plasticity/upgd" in recorder.hooks("scores")[1][1][0]
    view = learner.view(1)
    assert second.scored_step == 4 and second.latest["probe/psnr/Breakout"] == pytest.approx(
        10 * math.log10(1 / view.evaluate(probes["Breakout"]).mean().item())
    )

"""The frame loop's observers, one per concern (hooks in `loop.Observer`).

The live viewer runs, in this order: OnlineFloorScore, TensorBoardLog, ProbeScoring,
CheckpointSaver, LiveView. A benchmark picks what it needs: StageTimes, MemorySamples,
ProgressBar, PrequentialRecord and HeldOutFrames among them. Unless they say otherwise,
they observe a single learner.
"""

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from continual import probe_psnrs, scoring
from loop import FrameLoop, Observer
from metrics import OnlineFloor, floor_psnr
from monitoring import HISTOGRAM_EVERY, IMAGE_EVERY, SCALAR_EVERY, TensorBoardLogger
from runtime import WriteFailure, save_checkpoint
from stream import Schedule
from utils import FRAME_SIZE
from viewer import Progress, Viewer


class OnlineFloorScore(Observer):
    """Adds `floor_psnr` to each update's results: the PSNR of the running mean of the
    stream's earlier frames as the prediction of this one (monitoring.OnlineFloor)."""

    def __init__(self, floor: OnlineFloor):
        self.floor = floor

    def on_step(self, loop: FrameLoop, step: int, results: dict) -> None:
        results["floor_psnr"] = self.floor.update(results["input"])


class TensorBoardLog(Observer):
    """Every update's scalars, images and histograms (monitoring.TensorBoardLogger, by
    default at its default cadence), every reported score, and switches of game as
    events. A resumed run (`resumed_at`, its start
    step) purges the steps after it that a crashed run left. `settings` go in as the config
    table, `events` as (text, step) events. A failed write is a WriteFailure naming the
    event file."""

    def __init__(
        self,
        log_dir: Path,
        scalar_every: int = SCALAR_EVERY,
        image_every: int = IMAGE_EVERY,
        histogram_every: int = HISTOGRAM_EVERY,
        resumed_at: int | None = None,
        settings: dict | None = None,
        events=(),
    ):
        self.log_dir, self.resumed_at = log_dir, resumed_at
        self.every = {"scalar_every": scalar_every, "image_every": image_every, "histogram_every": histogram_every}
        self.settings, self.events = settings, list(events)
        self.logger = None

    @contextmanager
    def writes(self):
        """A context in which a failed write becomes a WriteFailure naming the event file."""
        try:
            yield
        except OSError as error:
            raise WriteFailure(self.logger.event_file() if self.logger is not None else self.log_dir, error) from None

    def on_start(self, loop: FrameLoop) -> None:
        purge_step = None if self.resumed_at is None else self.resumed_at + 1
        with self.writes():
            self.logger = TensorBoardLogger(str(self.log_dir), purge_step=purge_step, **self.every)
            if self.settings is not None:
                self.logger.log_config(self.settings)
            for text, step in self.events:
                self.logger.log_event(text, step)

    def on_switch(self, loop: FrameLoop, step: int, stream: int, previous: str, game: str) -> None:
        with self.writes():
            self.logger.log_event(f"switched to {game} at step {step}", step)

    def on_step(self, loop: FrameLoop, step: int, results: dict) -> None:
        with self.writes():
            self.logger.log_step(results, loop.learner)

    def on_scores(self, loop: FrameLoop, step: int, scores: dict[str, float], log: bool) -> None:
        if log:
            with self.writes():
                self.logger.log_scalars(scores, step)

    def on_end(self, loop: FrameLoop) -> None:
        with self.writes():
            self.logger.close(loop.results, loop.learner)

    def on_abort(self, loop: FrameLoop) -> None:
        try:
            if self.logger is not None:
                self.logger.close(loop.results, loop.learner)
        except OSError:
            pass


class ProbeScoring(Observer):
    """Scores every probe set and the plasticity metrics (continual.scoring) without an
    update: at the start, every `every` steps (0: never), at step `last_step`, at each
    segment end of the schedule when `segment_ends`, and at the end, and reports them. At
    the start it also reports each set's mean-frame floor (`floors`) and logs the start's
    scores unless `log_start` is False (a resume: the run before logged them). Without
    `plasticity` it scores the probe sets only. `stream` picks one stream of a K-stream
    learner; `latest` holds the last scoring's scores (made at `scored_step`), and with
    `keep` `history` holds every scoring as (step, scores), for a caller that scores
    several streams."""

    def __init__(
        self,
        probe_sets: dict[str, torch.Tensor],
        schedule: Schedule,
        every: int,
        last_step: int = 0,
        floors: bool = True,
        log_start: bool = True,
        stream: int | None = None,
        plasticity: bool = True,
        segment_ends: bool = False,
        keep: bool = False,
    ):
        self.probe_sets, self.schedule, self.every, self.last_step = probe_sets, schedule, every, last_step
        self.floors, self.log_start, self.stream = floors, log_start, stream
        self.plasticity, self.segment_ends = plasticity, segment_ends
        self.latest: dict[str, float] = {}
        self.scored_step = None
        self.history: list[tuple[int, dict[str, float]]] | None = [] if keep else None

    def on_start(self, loop: FrameLoop) -> None:
        if self.floors:
            loop.report({f"probe/floor/{g}": floor_psnr(frames) for g, frames in self.probe_sets.items()})
        self.score(loop, log=self.log_start)

    def on_step(self, loop: FrameLoop, step: int, results: dict) -> None:
        if (
            (self.every and step % self.every == 0)
            or step == self.last_step
            or (self.segment_ends and step % self.schedule.switch_every == 0)
        ):
            self.score(loop)

    def on_end(self, loop: FrameLoop) -> None:
        if loop.results is not None and self.scored_step != loop.step:
            self.score(loop)

    def score(self, loop: FrameLoop, log: bool = True) -> None:
        k = self.stream or 0
        model, results = loop.learner, loop.results
        if self.stream is not None:
            model = loop.learner.view(k)
            results = None if results is None else loop.learner.stream_results(results, k)
        if self.plasticity:
            game = loop.sources[k].game or self.schedule.game_at(loop.step + 1)
            self.latest = scoring(model, self.probe_sets, game, results)
        else:
            self.latest = {f"probe/psnr/{g}": value for g, value in probe_psnrs(model, self.probe_sets).items()}
        self.scored_step = loop.step
        if self.history is not None:
            self.history.append((loop.step, self.latest))
        loop.report(self.latest, log=log)


class CheckpointSaver(Observer):
    """Saves the checkpoint (runtime.save_checkpoint: atomic) every `every` steps and at the
    end; after a failure it still tries, unless the run failed before it began.
    `saved_step` is the step of the checkpoint on disk (None: none saved or loaded)."""

    def __init__(
        self,
        path: Path,
        every: int,
        config,
        schedule: Schedule,
        log_dir: Path,
        floor: OnlineFloor,
        saved_step: int | None = None,
    ):
        self.path, self.every, self.config, self.schedule = path, every, config, schedule
        self.log_dir, self.floor, self.saved_step = log_dir, floor, saved_step
        self.started = False

    def on_start(self, loop: FrameLoop) -> None:
        self.started = True

    def on_step(self, loop: FrameLoop, step: int, results: dict) -> None:
        if step % self.every == 0:
            self.save(loop)

    def on_end(self, loop: FrameLoop) -> None:
        self.save(loop)

    def on_abort(self, loop: FrameLoop) -> None:
        if self.started:
            try:
                self.save(loop)
            except (WriteFailure, OSError):
                pass

    def save(self, loop: FrameLoop) -> None:
        save_checkpoint(self.path, loop.learner, self.config, self.schedule, str(self.log_dir), self.floor)
        self.saved_step = loop.step


class LiveView(Observer):
    """The window (viewer.Viewer, at most `display_fps` redraws a second) or, headless, the
    progress line (viewer.Progress, towards `steps`), and a printed line at each switch of
    game. Asks the loop to stop when the window is closed or q or Esc pressed."""

    def __init__(self, schedule: Schedule, window: bool, display_fps: float, steps: int):
        self.schedule = schedule
        self.viewer = Viewer(schedule.games, display_fps) if window else None
        self.progress = None if window else Progress(steps)
        self.probe: dict[str, float] = {}
        self.closed = False

    def on_switch(self, loop: FrameLoop, step: int, stream: int, previous: str, game: str) -> None:
        if self.viewer is not None:
            self.viewer.add_switch(step)
        if self.progress is not None:
            self.progress.close()
        print(f"switching game: {previous} -> {game} at step {step}", flush=True)

    def on_scores(self, loop: FrameLoop, step: int, scores: dict[str, float], log: bool) -> None:
        probe = {tag.split("/", 2)[2]: value for tag, value in scores.items() if tag.startswith("probe/psnr/")}
        if probe:
            self.probe = probe
            if self.viewer is not None:
                self.viewer.add_probe(step, probe)

    def on_step(self, loop: FrameLoop, step: int, results: dict) -> bool:
        position = self.schedule.position(step)
        fps = loop.learner.performance.fps
        if self.viewer is None:
            self.progress.update(results, fps, position, self.probe, loop.game)
        elif self.viewer.due():
            return self.viewer.show(results, fps, position, loop.game)
        return True

    def on_end(self, loop: FrameLoop) -> None:
        if self.closed:
            return
        self.closed = True
        if self.progress is not None:
            self.progress.close()
        if self.viewer is not None:
            self.viewer.close()

    on_abort = on_end


class StageTimes(Observer):
    """Milliseconds of each stage of every step, in `samples`: `frames` (the sources),
    update_params' own stages (`preprocess`, `forward`, `backward`, `optimizer`: an eager
    update of a single learner), and `observers` (the on_step of every observer). `sync`
    waits for the device before each reading."""

    def __init__(self, sync=lambda: None):
        self.sync = sync
        self.samples: dict[str, list[float]] = {}
        self._last = None

    def on_start(self, loop: FrameLoop) -> None:
        loop.stage_marks = self.mark
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.samples.setdefault(stage, []).append((now - self._last) * 1e3)
        self._last = now


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux's /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemorySamples(Observer):
    """Resident memory every `every` steps and at step `warmup`, in `samples` as (step, MiB)."""

    def __init__(self, every: int, warmup: int = 0):
        self.every, self.warmup = every, warmup
        self.samples: list[tuple[int, float]] = []

    def on_step(self, loop: FrameLoop, step: int, results: dict) -> None:
        if step % self.every == 0 or step == self.warmup:
            self.samples.append((step, round(resident_mb(), 1)))


class ProgressBar(Observer):
    """A tqdm bar on stderr towards `total` steps, from the first step on, one tick a step,
    redrawn at most every `mininterval` seconds on line `position`; every `every` steps
    `postfix(step)` (when given) sets the text after it, as keyword arguments of tqdm's
    set_postfix."""

    def __init__(self, total: int, desc: str, mininterval: float, position: int = 0, postfix=None, every: int = 0):
        self.total, self.desc, self.mininterval, self.position = total, desc, mininterval, position
        self.postfix, self.every = postfix, every
        self.bar = None

    def on_step(self, loop: FrameLoop, step: int, results: dict) -> None:
        if self.bar is None:  # drawn once the first step has made the envs: their banners would break its line
            self.bar = tqdm(
                total=self.total, desc=self.desc, file=sys.stderr, mininterval=self.mininterval, position=self.position
            )
        self.bar.update()
        if self.postfix is not None and self.every and step % self.every == 0:
            self.bar.set_postfix(**self.postfix(step))

    def on_end(self, loop: FrameLoop) -> None:
        if self.bar is not None:
            self.bar.close()

    on_abort = on_end


class PrequentialRecord(Observer):
    """Each stream's prequential MSE at steps 1..`steps` of a K-stream learner (K = 1: a
    lone learner given a list of one frame), in `mses` ((K, steps) float64, filled in
    place: 0-d tensors in a list fragment the heap), and the frames of the last `tail`
    of those steps as the learner saw them, in `tail_frames` ((K, tail, 224, 224, 3) uint8)."""

    def __init__(self, streams: int, steps: int, tail: int):
        self.tail_start = steps - tail
        self.mses = torch.empty(streams, steps, dtype=torch.float64)
        self.tail_frames = np.empty((streams, tail, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)

    def on_step(self, loop: FrameLoop, step: int, results: dict) -> None:
        self.mses[:, step - 1] = results["mse"]
        if step > self.tail_start:
            pixels = (results["input"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
            self.tail_frames[:, step - 1 - self.tail_start] = pixels.numpy()


class HeldOutFrames(Observer):
    """At the end, before the sources close: the `count` frames each source would give
    next, never learned, in `frames` (one list per stream, each frame passed through
    `transform`). For a source of one game, the frames that follow the last one learned."""

    def __init__(self, count: int, transform=lambda frame: frame):
        self.count, self.transform = count, transform
        self.frames: list[list] = []

    def on_end(self, loop: FrameLoop) -> None:
        steps = range(loop.step + 1, loop.step + self.count + 1)
        self.frames = [[self.transform(source.frame_for(step)[0]) for step in steps] for source in loop.sources]

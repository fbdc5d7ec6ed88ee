"""The frame loop: a frame source -> a cut at a switch -> one update -> the observers.

One loop serves the live viewer and the benchmarks. It learns from one source with a
single learner, or from K sources with a K-stream learner (one frame per stream and
step). Everything else (TensorBoard, probe scoring, checkpoints, the window, timing,
memory) is an observer: a small object with the hooks of `Observer`, called in the
order given.

A source has `frame_for(step) -> (frame, entered)`, `game` and `close()`, as
`stream.FrameStream` has. Entering a game (the first frame, a resume, a switch) is a cut:
the learner forgets the previous frame of that stream, so no motion is seen across it.
Observers hear of switches of game, not of every cut.
"""


class Observer:
    """The hooks of an observer; each does nothing unless overridden.

    `loop` is the FrameLoop that calls them: `loop.learner`, `loop.step` (the last step
    learned), `loop.games` (each stream's game), `loop.results` (the last update's).
    """

    def on_start(self, loop: "FrameLoop") -> None:
        """Before the first step."""

    def on_switch(self, loop: "FrameLoop", step: int, stream: int, previous: str, game: str) -> None:
        """Stream `stream` plays `game` from `step` on, after `previous`."""

    def on_step(self, loop: "FrameLoop", step: int, results: dict) -> bool | None:
        """After the update of `step`; `results` are update_params'. False asks the loop to stop."""

    def on_scores(self, loop: "FrameLoop", step: int, scores: dict[str, float], log: bool) -> None:
        """Scalars that an observer measured at `step` (`loop.report`), for the others to show
        and, unless `log` is False (a resumed run's first scoring, logged by the run before), log."""

    def on_end(self, loop: "FrameLoop") -> None:
        """After the last step of a normal end."""

    def on_abort(self, loop: "FrameLoop") -> None:
        """After a failure: save and flush what can be, raising nothing."""


class FrameLoop:
    """Learn frames from `sources` with `learner`, step after step, telling `observers`.

    `sources` is one frame source (a single learner: `update_params(frame)`,
    `forget_previous_frame()`) or a list of K (a K-stream learner: `update_params(frames)`,
    `forget_previous_frame(streams=[k, ...])`). `step` is the step already learned (a
    resumed run's), `games` each stream's game at that step (None: no game yet), so a
    resume into another game is a switch.

    `on_end` and `on_abort` run in reverse order, as teardown does: an observer that
    others report to (TensorBoard) comes before them in the list and closes after them.
    """

    def __init__(self, learner, sources, observers=(), step: int = 0, games=None):
        self.learner = learner
        self.stacked = isinstance(sources, (list, tuple))
        self.sources = list(sources) if self.stacked else [sources]
        self.observers = list(observers)
        self.step = step
        self.games = list(games) if games is not None else [None] * len(self.sources)
        self.results = None
        self.stage_marks = None  # a callable(stage) after each stage of a step, when set (StageTimes sets it)

    @property
    def game(self) -> str | None:
        """The game of the first (or only) stream."""
        return self.games[0]

    def start(self) -> None:
        for observer in self.observers:
            observer.on_start(self)

    def advance(self) -> bool:
        """Learn one frame per stream; False when an observer asked to stop."""
        step = self.step + 1
        frames, entered = zip(*(source.frame_for(step) for source in self.sources))
        cuts = [k for k, cut in enumerate(entered) if cut]
        if cuts and self.stacked:
            self.learner.forget_previous_frame(streams=cuts)
        elif cuts:
            self.learner.forget_previous_frame()
        for k in cuts:
            previous, game = self.games[k], self.sources[k].game
            self.games[k] = game
            if previous is not None and game != previous:
                for observer in self.observers:
                    observer.on_switch(self, step, k, previous, game)
        batch = list(frames) if self.stacked else frames[0]
        if self.stage_marks is None:
            results = self.learner.update_params(batch)
        else:
            self.stage_marks("frames")
            results = self.learner.update_params(batch, stage_marks=self.stage_marks)
        self.step, self.results = step, results
        answers = [observer.on_step(self, step, results) for observer in self.observers]
        if self.stage_marks is not None:
            self.stage_marks("observers")
        return False not in answers

    def report(self, scores: dict[str, float], log: bool = True) -> None:
        """Hand scalars measured at this step to every observer."""
        for observer in self.observers:
            observer.on_scores(self, self.step, scores, log)

    def run(self, steps: int = 0, stop=lambda: False) -> bool:
        """Start, learn until the total step count `steps` (0: no limit) or until `stop()`
        is true, then end; on an exception (in start too) abort and re-raise it. False when
        an observer asked to stop."""
        try:
            self.start()
            going = True
            while going and not stop() and not (steps and self.step >= steps):
                going = self.advance()
            self.end()
        except BaseException:
            self.abort()
            raise
        return going

    def end(self) -> None:
        for observer in reversed(self.observers):
            observer.on_end(self)
        self.close()

    def abort(self) -> None:
        for observer in reversed(self.observers):
            observer.on_abort(self)
        self.close()

    def close(self) -> None:
        for source in self.sources:
            source.close()

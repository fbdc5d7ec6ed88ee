"""The live view: an OpenCV window with the panels and a live strip, or a progress line."""

import os
import subprocess
import sys
import time

import numpy as np
import torch

from utils import postprocess_output

WINDOW_TITLE = "Streaming autoencoder"
DISPLAY_FPS = 10.0  # default most redraws per second


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
    """The live window: input | reconstruction | change mask, a status bar with the game and
    its place in the schedule, and a live strip: the PSNR over the run (smoothed) beside the
    online floor, and each game's probe PSNR with the switches of games marked.

    It redraws at most `display_fps` times a second, and less often where a redraw is slow:
    drawing takes at most DRAW_BUDGET of the wall time. Learning runs on every frame.
    """

    STRIP = 120  # pixels: the height of the live strip
    MAX_POINTS = 512  # history kept per curve; older points are thinned by half
    DRAW_BUDGET = 0.05  # the most of the wall time spent drawing

    def __init__(self, games: tuple[str, ...], display_fps: float, scale: int = 2):
        import cv2

        self.cv2 = cv2
        self.games = games
        self.scale = scale
        self.interval = 1.0 / display_fps
        self.next_draw = -float("inf")
        self.redraws = 0
        self.quality: list[tuple[int, float, float]] = []  # (step, smoothed PSNR, smoothed floor)
        self.probes: dict[str, list[tuple[int, float]]] = {g: [] for g in games}
        self.switches: list[int] = []
        self.colours = {
            g: tuple(
                int(c)
                for c in cv2.applyColorMap(np.uint8([[40 + 200 * i // max(1, len(games) - 1)]]), cv2.COLORMAP_TURBO)[
                    0, 0
                ]
            )
            for i, g in enumerate(games)
        }
        cv2.namedWindow(WINDOW_TITLE, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)

    def due(self) -> bool:
        return time.monotonic() >= self.next_draw

    def add_probe(self, step: int, scores: dict[str, float]) -> None:
        for game, value in scores.items():
            self._append(self.probes.setdefault(game, []), (step, value))

    def add_switch(self, step: int) -> None:
        self.switches.append(step)

    def _append(self, history: list, point: tuple) -> None:
        history.append(point)
        if len(history) > self.MAX_POINTS:
            del history[::2]

    def show(self, results: dict, fps: float, position: str, game: str) -> bool:
        """Draw one frame; False when the user asked to quit (q, Esc, window closed)."""
        cv2 = self.cv2
        started = time.monotonic()
        self.redraws += 1
        step, psnr = results["step"], float(results["psnr"])
        floor = float(results.get("floor_psnr", float("nan")))
        if floor == floor:
            last = self.quality[-1] if self.quality else (step, psnr, floor)
            self._append(self.quality, (step, 0.8 * last[1] + 0.2 * psnr, 0.8 * last[2] + 0.2 * floor))
        mask = results["change_mask"].expand(-1, 3, -1, -1)
        panels = torch.cat([results["input"], results["reconstruction"], mask], dim=3)
        image = cv2.resize(
            postprocess_output(panels, bgr=True), None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_NEAREST
        )
        width = image.shape[1]
        for i, label in enumerate(("input", "reconstruction", "change mask")):
            cv2.putText(
                image, label, (i * width // 3 + 8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 1, cv2.LINE_AA
            )
        bar = np.zeros((36, width, 3), np.uint8)
        status = f"{position}  step {step}  {fps:5.1f} FPS  PSNR {psnr:5.2f} dB"
        cv2.putText(bar, status, (8, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.imshow(WINDOW_TITLE, np.vstack([image, bar, self._strip(width, step, game)]))
        key = cv2.waitKey(1) & 0xFF
        ended = time.monotonic()
        self.next_draw = started + max(self.interval, (ended - started) / self.DRAW_BUDGET)
        if key in (ord("q"), 27):
            return False
        return cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) >= 1

    def _strip(self, width: int, step: int, game: str) -> np.ndarray:
        """Left: PSNR (white) and online floor (grey) over the run. Right: each game's probe
        PSNR in its colour, the game being played named first, switches as vertical lines."""
        strip = np.full((self.STRIP, width, 3), 24, np.uint8)
        half = width // 2
        quality = [(s, p) for s, p, _ in self.quality], [(s, f) for s, _, f in self.quality]
        self._plot(
            strip[:, :half],
            quality,
            [(255, 255, 255), (150, 150, 150)],
            step,
            [],
            f"PSNR {self.quality[-1][1]:.2f} dB, floor {self.quality[-1][2]:.2f} dB"
            if self.quality
            else "PSNR and online floor: from the second frame",
        )
        order = [game] + [g for g in self.probes if g != game]
        colours = [self.colours.get(g, (200, 200, 200)) for g in order]
        self._plot(
            strip[:, half:],
            [self.probes[g] for g in order],
            colours,
            step,
            self.switches,
            "probe PSNR:" + ("" if any(self.probes.values()) else " not scored yet"),
        )
        x = half + 8 + self.cv2.getTextSize("probe PSNR: ", self.cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0]
        for g, colour in zip(order, colours):  # each game's last score, in its curve's colour
            if self.probes[g]:
                label = f"{g} {self.probes[g][-1][1]:.1f}"
                self.cv2.putText(
                    strip, label, (x, 15), self.cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, self.cv2.LINE_AA
                )
                x += self.cv2.getTextSize(label + "  ", self.cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0]
        return strip

    def _plot(self, area: np.ndarray, curves: list, colours: list, step: int, marks: list[int], title: str) -> None:
        cv2 = self.cv2
        height, width = area.shape[:2]
        top, bottom, left, right = 22, height - 6, 8, width - 8
        cv2.putText(area, title, (left, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (220, 220, 220), 1, cv2.LINE_AA)
        values = [v for curve in curves for _, v in curve]
        if not values:
            return
        first = min(s for curve in curves for s, _ in curve if curve)
        low, high = min(values) - 0.5, max(values) + 0.5
        span = max(step - first, 1)

        def point(s: int, v: float) -> tuple[int, int]:
            return (
                left + int((right - left) * (s - first) / span),
                bottom - int((bottom - top) * (v - low) / (high - low)),
            )

        for s in marks:
            if s >= first:
                x = point(s, low)[0]
                cv2.line(area, (x, top), (x, bottom), (90, 90, 90), 1)
        for curve, colour in zip(curves, colours):
            if len(curve) == 1:
                cv2.circle(area, point(*curve[0]), 3, colour, -1)
            elif curve:
                cv2.polylines(area, [np.array([point(s, v) for s, v in curve], np.int32)], False, colour, 2)

    def close(self) -> None:
        self.cv2.destroyAllWindows()


class Progress:
    """Headless progress: one live line on a terminal, plain periodic lines otherwise."""

    def __init__(self, total: int):
        self.total = total
        self.live = sys.stdout.isatty()
        self.every = 0.25 if self.live else 10.0
        self.last = -float("inf")  # the first step prints at once

    def update(self, results: dict, fps: float, position: str, probe: dict[str, float], game: str) -> None:
        if time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        target = f"/{self.total}" if self.total else ""
        scored = f"  probe {probe[game]:6.2f} dB" if game in probe else ""
        line = (
            f"{position} step {results['step']}{target}  {fps:6.1f} FPS  PSNR {float(results['psnr']):6.2f} dB{scored}"
        )
        print(f"\r{line}   " if self.live else line, end="" if self.live else "\n", flush=True)

    def close(self) -> None:
        if self.live:
            print()

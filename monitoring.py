"""TensorBoard logging, speed tracking and feature-map images.

Scalars are kept as device tensors and written in one batch every few seconds, so
logging every step costs no host-device sync per step and a live run still shows
live in TensorBoard.
"""

import time

import torch
from torch.utils.tensorboard import SummaryWriter

DEVICE_TAGS = {  # values that live on the device: buffered there, copied in one batch
    "loss/total": "loss",
    "loss/mse": "mse",
    "loss/l1": "l1",
    "loss/ssim": "ssim",
    "quality/psnr": "psnr",
    "quality/floor_psnr": "floor_psnr",
    "optim/step_size": "step_size",
    "optim/skipped": "skipped",
    "change/fraction": "change_fraction",
}
HOST_TAGS = {"perf/fps": "fps", "perf/step_ms": "step_ms"}  # measured on the host
SCALAR_TAGS = {**DEVICE_TAGS, **HOST_TAGS}
SCALAR_EVERY, IMAGE_EVERY, HISTOGRAM_EVERY = 1, 500, 2000  # default cadences, in steps
LAYOUT = {  # TensorBoard's custom-scalars dashboard; its first chart compares the PSNR with the online floor
    "quality": {
        "PSNR and online floor": ["Multiline", ["quality/psnr", "quality/floor_psnr"]],
        "probe PSNR per game": ["Multiline", [r"probe/psnr/.*"]],
    },
    "plasticity": {"dormant fraction and UPGD": ["Multiline", ["plasticity/dormant_fraction", "plasticity/upgd"]]},
}


class PerformanceMonitor:
    """Updates per second and step time, smoothed with an exponential moving average."""

    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self.fps = 0.0
        self._last = None

    def tick(self, step_started: float) -> tuple[float, float]:
        """Record one step that began at `step_started` (perf_counter); return (fps, ms)."""
        now = time.perf_counter()
        step_ms = (now - step_started) * 1e3
        interval = now - self._last if self._last is not None else now - step_started
        self._last = now
        instant = 1.0 / max(interval, 1e-9)
        self.fps = instant if self.fps == 0.0 else self.smoothing * self.fps + (1 - self.smoothing) * instant
        return self.fps, step_ms


class FeatureVisualizer:
    """Tiles the channels of a (1, C, H, W) feature map into one grey image grid."""

    def __init__(self, columns: int = 4, padding: int = 2):
        self.columns = columns
        self.padding = padding

    def grid(self, features: torch.Tensor) -> torch.Tensor:
        """Each channel min-max scaled to [0, 1]; returns (1, H', W')."""
        maps = features[0].detach().float()
        low = maps.amin(dim=(1, 2), keepdim=True)
        high = maps.amax(dim=(1, 2), keepdim=True)
        maps = (maps - low) / (high - low).clamp_min(1e-8)
        channels, h, w = maps.shape
        rows = -(-channels // self.columns)
        p = self.padding
        canvas = maps.new_ones(rows * (h + p) + p, self.columns * (w + p) + p)
        for i in range(channels):
            r, c = divmod(i, self.columns)
            canvas[p + r * (h + p) : p + r * (h + p) + h, p + c * (w + p) : p + c * (w + p) + w] = maps[i]
        return canvas.unsqueeze(0)


class TensorBoardLogger:
    """Every spec tag: scalars each `scalar_every` steps, images and histograms at the
    first logged step, every `image_every` / `histogram_every` steps, and at the end.

    `purge_step` makes TensorBoard drop steps >= it that an earlier, crashed run of
    the same folder left behind, so a resumed run has one value per step.
    """

    def __init__(
        self,
        log_dir: str,
        scalar_every: int = SCALAR_EVERY,
        image_every: int = IMAGE_EVERY,
        histogram_every: int = HISTOGRAM_EVERY,
        flush_secs: float = 3.0,
        feature_maps: bool = True,
        purge_step: int | None = None,
    ):
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir, purge_step=purge_step, flush_secs=max(1, int(flush_secs)))
        self.scalar_every = scalar_every
        self.image_every = image_every
        self.histogram_every = histogram_every
        self.flush_secs = flush_secs
        self.feature_maps = feature_maps
        self.visualizer = FeatureVisualizer()
        self._pending_steps: list[int] = []
        self._pending_values: list[torch.Tensor] = []
        self._pending_host: list[list[float]] = []
        self._pending_method: list[torch.Tensor] = []
        self._method_tags: list[str] = []
        self._last_write = time.monotonic()
        self._first_step: int | None = None
        self.writer.add_custom_scalars(LAYOUT)

    def event_file(self) -> str:
        """The event file being written (named in write errors)."""
        return getattr(self.writer.file_writer.event_writer, "_file_name", self.log_dir)

    def log_config(self, config: dict) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in config.items())
        self.writer.add_text("config", f"| setting | value |\n|---|---|\n{rows}", global_step=0)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Host values (probe scores, plasticity), written at once."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_event(self, text: str, step: int) -> None:
        """A stream event (a switch of games) as text under `events`."""
        self.writer.add_text("events", text, step)

    def log_step(self, results: dict, model) -> None:
        step = results["step"]
        if self._first_step is None:
            self._first_step = step
        if step % self.scalar_every == 0:
            self._pending_steps.append(step)
            self._pending_values.append(self._device_row(results))
            self._pending_host.append([float(results[key]) for key in HOST_TAGS.values()])
            method = results.get("method") or {}
            if method:  # a method's own statistics: method/<name>
                self._method_tags = [f"method/{name}" for name in method]
                self._pending_method.append(torch.stack([value.float() for value in method.values()]))
        if step == self._first_step or step % self.image_every == 0:
            self.log_images(results, model)
        if step == self._first_step or step % self.histogram_every == 0:
            self.log_histograms(model, step)
        if time.monotonic() - self._last_write >= self.flush_secs:
            self.flush()

    def _device_row(self, results: dict) -> torch.Tensor:
        values = {**results, "change_fraction": results["change_mask"].mean()}
        if "floor_psnr" not in values:  # a learner used without the live loop's online floor
            values["floor_psnr"] = results["loss"].new_full((), float("nan"))
        return torch.stack([values[key].float() for key in DEVICE_TAGS.values()])

    def log_images(self, results: dict, model) -> None:
        step = results["step"]
        pair = torch.cat([results["input"][0], results["reconstruction"][0]], dim=2).nan_to_num(0).clamp(0, 1)
        self.writer.add_image("frames/input_reconstruction", pair, step)
        self.writer.add_image("frames/change_mask", results["change_mask"][0], step)
        if self.feature_maps:
            with torch.no_grad():
                features = model.encoder.features(results["input"])
            for name, fmap in features.items():
                self.writer.add_image(f"features/{name}", self.visualizer.grid(fmap), step)

    def log_histograms(self, model, step: int) -> None:
        for name, param in model.named_parameters():
            self.writer.add_histogram(f"params/{name}", param.detach(), step)

    def flush(self) -> None:
        """Write buffered scalars (one device-to-host copy for all of them)."""
        if self._pending_steps:
            table = torch.stack(self._pending_values).cpu().tolist()
            for step, row, host in zip(self._pending_steps, table, self._pending_host):
                for tag, value in zip(SCALAR_TAGS, row + host):
                    if value == value or tag != "quality/floor_psnr":  # the floor has no value at the first step
                        self.writer.add_scalar(tag, value, step)
            if self._pending_method:
                for step, row in zip(self._pending_steps, torch.stack(self._pending_method).cpu().tolist()):
                    for tag, value in zip(self._method_tags, row):
                        self.writer.add_scalar(tag, value, step)
            self._pending_steps, self._pending_values, self._pending_host = [], [], []
            self._pending_method = []
        self.writer.flush()
        self._last_write = time.monotonic()

    def close(self, results: dict | None = None, model=None) -> None:
        """Images and histograms of the last step, then flush and close."""
        if results is not None and model is not None and results["step"] != self._first_step:
            self.log_images(results, model)
            self.log_histograms(model, results["step"])
        self.flush()
        self.writer.close()

"""Named codecs on the same frames as the model: JPEG, WebP, x264 and lossless PNG and WebP.

Frames are (224, 224, 3) uint8 RGB, the model's own targets. Each codec is a small
subclass of `Codec`, registered with `@register`; the quality and rate benchmarks take
every registered codec, so a new baseline is one class.

A lossy codec is judged at the best setting whose size fits a byte budget, found by a
binary search over its settings: sizes and PSNR grow with quality, though WebP's can
dip a little from one setting to the next, so a setting past such a dip can be missed.
The search promises a setting that fits whose next better one does not. Its PSNR is
`metrics.psnr_value` of the MSE over all pixels of all frames, in [0, 1], the model's
definition. JPEG and WebP come from Pillow, x264 from PyAV's libx264 (4:4:4, constant
quantiser, every byte of the raw H.264 stream counted, headers included).
"""

import io
import math
from collections.abc import Callable, Sequence

import av
import numpy as np
from PIL import Image

from metrics import psnr_value

CODECS: dict[str, "Codec"] = {}  # every baseline, by name, in the order of the JSON fields


def register(cls: type["Codec"]) -> type["Codec"]:
    """Make `cls` one of the baselines every benchmark reports."""
    CODECS[cls.name] = cls()
    return cls


def decoded_psnr(decoded: Sequence[np.ndarray], frames: Sequence[np.ndarray]) -> float:
    """PSNR of uint8 `decoded` frames against the uint8 originals, over all pixels of all frames."""
    errors = [np.mean((d.astype(np.float64) - f.astype(np.float64)) ** 2) for d, f in zip(decoded, frames)]
    return psnr_value(np.mean(errors) / 255.0**2)


def best_fitting(settings: Sequence, attempt: Callable[[object], dict | None]) -> dict | None:
    """The result of the last of `settings` whose `attempt` fits (returns a result, not
    None), by binary search; None when the first does not fit."""
    low, high, found = 0, len(settings) - 1, None
    while low <= high:
        middle = (low + high) // 2
        result = attempt(settings[middle])
        if result is None:
            high = middle - 1
        else:
            found, low = result, middle + 1
    return found


class Codec:
    """A baseline codec: a name (the prefix of its JSON fields), `encode` and `decode`, and
    the settings to search (worst quality first) and to sweep for a rate curve.

    A lossless codec has no settings: only its size is reported, as `<name>_bytes`.
    """

    name: str
    settings: Sequence = ()  # every setting, worst quality first
    sweep: Sequence = ()  # the settings of a rate curve, worst quality first

    @property
    def lossless(self) -> bool:
        return not self.settings

    def encode(self, frames: Sequence[np.ndarray], setting, limit: float = math.inf) -> list[bytes] | None:
        """The coded frames (one bytes object per frame, or one for the whole sequence), or
        None as soon as their total size passes `limit` bytes."""
        raise NotImplementedError

    def decode(self, encoded: list[bytes]) -> list[np.ndarray]:
        raise NotImplementedError

    def size(self, frames: Sequence[np.ndarray], setting=None) -> float:
        """Mean bytes per frame at `setting`."""
        return sum(map(len, self.encode(frames, setting))) / len(frames)

    def point(self, frames: Sequence[np.ndarray], setting, limit: float = math.inf) -> dict | None:
        """{psnr, bytes (mean per frame), quality (the setting)}, or None past `limit` bytes in all."""
        encoded = self.encode(frames, setting, limit)
        if encoded is None:
            return None
        return {
            "psnr": decoded_psnr(self.decode(encoded), frames),
            "bytes": sum(map(len, encoded)) / len(frames),
            "quality": setting,
        }

    def fitting(self, frames: Sequence[np.ndarray], budget: float) -> dict | None:
        """The point at the best setting whose mean size per frame fits `budget`, or None."""

        def attempt(setting) -> dict | None:
            point = self.point(frames, setting, limit=budget * len(frames))
            return point if point is not None and point["bytes"] <= budget else None

        return best_fitting(self.settings, attempt)

    def at_psnr(self, frames: Sequence[np.ndarray], target: float) -> dict | None:
        """The point at the worst setting whose PSNR reaches `target`, or None."""

        def attempt(setting) -> dict | None:
            point = self.point(frames, setting)
            return point if point["psnr"] >= target else None

        return best_fitting(self.settings[::-1], attempt)


class ImageCodec(Codec):
    """A Pillow image format, each frame coded on its own."""

    format: str

    def options(self, setting) -> dict:
        """Pillow's save options at `setting`."""
        raise NotImplementedError

    def encode(self, frames, setting, limit=math.inf):
        encoded, total = [], 0
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format=self.format, **self.options(setting))
            encoded.append(buffer.getvalue())
            total += len(encoded[-1])
            if total > limit:
                return None
        return encoded

    def decode(self, encoded):
        return [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in encoded]


@register
class JPEG(ImageCodec):
    name, format = "jpeg", "JPEG"
    settings = range(1, 101)
    sweep = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)

    def options(self, quality):
        return {"quality": quality}


@register
class WebP(ImageCodec):
    name, format = "webp", "WEBP"
    settings = range(0, 101)
    sweep = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    method = 6  # Pillow's slowest, smallest lossy WebP

    def options(self, quality):
        return {"quality": quality, "method": self.method}


@register
class X264(Codec):
    """The frames in order as one H.264 stream (libx264, yuv444p, constant quantiser qp)."""

    name = "x264"
    settings = range(51, -1, -1)  # qp 51 is the worst quality, 0 the best
    sweep = (51, 45, 39, 33, 27, 21, 15)

    def encode(self, frames, qp, limit=math.inf):
        buffer = io.BytesIO()
        container = av.open(buffer, mode="w", format="h264")
        height, width = frames[0].shape[:2]
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.options = {"qp": str(qp), "preset": "medium", "threads": "1"}
        total = 0
        try:
            for frame in [*frames, None]:
                packets = stream.encode(
                    av.VideoFrame.from_ndarray(frame, format="rgb24") if frame is not None else None
                )
                for packet in packets:
                    total += packet.size
                    container.mux(packet)
                if total > limit:
                    return None
        finally:
            container.close()
        return [buffer.getvalue()]

    def decode(self, encoded):
        with av.open(io.BytesIO(encoded[0]), format="h264") as container:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@register
class PNG(ImageCodec):
    name, format = "png", "PNG"

    def options(self, setting):
        return {"optimize": True}


@register
class WebPLossless(ImageCodec):
    name, format = "webp_lossless", "WEBP"
    method = 4  # method 6 is 25x slower here for 0.05% fewer bytes

    def options(self, setting):
        return {"lossless": True, "quality": 100, "method": self.method}


def lossy() -> list[Codec]:
    return [codec for codec in CODECS.values() if not codec.lossless]


def baseline_fields(frames: Sequence[np.ndarray], budget: float | None) -> dict:
    """The quality row's baseline fields for held-out `frames` at `budget` bytes per frame
    (None: no budget, so the lossy fields are null): `<name>_psnr`, `<name>_bytes` and
    `<name>_quality` of each lossy codec, then `<name>_bytes` of each lossless one."""
    fields = {}
    for codec in lossy():
        found = codec.fitting(frames, budget) if budget is not None else None
        fields[f"{codec.name}_psnr"] = round(found["psnr"], 2) if found else None
        fields[f"{codec.name}_bytes"] = round(found["bytes"], 1) if found else None
        fields[f"{codec.name}_quality"] = found["quality"] if found else None
    for codec in CODECS.values():
        if codec.lossless:
            fields[f"{codec.name}_bytes"] = round(codec.size(frames), 1)
    return fields


def bytes_at_psnr(frames: Sequence[np.ndarray], target: float) -> dict:
    """What each lossy codec needs per frame to reach `target` dB on `frames` (None: it cannot)."""
    found = {codec.name: codec.at_psnr(frames, target) for codec in lossy()}
    return {f"{name}_bytes_at_frozen_psnr": round(f["bytes"], 1) if f else None for name, f in found.items()}


def rate_curves(frames: Sequence[np.ndarray]) -> dict[str, list[dict]]:
    """{quality, bpp, psnr} of each lossy codec over its sweep of settings on `frames`."""
    pixels = frames[0].shape[0] * frames[0].shape[1]
    curves = {}
    for codec in lossy():
        points = [codec.point(frames, setting) for setting in codec.sweep]
        curves[codec.name] = [
            {"quality": p["quality"], "bpp": round(p["bytes"] * 8 / pixels, 4), "psnr": round(p["psnr"], 2)}
            for p in points
        ]
    return curves

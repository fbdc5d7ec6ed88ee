"""Named codecs on the same frames as the model: JPEG, WebP, x264 and lossless PNG and WebP.

Frames are (224, 224, 3) uint8 RGB, the model's own targets. A lossy codec is judged
at the best quality whose size fits a byte budget, found by a binary search over the
quality settings: sizes and PSNR grow with quality, though WebP's can dip a little
from one setting to the next, so a setting past such a dip can be missed. The search
promises a setting that fits whose next better one does not. Its PSNR is
`metrics.psnr_value` of the MSE over all pixels of all frames, in [0, 1], the model's
definition. JPEG and WebP come from Pillow, x264 from PyAV's libx264 (4:4:4, constant
quantiser, every byte of the raw H.264 stream counted, headers included).
"""

import io
from collections.abc import Callable, Sequence

import av
import numpy as np
from PIL import Image

from metrics import psnr_value

JPEG_QUALITIES = range(1, 101)  # every setting, worst quality first
WEBP_QUALITIES = range(0, 101)
X264_QUANTISERS = range(51, -1, -1)  # qp 51 is the worst quality, 0 the best
WEBP_METHOD = 6  # Pillow's slowest, smallest lossy WebP
WEBP_LOSSLESS_METHOD = 4  # method 6 is 25x slower here for 0.05% fewer bytes


def psnr(decoded: Sequence[np.ndarray], frames: Sequence[np.ndarray]) -> float:
    errors = [np.mean((d.astype(np.float64) - f.astype(np.float64)) ** 2) for d, f in zip(decoded, frames)]
    return psnr_value(np.mean(errors) / 255.0**2)


def jpeg(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def webp(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="WEBP", quality=quality, method=WEBP_METHOD)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def png_bytes(frame: np.ndarray) -> int:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", optimize=True)
    return len(buffer.getvalue())


def webp_lossless_bytes(frame: np.ndarray) -> int:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="WEBP", lossless=True, quality=100, method=WEBP_LOSSLESS_METHOD)
    return len(buffer.getvalue())


def best_fitting(settings: Sequence[int], attempt: Callable[[int], dict | None]) -> dict | None:
    """The result of the last of `settings` (worst quality first) whose `attempt` fits
    (returns a result, not None), by binary search; None when the first does not fit."""
    low, high, found = 0, len(settings) - 1, None
    while low <= high:
        middle = (low + high) // 2
        result = attempt(settings[middle])
        if result is None:
            high = middle - 1
        else:
            found, low = result, middle + 1
    return found


def image_point(frames: Sequence[np.ndarray], encode: Callable[[np.ndarray, int], bytes], quality: int) -> dict:
    """{psnr, bytes (mean per frame), quality} of an image codec at one quality setting."""
    encoded = [encode(frame, quality) for frame in frames]
    return {"psnr": psnr([decode_image(e) for e in encoded], frames),
            "bytes": float(np.mean([len(e) for e in encoded])), "quality": quality}


def image_search(frames: Sequence[np.ndarray], budget: float, encode: Callable[[np.ndarray, int], bytes],
                 qualities: Sequence[int]) -> dict | None:
    """{psnr, bytes, quality} at the best of `qualities` whose mean size per frame fits
    `budget`, or None when none does."""
    def attempt(quality: int) -> dict | None:
        point = image_point(frames, encode, quality)
        return point if point["bytes"] <= budget else None

    return best_fitting(qualities, attempt)


def x264(frames: Sequence[np.ndarray], qp: int, limit: float = float("inf")) -> bytes | None:
    """The frames in order as one H.264 stream (libx264, yuv444p, constant quantiser `qp`),
    or None as soon as it grows past `limit` bytes."""
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format="h264")
    height, width = frames[0].shape[:2]
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
    stream.options = {"qp": str(qp), "preset": "medium", "threads": "1"}
    total = 0
    try:
        for frame in [*frames, None]:
            packets = stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24") if frame is not None else None)
            for packet in packets:
                total += packet.size
                container.mux(packet)
            if total > limit:
                return None
    finally:
        container.close()
    return buffer.getvalue()


def decode_video(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data), format="h264") as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def x264_point(frames: Sequence[np.ndarray], qp: int, limit: float = float("inf")) -> dict | None:
    """{psnr, bytes (per frame), quality (the qp)} of x264 at one quantiser, or None past `limit` bytes."""
    data = x264(frames, qp, limit)
    if data is None:
        return None
    return {"psnr": psnr(decode_video(data), frames), "bytes": len(data) / len(frames), "quality": qp}


def x264_search(frames: Sequence[np.ndarray], budget: float,
                quantisers: Sequence[int] = X264_QUANTISERS) -> dict | None:
    """{psnr, bytes (per frame), quality (the qp)} at the best quantiser whose whole stream
    fits `budget` bytes per frame, or None."""
    return best_fitting(quantisers, lambda qp: x264_point(frames, qp, limit=budget * len(frames)))


def image_at_psnr(frames: Sequence[np.ndarray], target: float, encode: Callable[[np.ndarray, int], bytes],
                  qualities: Sequence[int]) -> dict | None:
    """{psnr, bytes, quality} at the worst of `qualities` whose PSNR reaches `target`, or None."""
    def attempt(quality: int) -> dict | None:
        point = image_point(frames, encode, quality)
        return point if point["psnr"] >= target else None

    return best_fitting(qualities[::-1], attempt)


def x264_at_psnr(frames: Sequence[np.ndarray], target: float,
                 quantisers: Sequence[int] = X264_QUANTISERS) -> dict | None:
    """{psnr, bytes (per frame), quality} at the worst quantiser whose PSNR reaches `target`, or None."""
    def attempt(qp: int) -> dict | None:
        point = x264_point(frames, qp)
        return point if point["psnr"] >= target else None

    return best_fitting(quantisers[::-1], attempt)


def bytes_at_psnr(frames: Sequence[np.ndarray], target: float) -> dict:
    """What each lossy codec needs per frame to reach `target` dB on `frames` (None: it cannot)."""
    found = {"jpeg": image_at_psnr(frames, target, jpeg, JPEG_QUALITIES),
             "webp": image_at_psnr(frames, target, webp, WEBP_QUALITIES),
             "x264": x264_at_psnr(frames, target)}
    return {f"{name}_bytes_at_frozen_psnr": round(f["bytes"], 1) if f else None for name, f in found.items()}


def baseline_fields(frames: Sequence[np.ndarray], budget: float | None) -> dict:
    """The quality row's baseline fields for held-out `frames` at `budget` bytes per frame
    (None: no budget, so only the lossless sizes)."""
    fields = {}
    searches = {"jpeg": lambda: image_search(frames, budget, jpeg, JPEG_QUALITIES),
                "webp": lambda: image_search(frames, budget, webp, WEBP_QUALITIES),
                "x264": lambda: x264_search(frames, budget)}
    for name, search in searches.items():
        found = search() if budget is not None else None
        fields[f"{name}_psnr"] = round(found["psnr"], 2) if found else None
        fields[f"{name}_bytes"] = round(found["bytes"], 1) if found else None
        fields[f"{name}_quality"] = found["quality"] if found else None
    fields["png_bytes"] = round(float(np.mean([png_bytes(f) for f in frames])), 1)
    fields["webp_lossless_bytes"] = round(float(np.mean([webp_lossless_bytes(f) for f in frames])), 1)
    return fields

"""Frame conversion between ALE's uint8 RGB arrays and the model's tensors."""

import ctypes

import cv2
import numpy as np
import torch

FRAME_SIZE = 224


def preprocess_frame(frame: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """An HxWx3 uint8 RGB array -> a (1, 3, 224, 224) float tensor in [0, 1].

    A float tensor already shaped (1, 3, 224, 224) passes through (moved to
    `device`). Resizing uses area interpolation, the right filter for shrinking.
    """
    if isinstance(frame, torch.Tensor):
        if frame.shape != (1, 3, FRAME_SIZE, FRAME_SIZE) or not frame.is_floating_point():
            raise ValueError(f"expected a float tensor (1, 3, {FRAME_SIZE}, {FRAME_SIZE}), got {tuple(frame.shape)}")
        return frame.to(device)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame.shape} {frame.dtype}")
    resized = cv2.resize(frame, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)
    tensor = torch.from_numpy(resized).permute(2, 0, 1).unsqueeze(0)
    return tensor.to(device, non_blocking=True).float().div_(255.0)


def postprocess_output(image: torch.Tensor, bgr: bool = False) -> np.ndarray:
    """A (1, C, H, W) or (C, H, W) tensor in [0, 1] -> a contiguous HxWxC uint8 array.

    NaN becomes 0. `bgr` reverses the channels, OpenCV's order, in the same pass.
    """
    if image.dim() == 4:
        image = image[0]
    array = image.detach().nan_to_num(0).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    if bgr:
        array = array.flip(0)
    return array.permute(1, 2, 0).contiguous().cpu().numpy()


def weighted_channel_sum(image: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """sum over c of weights[c] * image[:, c], as (N, 1, H, W).

    One strided pass per channel: on a channels_last image a reduction over C is the
    innermost one, slower on a CPU than these three passes (measured in
    docs/BENCHMARKS.md).
    """
    total = image[:, :1] * weights[0]
    for c in range(1, image.shape[1]):
        total.add_(image[:, c : c + 1], alpha=weights[c])
    return total


def compute_frame_difference(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Per-pixel change |current - previous| averaged over channels: (N, 1, H, W)."""
    channels = current.shape[1]
    return weighted_channel_sum((current - previous).abs(), (1.0 / channels,) * channels)


def keep_freed_memory() -> None:
    """Stop glibc from returning large freed blocks to the OS after every use.

    By default each tensor over the mmap threshold gets fresh pages from the kernel
    and gives them back when freed, so every activation pays for page faults anew,
    which on a small CPU costs more than the op itself (measured in docs/BENCHMARKS.md).
    Raising the mmap and trim thresholds lets the heap reuse those blocks. No-op off
    glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)

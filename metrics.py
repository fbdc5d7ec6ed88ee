"""PSNR and the two mean-frame floors, for images in [0, 1].

PSNR is 10 log10(1 / MSE). An MSE below MSE_FLOOR counts as MSE_FLOOR, so a perfect
reconstruction scores a finite 100 dB instead of infinity; any real error is larger,
so the floor changes no score. The floors ask what a learner gains over the simplest
predictor there is: the mean of the frames.
"""

import math

import numpy as np
import torch

MSE_FLOOR = 1e-10  # PSNR is at most 100 dB


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR of a tensor of MSEs, elementwise, on its own device (no host sync)."""
    return -10.0 * torch.log10(mse.clamp_min(MSE_FLOOR))


def psnr_value(mse: float) -> float:
    """PSNR of one MSE given as a number."""
    return 10.0 * math.log10(1.0 / max(float(mse), MSE_FLOOR))


def floor_psnr(frames: torch.Tensor | np.ndarray) -> float:
    """The mean-frame floor: the PSNR of the set's own mean frame used as the prediction of
    every frame. `frames` stacks the frames on its first axis, uint8 in [0, 255] or float
    in [0, 1], in any layout; the arithmetic is float64."""
    x = torch.as_tensor(frames)
    x = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
    return psnr_value((x - x.mean(dim=0)).square().mean().item())


class OnlineFloor:
    """The online counterpart of the mean-frame floor: each frame is predicted by the running
    mean of all earlier frames of the stream, and scored by that prediction's PSNR.

    Everything stays on the device (no host sync); `state_dict` carries the mean and count
    across resumes.
    """

    def __init__(self):
        self.mean = None
        self.count = 0

    @torch.no_grad()
    def update(self, frame: torch.Tensor) -> torch.Tensor:
        """The floor PSNR of this (1, 3, H, W) frame (NaN for the first), then fold it into the mean."""
        if self.mean is None or self.mean.shape != frame.shape:
            self.mean, self.count = torch.zeros_like(frame), 0
        score = psnr((frame - self.mean).square().mean())
        if self.count == 0:
            score = torch.full_like(score, float("nan"))
        self.count += 1
        self.mean.add_(frame - self.mean, alpha=1.0 / self.count)
        return score

    def state_dict(self) -> dict:
        return {"mean": None if self.mean is None else self.mean.cpu(), "count": self.count}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.mean = None if state["mean"] is None else state["mean"].to(device)
        self.count = int(state["count"])

"""PSNR and the floors against hand computations."""

import math

import numpy as np
import pytest
import torch

from metrics import MSE_FLOOR, OnlineFloor, floor_psnr, psnr, psnr_value


def test_psnr_of_a_tensor_and_of_a_number_agree_and_stop_at_100_db():
    mse = torch.tensor([1.0, 0.01, 1e-4, 0.0])
    assert psnr(mse).tolist() == pytest.approx([0.0, 20.0, 40.0, 100.0])
    assert [psnr_value(m) for m in mse.tolist()] == pytest.approx([0.0, 20.0, 40.0, 100.0])
    assert psnr_value(MSE_FLOOR / 10) == psnr_value(0.0) == pytest.approx(100.0)
    assert psnr(mse).dtype == mse.dtype and psnr(mse.double()).dtype == torch.float64


def test_floor_is_the_psnr_of_the_mean_frame_in_any_layout_and_dtype():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    x = frames.astype(np.float64) / 255
    expected = 10 * math.log10(1 / np.mean((x - x.mean(axis=0)) ** 2))
    assert floor_psnr(frames) == pytest.approx(expected, abs=1e-12)
    assert floor_psnr(torch.from_numpy(frames).permute(0, 3, 1, 2)) == pytest.approx(expected, abs=1e-12)
    assert floor_psnr(torch.from_numpy(x).float()) == pytest.approx(expected, abs=1e-5)


def test_online_floor_predicts_each_frame_by_the_mean_of_the_earlier_ones():
    frames = [torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    floor = OnlineFloor()
    scores = [floor.update(frame).item() for frame in frames]
    assert math.isnan(scores[0])
    for t in range(1, 4):
        mean = torch.stack(frames[:t]).mean(dim=0)
        assert scores[t] == pytest.approx(psnr_value((frames[t] - mean).square().mean().item()), abs=1e-4)
    resumed = OnlineFloor()
    resumed.load_state_dict(floor.state_dict(), torch.device("cpu"))
    assert resumed.count == 4 and torch.equal(resumed.mean, floor.mean)

"""Real bytes: the quantiser, the range-coded bitstream, and the named codecs it is judged against."""

import copy

import cv2
import numpy as np
import pytest
import torch
from conftest import ale_frames

from autoencoder import StreamingAutoEncoder
from baselines import CODECS, decoded_psnr
from benchmarks.rate import bd_rate
from model import LatentQuantizer, ModelConfig
from utils import preprocess_frame


@pytest.fixture(scope="module")
def stream() -> list[np.ndarray]:
    """Real frames of two games, back to back: a stream with a cut in it."""
    return ale_frames("Breakout", 24) + ale_frames("Assault", 16)


@pytest.fixture(scope="module")
def trained(stream) -> StreamingAutoEncoder:
    torch.manual_seed(0)
    model = StreamingAutoEncoder()
    for frame in stream[:20]:
        model.update_params(frame)
    return model


@pytest.mark.parametrize("temporal", [True, False])
def test_two_sessions_round_trip_a_stream_bit_exactly(trained, stream, temporal):
    sender, receiver = trained.codec(temporal), trained.codec(temporal)
    for frame in stream[20:]:
        data, reconstruction = sender.encode(frame)
        assert isinstance(data, bytes) and len(data) > 0
        decoded = receiver.decode(data)
        assert decoded.shape == (1, 3, 224, 224) and 0 <= decoded.min() and decoded.max() <= 1
        assert torch.equal(decoded, reconstruction)
    with torch.no_grad():
        frozen, _ = trained(preprocess_frame(stream[-1]).contiguous(memory_format=trained.memory_format))
    assert torch.equal(reconstruction, frozen)  # the codec decodes exactly the codes the model learns from


def test_a_temporal_bitstream_needs_the_frames_before_it(trained, stream):
    sender = trained.codec()
    first, _ = sender.encode(stream[30])
    second, reconstruction = sender.encode(stream[31])
    late = trained.codec()
    assert not torch.equal(late.decode(second), reconstruction)  # no hidden channel: only the bytes cross


def test_coding_changes_no_weight_optimizer_or_detector_state(trained, stream):
    twin = copy.deepcopy(trained)
    weights = {k: v.clone() for k, v in trained.state_dict().items()}
    optimizer = copy.deepcopy(trained.optimizer.state_dict())
    previous = trained.change_detector.previous.clone()
    sender, receiver = trained.codec(), trained.codec()
    for frame in stream[20:30]:
        receiver.decode(sender.encode(frame)[0])
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in weights.items())
    assert str(trained.optimizer.state_dict()) == str(optimizer)
    assert torch.equal(trained.change_detector.previous, previous)
    after, expected = trained.update_params(stream[30]), twin.update_params(stream[30])
    assert torch.equal(after["loss"], expected["loss"]) and torch.equal(
        after["reconstruction"], expected["reconstruction"]
    )


def test_bytes_match_the_entropy_models_own_estimate(trained, stream):
    for temporal in (True, False):
        session = trained.codec(temporal)
        for frame in stream[20:]:
            data, _ = session.encode(frame)
            estimate = session.estimated_bits / 8
            assert abs(len(data) - estimate) <= 0.02 * estimate + 8, (temporal, len(data), estimate)


def test_temporal_coding_spends_fewer_bytes_on_a_repeating_stream(trained, stream):
    sizes = {}
    for temporal in (True, False):
        session = trained.codec(temporal)
        sizes[temporal] = np.mean([len(session.encode(frame)[0]) for frame in stream[:20]])
    assert sizes[True] < 0.5 * sizes[False]


def test_float_latents_have_no_codec():
    with pytest.raises(ValueError, match="latent_bits=0"):
        StreamingAutoEncoder(ModelConfig(latent_bits=0)).codec()


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_quantiser_values_lie_on_the_grid_with_a_straight_through_gradient(bits):
    quantiser = LatentQuantizer(bits)
    z = torch.linspace(-4, 4, 20001, requires_grad=True)
    values = quantiser(z)
    grid = quantiser.values(torch.arange(2**bits))
    assert grid[0] == -1 and grid[-1] == 1 and torch.isin(values.detach(), grid).all()
    assert set(quantiser.codes(z).tolist()) == set(range(2**bits))
    assert torch.equal(values.detach(), quantiser.values(quantiser.codes(z)))
    assert (values.detach() - torch.tanh(z.detach())).abs().max() <= 1 / (2**bits - 1) + 1e-6  # half a level
    values.sum().backward()
    assert torch.allclose(
        z.grad, 1 - torch.tanh(z.detach()) ** 2, rtol=1e-4, atol=1e-6
    )  # rounding counts as the identity


def test_noisy_quantiser_stays_within_half_a_level_with_tanh_gradient():
    quantiser = LatentQuantizer(4)
    z = torch.linspace(-3, 3, 501, requires_grad=True)
    noisy = quantiser.noisy(z, torch.Generator().manual_seed(0))
    offset = (noisy.detach() - torch.tanh(z.detach())) * 15 / 2
    assert offset.abs().max() <= 0.5 + 1e-5 and offset.std() > 0.2  # uniform noise one level wide
    noisy.sum().backward()
    assert torch.allclose(z.grad, 1 - torch.tanh(z.detach()) ** 2, rtol=1e-4, atol=1e-6)


def test_float_latents_pass_unchanged():
    z = torch.randn(50) * 10
    assert torch.equal(LatentQuantizer(0)(z), z)


def test_noise_training_reports_the_rounded_codes_reconstruction(stream):
    torch.manual_seed(0)
    model = StreamingAutoEncoder(ModelConfig(latent_noise=True))
    model.update_params(stream[0])
    x = preprocess_frame(stream[1]).contiguous(memory_format=model.memory_format)
    with torch.no_grad():
        rounded, _ = model(x)
    results = model.update_params(stream[1])
    assert torch.equal(results["reconstruction"], rounded)
    assert not torch.equal(model.noise.get_state(), torch.Generator().manual_seed(0).get_state())


@pytest.fixture(scope="module")
def tiny_set() -> list[np.ndarray]:
    return [cv2.resize(f, (224, 224), interpolation=cv2.INTER_AREA) for f in ale_frames("Assault", 40)[::13]]


def test_every_baseline_is_registered_in_the_order_of_the_json_fields():
    assert list(CODECS) == ["jpeg", "webp", "x264", "png", "webp_lossless"]
    assert [name for name, codec in CODECS.items() if codec.lossless] == ["png", "webp_lossless"]


@pytest.mark.parametrize("name", ["jpeg", "webp"])
def test_image_search_takes_the_largest_quality_that_fits(tiny_set, name):
    codec = CODECS[name]
    qualities = codec.settings
    sizes = {q: np.mean([len(data) for data in codec.encode(tiny_set, q)]) for q in qualities}
    for budget in (sizes[qualities[len(qualities) // 3]], sizes[qualities[-10]] + 1):
        expected = max(q for q in qualities if sizes[q] <= budget)
        found = codec.fitting(tiny_set, budget)
        assert found["quality"] == expected and found["bytes"] == sizes[expected] <= budget
        assert 10 < found["psnr"] < 60
    assert codec.fitting(tiny_set, sizes[qualities[0]] - 1) is None


def test_x264_search_takes_the_best_quantiser_that_fits(tiny_set):
    x264 = CODECS["x264"]
    sizes = {qp: len(x264.encode(tiny_set, qp)[0]) / len(tiny_set) for qp in range(52)}
    budget = sizes[30]
    expected = min(qp for qp in range(52) if sizes[qp] <= budget)
    found = x264.fitting(tiny_set, budget)
    assert found["quality"] == expected and found["bytes"] == sizes[expected]
    assert found["psnr"] > 20
    assert x264.fitting(tiny_set, sizes[51] - 1) is None


def test_lossless_baselines_decode_every_frame_exactly(tiny_set):
    for name in ("png", "webp_lossless"):
        codec = CODECS[name]
        decoded = codec.decode(codec.encode(tiny_set, None))
        assert all(np.array_equal(d, f) for d, f in zip(decoded, tiny_set)), name
        assert codec.size(tiny_set) == np.mean([len(data) for data in codec.encode(tiny_set, None)])


def test_equal_psnr_searches_stop_where_the_next_worse_quality_falls_short(tiny_set):
    """PSNR grows with quality but can dip between neighbouring WebP settings, so a binary
    search promises a setting that reaches the target whose next worse one does not."""
    webp, x264 = CODECS["webp"], CODECS["x264"]
    scores = {q: decoded_psnr(webp.decode(webp.encode(tiny_set, q)), tiny_set) for q in webp.settings}
    for target in (scores[40], scores[75]):
        found = webp.at_psnr(tiny_set, target)
        assert found["psnr"] == scores[found["quality"]] >= target
        assert found["quality"] == 0 or scores[found["quality"] - 1] < target
    assert webp.at_psnr(tiny_set, 99.0) is None
    video = {qp: decoded_psnr(x264.decode(x264.encode(tiny_set, qp)), tiny_set) for qp in range(52)}
    found = x264.at_psnr(tiny_set, video[30])
    assert found["psnr"] == video[found["quality"]] >= video[30]
    assert found["quality"] == 51 or video[found["quality"] + 1] < video[30]


def test_bd_rate_of_a_curve_at_half_the_bits_is_minus_fifty_percent():
    anchor = [{"bpp": r, "psnr": p} for r, p in [(0.1, 30.0), (0.2, 33.0), (0.4, 35.5), (0.8, 37.0)]]
    half = [{"bpp": p["bpp"] / 2, "psnr": p["psnr"]} for p in anchor]
    assert bd_rate(anchor, half) == pytest.approx(-50.0, abs=0.01)
    assert bd_rate(half, anchor) == pytest.approx(100.0, abs=0.01)
    apart = [{"bpp": p["bpp"], "psnr": p["psnr"] + 20} for p in anchor]
    assert bd_rate(anchor, apart) is None

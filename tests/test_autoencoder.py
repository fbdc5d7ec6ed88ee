import copy

import pytest
import torch

from autoencoder import StreamingAutoEncoder, create_streaming_ae
from utils import preprocess_frame

RESULT_KEYS = {
    "loss",
    "mse",
    "l1",
    "ssim",
    "psnr",
    "reconstruction",
    "embeddings",
    "change_mask",
    "step",
    "fps",
    "step_ms",
    "step_size",
    "skipped",
}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_streaming_ae()


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_update_params_returns_the_spec_dict(model, breakout_frames):
    results = model.update_params(breakout_frames[0])
    assert RESULT_KEYS <= results.keys()
    assert results["reconstruction"].shape == (1, 3, 224, 224)
    assert results["change_mask"].shape == (1, 1, 224, 224)
    assert [tuple(z.shape) for z in results["embeddings"]] == [(1, 3, 27, 27), (1, 2, 25, 25), (1, 2, 23, 23)]
    for key in ("loss", "mse", "l1", "ssim", "psnr", "step_size", "skipped"):
        assert torch.is_tensor(results[key]) and results[key].dim() == 0, key
    assert results["step"] == 1 and not results["skipped"]
    assert 0 < results["step_size"] <= 1.0
    debug = model.update_params(breakout_frames[1], debug=True)
    assert isinstance(debug["loss"], float) and debug["step"] == 2


def test_metrics_are_prequential_and_gradients_clipped(model, breakout_frames):
    x = preprocess_frame(breakout_frames[0])
    with torch.no_grad():
        before, _ = model(x)
    results = model.update_params(breakout_frames[0])
    assert results["mse"].item() == pytest.approx((before - x).square().mean().item(), rel=1e-5)
    assert results["psnr"].item() == pytest.approx(-10 * torch.log10(results["mse"]).item(), rel=1e-6)
    with torch.no_grad():
        after, _ = model(x)
    assert not torch.equal(before, after)
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert grad_norm <= 1.0 + 1e-4


@pytest.mark.parametrize("optimizer", ["obgd", "obgd-adaptive", "adam", "sgd"])
def test_loss_falls_over_100_updates_on_a_real_breakout_frame(optimizer, breakout_frames):
    torch.manual_seed(0)
    model = create_streaming_ae(optimizer=optimizer)
    losses = [model.update_params(breakout_frames[5])["loss"].item() for _ in range(100)]
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])


def test_uint8_frame_and_float_tensor_give_the_same_update(breakout_frames):
    results = []
    for frame in (breakout_frames[3], preprocess_frame(breakout_frames[3])):
        torch.manual_seed(0)
        results.append(create_streaming_ae().update_params(frame)["loss"].item())
    assert results[0] == pytest.approx(results[1], rel=1e-6)


@pytest.mark.parametrize("optimizer", ["obgd", "obgd-adaptive", "adam", "sgd"])
def test_a_nan_frame_skips_the_update_and_keeps_weights_finite(optimizer, breakout_frames):
    torch.manual_seed(0)
    model = create_streaming_ae(optimizer=optimizer)
    model.update_params(breakout_frames[0])
    before = _params(model)
    frame = preprocess_frame(breakout_frames[1]).clone()
    frame[0, 0, 10, 10] = float("nan")
    results = model.update_params(frame)
    assert results["skipped"]
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    results = model.update_params(breakout_frames[2])
    assert not results["skipped"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_nan_gradient_skips_the_update(model, breakout_frames):
    model.update_params(breakout_frames[0])
    before = _params(model)
    weight = model.decoder.fuse.weight
    handle = weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    results = model.update_params(breakout_frames[1])
    handle.remove()
    assert results["skipped"] and torch.isfinite(results["loss"])
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    assert not model.update_params(breakout_frames[2])["skipped"]


def test_compression_ratios_reported_by_the_model(model):
    ratios = {k: round(v, 1) for k, v in model.compression_ratios().items()}
    assert ratios == {"3x3": 68.8, "5x5": 120.4, "7x7": 142.3, "all": 33.5}


def test_cuda_graph_follows_compile_on_cuda_only():
    assert StreamingAutoEncoder(compile=True).captured_step is None
    with pytest.raises(ValueError, match="CUDA"):
        StreamingAutoEncoder(cuda_graph=True)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_update_params_never_syncs_on_cuda(breakout_frames, cuda_graph):
    torch.manual_seed(0)
    model = StreamingAutoEncoder(device="cuda", cuda_graph=cuda_graph)
    frames = [preprocess_frame(f, "cuda") for f in breakout_frames[:12]]
    for frame in frames[:5]:  # eager warm-up, then (with cuda_graph) the capture
        model.update_params(frame)
    assert (model.captured_step is not None and model.captured_step.graph is not None) == cuda_graph
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for frame in frames[5:]:
            model.update_params(frame)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@needs_cuda
@pytest.mark.parametrize("optimizer", ["obgd-adaptive", "obgd", "adam", "sgd"])
def test_cuda_graph_replay_makes_the_eager_update(breakout_frames, optimizer):
    """From the same state, every replay of the captured update changes the weights as
    an eager update does, and each call's results stay valid after later replays."""
    torch.manual_seed(0)
    graphed = StreamingAutoEncoder(optimizer=optimizer, device="cuda", cuda_graph=True)
    eager = StreamingAutoEncoder(optimizer=optimizer, device="cuda", cuda_graph=False)
    frames = [preprocess_frame(f, "cuda") for f in breakout_frames[:10]]
    results, losses = [], []
    for frame in frames:
        eager.load_state_dict(graphed.state_dict())
        eager.optimizer.load_state_dict(
            copy.deepcopy(graphed.optimizer.state_dict())
        )  # Adam would share its step tensor
        if graphed.change_detector.previous.numel():
            eager.change_detector.previous = graphed.change_detector.previous.clone()
        expected = eager.update_params(frame)
        results.append(graphed.update_params(frame))
        losses.append(results[-1]["loss"].item())
        torch.testing.assert_close(results[-1]["loss"], expected["loss"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(graphed.flat_params, eager.flat_params, rtol=1e-5, atol=1e-6)
    assert graphed.captured_step.graph is not None
    assert [r["loss"].item() for r in results] == losses

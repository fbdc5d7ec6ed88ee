import pytest
import torch
from conftest import ale_frames

from autoencoder import create_streaming_ae
from model import (
    Decoder,
    Encoder,
    LayerNormalization,
    ModelConfig,
    PixelChangeDetector,
    ReachableSigmoid,
    compression_ratios,
)
from utils import preprocess_frame

SPEC_SHAPES = [(3, 27, 27), (2, 25, 25), (2, 23, 23)]


def test_latent_shapes_for_real_breakout_and_pacman_frames(breakout_frames, pacman_frame):
    assert breakout_frames[0].shape == (210, 160, 3)
    assert pacman_frame.shape == (250, 160, 3)
    encoder = Encoder(ModelConfig())
    for frame in (breakout_frames[0], pacman_frame):
        latents = encoder(preprocess_frame(frame))
        assert [tuple(z.shape[1:]) for z in latents] == SPEC_SHAPES


def test_latent_channels_flag_changes_only_the_3x3_branch():
    latents = Encoder(ModelConfig(latent_channels=5))(torch.rand(1, 3, 224, 224))
    assert [tuple(z.shape[1:]) for z in latents] == [(5, 27, 27), (2, 25, 25), (2, 23, 23)]


def test_compression_ratios_are_the_honest_counts():
    ratios = compression_ratios(ModelConfig())
    assert round(ratios["3x3"], 1) == 68.8
    assert round(ratios["5x5"], 1) == 120.4
    assert round(ratios["7x7"], 1) == 142.3
    assert round(ratios["all"], 1) == 33.5
    assert sum(c * h * w for c, h, w in ModelConfig().latent_shapes()) == 4495


@pytest.mark.parametrize("branch_heads", [False, True])
def test_decoder_sees_only_latents_and_outputs_a_224_image_in_0_1(branch_heads):
    decoder = Decoder(ModelConfig(branch_heads=branch_heads))
    assert (decoder.heads is not None) == branch_heads
    latents = [torch.randn(1, *shape, requires_grad=True) for shape in SPEC_SHAPES]
    out = decoder(latents)
    assert out.shape == (1, 3, 224, 224)
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0
    out.mean().backward()
    assert all(z.grad.abs().sum() > 0 for z in latents)  # every branch reaches the image


@pytest.mark.parametrize("switch", ["use_layer_norm", "use_residual", "use_transformer", "use_change_detector"])
def test_each_named_part_can_be_switched_off(switch):
    all_on = dict(use_layer_norm=True, use_residual=True, use_transformer=True, use_change_detector=True)
    on = create_streaming_ae(**all_on)
    off = create_streaming_ae(**{**all_on, switch: False})
    assert sum(p.numel() for p in off.parameters()) <= sum(p.numel() for p in on.parameters())
    names = {type(m).__name__ for m in off.modules()}
    part = {
        "use_layer_norm": "LayerNormalization",
        "use_residual": "ResidualBlock",
        "use_transformer": "TransformerBlock",
        "use_change_detector": "PixelChangeDetector",
    }[switch]
    assert part in {type(m).__name__ for m in on.modules()}
    assert part not in names
    results = off.update_params(torch.rand(1, 3, 224, 224))
    assert results["reconstruction"].shape == (1, 3, 224, 224)


def test_layer_norm_sits_in_the_decoder_and_optionally_after_each_encoder_convolution():
    def norms(module):
        return sum(isinstance(m, LayerNormalization) for m in module.modules())

    default = create_streaming_ae()
    assert norms(default.encoder) == 0 and norms(default.decoder) == 1
    assert norms(create_streaming_ae(encoder_layer_norm=True).encoder) == 6
    assert norms(create_streaming_ae(use_layer_norm=False, encoder_layer_norm=True)) == 0


def test_layer_normalization_is_parameter_free_and_normalises():
    norm = LayerNormalization()
    assert not list(norm.parameters())
    y = norm(torch.randn(2, 4, 9, 9) * 5 + 3)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(y.std(dim=(1, 2, 3), unbiased=False), torch.ones(2), atol=1e-3)


def test_change_detector_marks_the_moved_object_only():
    detector = PixelChangeDetector()
    frame = torch.zeros(1, 3, 224, 224)
    assert detector(frame).sum() == 0  # first frame: nothing to compare with
    moved = frame.clone()
    moved[..., 100:104, 50:54] = 1.0
    mask = detector(moved)
    assert mask.shape == (1, 1, 224, 224)
    assert mask[..., 100:104, 50:54].all()
    assert mask.sum() == 16
    assert detector(moved).sum() == 0  # a still frame has no change


def test_reachable_sigmoid_reaches_0_and_1_and_keeps_a_gradient_past_them():
    margin = 0.05
    logits = torch.tensor([-40.0, -3.5, -1.0, 0.0, 2.0, 3.5, 40.0], dtype=torch.float64, requires_grad=True)
    out = ReachableSigmoid.apply(logits, margin)
    expected = ((1 + 2 * margin) * torch.sigmoid(logits) - margin).clamp(0, 1)
    assert torch.equal(out, expected)
    assert out[0] == 0 and out[1] == 0 and out[-2] == 1 and out[-1] == 1
    out.sum().backward()
    inside = torch.autograd.grad(((1 + 2 * margin) * torch.sigmoid(logits[2:5])).sum(), logits)[0][2:5]
    assert torch.allclose(logits.grad[2:5], inside)  # the plain sigmoid's slope where nothing is clipped
    edge_slope = (1 + 2 * margin) * margin * (1 + margin) / (1 + 2 * margin) ** 2
    assert torch.allclose(logits.grad[[0, 1, 5, 6]], torch.full((4,), edge_slope, dtype=torch.float64))


def test_a_mostly_black_game_learns_more_than_a_constant_image():
    """Assault's frames are ~98% black. Before the reachable sigmoid and the decoder's
    layer norm, every optimizer's output saturated to a constant image within 25 frames
    and never recovered. No constant image beats the mean frame (the floor)."""
    torch.manual_seed(0)
    model = create_streaming_ae()
    mse, frames = [], []
    for frame in ale_frames("Assault", 300):
        results = model.update_params(frame)
        mse.append(results["mse"])
        frames.append(results["input"])
    tail = torch.cat(frames[200:])
    floor_mse = (tail - tail.mean(dim=0, keepdim=True)).square().mean()
    assert torch.stack(mse[200:]).mean() < floor_mse


def test_a_black_target_stops_pushing_the_logits_once_reached():
    """A plain sigmoid never reaches 0, so L1 pushes its logits down for ever; ours stops."""
    black = torch.zeros(1, 3, 16, 16)
    pushes = []
    for head in (lambda z: ReachableSigmoid.apply(z, 0.05), torch.sigmoid):
        logits = torch.full((1, 3, 16, 16), -4.0, requires_grad=True)
        error = head(logits) - black
        (error.square().mean() + 0.5 * error.abs().mean()).backward()
        pushes.append(logits.grad)
    assert torch.all(pushes[0] == 0)
    assert torch.all(pushes[1] > 0)

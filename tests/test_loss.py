import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from loss import LUMA_WEIGHTS, SSIM_STRIDE, luma, mark_constants_for_compile, reconstruction_loss, ssim


def test_loss_is_zero_for_identical_images():
    image = torch.rand(1, 3, 224, 224)
    parts = reconstruction_loss(image, image.clone())
    assert parts["loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["ssim"].item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_scikit_image(channels):
    rng = np.random.default_rng(0)
    x = rng.random((channels, 64, 80))
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    expected = structural_similarity(
        x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=0
    )
    ours = ssim(torch.from_numpy(x).unsqueeze(0), torch.from_numpy(y).unsqueeze(0)).item()
    assert ours == pytest.approx(expected, abs=1e-6)
    assert 0.1 < ours < 0.9  # a real, non-trivial pair


def test_strided_ssim_is_the_same_map_on_every_second_window():
    rng = np.random.default_rng(1)
    x = rng.random((61, 75))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    _, full_map = structural_similarity(
        x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True
    )
    valid = full_map[5:-5, 5:-5]  # skimage's map is padded; the mean uses the valid part
    ours = ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None], stride=2).item()
    assert ours == pytest.approx(valid[::2, ::2].mean(), abs=1e-6)
    assert ours != pytest.approx(valid.mean(), abs=1e-6)


def test_ssim_uses_data_range_one_not_255():
    x = torch.full((1, 1, 32, 32), 0.2, dtype=torch.float64)
    y = torch.full((1, 1, 32, 32), 0.6, dtype=torch.float64)
    c1 = 0.01**2
    assert ssim(x, y).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-4)


def test_loss_weights_are_mse_half_l1_tenth_ssim():
    x = torch.rand(1, 3, 64, 64)
    y = torch.rand(1, 3, 64, 64)
    parts = reconstruction_loss(x, y)
    expected = parts["mse"] + 0.5 * parts["l1"] + 0.1 * (1 - parts["ssim"])
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["ssim"].item() == pytest.approx(ssim(luma(x), luma(y), stride=SSIM_STRIDE).item())


def test_pixel_weight_reweights_the_loss_but_not_the_metrics():
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    weight = torch.ones(1, 1, 64, 64)
    weight[..., :8, :8] = 5
    plain, weighted = reconstruction_loss(x, y), reconstruction_loss(x, y, weight)
    assert weighted["mse"].item() == plain["mse"].item()
    assert weighted["loss"].item() != pytest.approx(plain["loss"].item(), rel=1e-4)


def _autograd_loss(x, y, weight):
    """The training loss of each image as plain formulas, for autograd: the fused Function's reference."""
    losses = []
    for i in range(x.shape[0]):
        error = x[i : i + 1] - y[i : i + 1]
        w = weight[i : i + 1] / weight[i : i + 1].mean() if weight is not None else torch.ones_like(error)
        reference = (w * error.square()).mean() + 0.5 * (w * error.abs()).mean()
        losses.append(reference + 0.1 * (1 - ssim(luma(x[i : i + 1]), luma(y[i : i + 1]), stride=SSIM_STRIDE)))
    return torch.stack(losses)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_fused_loss_gradient_matches_autograd(weighted, images, memory_format):
    torch.manual_seed(0)
    x = torch.rand(images, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    y = torch.rand(images, 3, 32, 32, dtype=torch.float64)
    weight = 1 + 4.0 * (torch.rand(images, 1, 32, 32, dtype=torch.float64) > 0.8).double() if weighted else None
    parts = reconstruction_loss(x, y, weight)
    (ours,) = torch.autograd.grad(parts["loss"], x)
    reference = _autograd_loss(x, y, weight)
    (expected,) = torch.autograd.grad(reference.mean(), x)
    assert parts["loss"].item() == pytest.approx(reference.mean().item(), rel=1e-12)
    assert torch.allclose(ours, expected, rtol=1e-10, atol=1e-14)
    assert ours.is_contiguous(memory_format=memory_format)  # mixed layouts slow every later op of the backward


@pytest.mark.parametrize("weighted", [False, True])
def test_per_image_loss_is_each_images_own_loss_and_gradient(weighted):
    """K streams learn from one image each: the loss of image i, and its gradient, must not
    depend on the other images (the pixel weights normalised within each image)."""
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64).requires_grad_()
    y = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    weight = 1 + 4.0 * (torch.rand(3, 1, 32, 32, dtype=torch.float64) > 0.8).double() if weighted else None
    parts = reconstruction_loss(x, y, weight, per_image=True)
    assert parts["loss"].shape == parts["mse"].shape == parts["ssim"].shape == (3,)
    (ours,) = torch.autograd.grad(parts["loss"].sum(), x)
    for i in range(3):
        alone = x[i : i + 1].detach().requires_grad_()
        single = reconstruction_loss(alone, y[i : i + 1], None if weight is None else weight[i : i + 1])
        for key in ("loss", "mse", "l1", "ssim"):
            assert parts[key][i].item() == pytest.approx(single[key].item(), rel=1e-12)
        torch.testing.assert_close(
            ours[i : i + 1], torch.autograd.grad(single["loss"], alone)[0], rtol=1e-10, atol=1e-14
        )


def test_fused_loss_traces_into_one_graph_for_torch_compile():
    """`--compile` traces the loss with the network; a graph break or a traced constant
    would show here. aot_eager runs dynamo and AOT autograd without generating code."""
    mark_constants_for_compile()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    y, weight = torch.rand(1, 3, 32, 32), 1 + 4.0 * (torch.rand(1, 1, 32, 32) > 0.8).float()
    compiled = torch.compile(reconstruction_loss, backend="aot_eager", fullgraph=True)
    eager_parts, compiled_parts = reconstruction_loss(x, y, weight), compiled(x, y, weight)
    for key in ("loss", "mse", "l1", "ssim"):
        torch.testing.assert_close(compiled_parts[key], eager_parts[key])
    torch.testing.assert_close(
        torch.autograd.grad(compiled_parts["loss"], x)[0], torch.autograd.grad(eager_parts["loss"], x)[0]
    )


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_luma_is_the_bt601_weighted_sum(memory_format):
    torch.manual_seed(0)
    image = torch.rand(1, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    expected = torch.einsum("nchw,c->nhw", image, torch.tensor(LUMA_WEIGHTS, dtype=torch.float64)).unsqueeze(1)
    torch.testing.assert_close(luma(image), expected)
    assert torch.autograd.gradcheck(luma, (image,))

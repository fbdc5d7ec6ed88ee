"""Reconstruction loss: MSE + 0.5 * L1 + 0.1 * (1 - SSIM), on images in [0, 1]."""

import torch
import torch.nn.functional as F

MSE_WEIGHT, L1_WEIGHT, SSIM_WEIGHT = 1.0, 0.5, 0.1
SSIM_C1, SSIM_C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2  # data_range = 1.0


def _gaussian_kernel(size: int = 11, sigma: float = 1.5, device=None, dtype=None) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


def luma(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) BT.601 luma Y."""
    weights = torch.tensor(LUMA_WEIGHTS, device=image.device, dtype=image.dtype)
    return torch.einsum("nchw,c->nhw", image, weights).unsqueeze(1)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of two (N, C, H, W) images with data_range = 1.

    An 11x11 Gaussian window (sigma 1.5) applied separably over the valid region, the
    same definition as skimage's `structural_similarity(gaussian_weights=True,
    use_sample_covariance=False, data_range=1.0)`, averaged over channels.
    """
    channels = x.shape[1]
    g = _gaussian_kernel(window, sigma, x.device, x.dtype)

    def blur(maps: torch.Tensor) -> torch.Tensor:
        n = maps.shape[1]
        maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(n, 1, 1, window), groups=n)
        return F.conv2d(maps, g.view(1, 1, -1, 1).expand(n, 1, window, 1), groups=n)

    if y.requires_grad:
        mu_x, mu_y, xx, yy, xy = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1)).split(channels, dim=1)
    else:  # the usual case, a fixed target: its statistics need no graph
        with torch.no_grad():
            mu_y, yy = blur(torch.cat([y, y * y], dim=1)).split(channels, dim=1)
        mu_x, xx, xy = blur(torch.cat([x, x * x, x * y], dim=1)).split(channels, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (numerator / denominator).mean()


def reconstruction_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The training loss and its parts, all 0-d tensors.

    SSIM is taken on the luma (Y) channel, as video codecs report it: a third of
    the cost of per-channel SSIM, while MSE and L1 keep colour exact.
    `mse`, `l1` and `ssim` are always the plain image metrics. `pixel_weight`
    (N, 1, H, W), if given, reweights the MSE and L1 terms of `loss` only (the
    change detector's emphasis on moving pixels); it is normalised to mean 1.
    """
    error = reconstruction - target
    mse, l1 = error.square().mean(), error.abs().mean()
    similarity = ssim(luma(reconstruction), luma(target))
    if pixel_weight is None:
        mse_term, l1_term = mse, l1
    else:
        weight = pixel_weight / pixel_weight.mean()
        mse_term, l1_term = (weight * error.square()).mean(), (weight * error.abs()).mean()
    loss = MSE_WEIGHT * mse_term + L1_WEIGHT * l1_term + SSIM_WEIGHT * (1 - similarity)
    return {"loss": loss, "mse": mse, "l1": l1, "ssim": similarity}

"""Reconstruction loss: MSE + 0.5 * L1 + 0.1 * (1 - SSIM), on images in [0, 1]."""

import torch

from utils import weighted_channel_sum

MSE_WEIGHT, L1_WEIGHT, SSIM_WEIGHT = 1.0, 0.5, 0.1
SSIM_C1, SSIM_C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2  # data_range = 1.0


SSIM_STRIDE = 2  # average the SSIM map over every 2nd window position in each direction


_blur_matrices: dict[tuple, torch.Tensor] = {}


def _blur_matrix(size: int, window: int, sigma: float, stride: int, device: torch.device, dtype: torch.dtype):
    """(size, outputs) banded matrix: column j is the 1-D Gaussian at rows j*stride ...

    Built once per argument set. A plain function over a dict (not `lru_cache`), so
    that `mark_constants_for_compile` can mark it.
    """
    key = (size, window, sigma, stride, device, dtype)
    if key not in _blur_matrices:
        coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
        kernel = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel /= kernel.sum()
        starts = range(0, size - window + 1, stride)
        matrix = torch.zeros(size, len(starts), dtype=torch.float64)
        for j, start in enumerate(starts):
            matrix[start : start + window, j] = kernel
        _blur_matrices[key] = matrix.to(device=device, dtype=dtype)
    return _blur_matrices[key]


def mark_constants_for_compile() -> None:
    """Let torch.compile bake the SSIM blur matrices into its graph as constants,
    instead of tracing their construction (a hundred index writes) into every call.
    Called only when compiling: it imports torch._dynamo, ten seconds on a small CPU."""
    torch.compiler.assume_constant_result(_blur_matrix)


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


class Luma(torch.autograd.Function):
    """(N, 3, H, W) RGB -> (N, 1, H, W) BT.601 luma Y, one strided pass per channel.

    The gradient is written channel by channel into the image's own layout
    (channels_last on a CPU): a contraction over C (einsum) ran as a batched matmul and
    returned a contiguous gradient, which made every later full-resolution op of
    the backward pass mix two layouts, two to four times slower on a CPU.
    """

    @staticmethod
    def forward(ctx, image: torch.Tensor) -> torch.Tensor:
        ctx.shape = image.shape
        ctx.channels_last = image.is_contiguous(memory_format=torch.channels_last)
        return weighted_channel_sum(image, LUMA_WEIGHTS)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if ctx.channels_last else torch.contiguous_format
        grad_image = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=memory_format)
        for c, weight in enumerate(LUMA_WEIGHTS):
            grad_image[:, c : c + 1] = grad * weight
        return grad_image


def luma(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) BT.601 luma Y."""
    return Luma.apply(image)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5, stride: int = 1) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of two (N, C, H, W) images with data_range = 1.

    An 11x11 Gaussian window (sigma 1.5) over the valid region, the definition of
    skimage's `structural_similarity(gaussian_weights=True, use_sample_covariance=False,
    data_range=1.0)`, averaged over channels. With `stride` s the same SSIM map is
    averaged over every s-th window position in each direction.

    The separable blur runs as two matrix products with banded Gaussian matrices:
    on a CPU that beats a depthwise convolution, whose cost here is per-call overhead.
    The blurred maps come out transposed (W, H), the same for all, which the mean
    does not see.
    """
    h, w = x.shape[-2:]
    along_w = _blur_matrix(w, window, sigma, stride, x.device, x.dtype)
    along_h = _blur_matrix(h, window, sigma, stride, x.device, x.dtype)

    def blur(maps: torch.Tensor) -> torch.Tensor:
        return (maps @ along_w).mT @ along_h

    channels = x.shape[1]
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


class PixelLoss(torch.autograd.Function):
    """MSE + 0.5 * L1 of (reconstruction - target), optionally per-pixel weighted.

    Returns (mse + 0.5 * l1 with the weights, plain mse, plain l1); only the first
    is differentiable. One hand-written backward, 2 * w * e / n + 0.5 * w * sign(e) / n,
    replaces autograd's dozen full-resolution passes, which cost more on a CPU
    than the arithmetic (plain and weighted terms, each mean, pow and abs).
    """

    @staticmethod
    def forward(ctx, reconstruction, target, pixel_weight):
        error = reconstruction - target
        squared, absolute = error * error, error.abs()
        mse, l1 = squared.mean(), absolute.mean()
        if pixel_weight is None:
            weight = None
            weighted = MSE_WEIGHT * mse + L1_WEIGHT * l1
        else:  # normalised to mean 1; applied per pixel after summing over C (no broadcast over C)
            weight = pixel_weight / pixel_weight.mean()
            per_value = torch.add(squared, absolute, alpha=L1_WEIGHT / MSE_WEIGHT)
            per_pixel = weighted_channel_sum(per_value, (1.0,) * per_value.shape[1])
            weighted = MSE_WEIGHT * (per_pixel * weight).sum() / error.numel()
        ctx.save_for_backward(error, weight)
        ctx.mark_non_differentiable(mse, l1)
        return weighted, mse, l1

    @staticmethod
    def backward(ctx, grad, _grad_mse, _grad_l1):
        error, weight = ctx.saved_tensors
        scale = grad / error.numel()
        grad_error = torch.addcmul(error.sign() * (L1_WEIGHT * scale), error, 2 * MSE_WEIGHT * scale)
        if weight is not None:  # channel by channel: broadcasting over a channels_last C is slow
            for c in range(grad_error.shape[1]):
                grad_error[:, c : c + 1].mul_(weight)
        return grad_error, None, None


def reconstruction_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The training loss and its parts, all 0-d tensors.

    SSIM is taken on the luma (Y) channel, as video codecs report it, and averaged
    over every 2nd window position in each direction: a twelfth of the cost of dense
    per-channel SSIM, while MSE and L1 keep colour exact.
    `mse`, `l1` and `ssim` are always the plain image metrics. `pixel_weight`
    (N, 1, H, W), if given, reweights the MSE and L1 terms of `loss` only (the
    change detector's emphasis on moving pixels); it is normalised to mean 1.
    The target gets no gradient.
    """
    pixel_terms, mse, l1 = PixelLoss.apply(reconstruction, target.detach(), pixel_weight)
    similarity = ssim(luma(reconstruction), luma(target), stride=SSIM_STRIDE)
    loss = pixel_terms + SSIM_WEIGHT * (1 - similarity)
    return {"loss": loss, "mse": mse, "l1": l1, "ssim": similarity}

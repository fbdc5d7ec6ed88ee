"""Reconstruction loss: MSE + 0.5 * L1 + 0.1 * (1 - SSIM), on images in [0, 1]."""

import torch

MSE_WEIGHT, L1_WEIGHT, SSIM_WEIGHT = 1.0, 0.5, 0.1
SSIM_C1, SSIM_C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2  # data_range = 1.0
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_STRIDE = 2  # the training loss averages the SSIM map over every 2nd window position in each direction
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601

_constants: dict[tuple, torch.Tensor] = {}


def _blur_matrix(size: int, window: int, sigma: float, stride: int, device: torch.device, dtype: torch.dtype):
    """(size, outputs) banded matrix: column j is the 1-D Gaussian at rows j*stride ...

    Built once per argument set. A plain function over a dict (not `lru_cache`), so
    that `mark_constants_for_compile` can mark it.
    """
    key = ("blur", size, window, sigma, stride, device, dtype)
    if key not in _constants:
        coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
        kernel = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel /= kernel.sum()
        starts = range(0, size - window + 1, stride)
        matrix = torch.zeros(size, len(starts), dtype=torch.float64)
        for j, start in enumerate(starts):
            matrix[start : start + window, j] = kernel
        _constants[key] = matrix.to(device=device, dtype=dtype)
    return _constants[key]


def _luma_weights(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """LUMA_WEIGHTS as a (3,) tensor, built once per device: no host-to-device copy per call."""
    key = ("luma", device, dtype)
    if key not in _constants:
        _constants[key] = torch.tensor(LUMA_WEIGHTS, dtype=dtype).to(device)
    return _constants[key]


def mark_constants_for_compile() -> None:
    """Let torch.compile bake the blur matrices and luma weights into its graph as
    constants, instead of tracing their construction (a hundred index writes) into every
    call. Called only when compiling: it imports torch._dynamo, slow to start on a small
    CPU (measured in docs/BENCHMARKS.md)."""
    torch.compiler.assume_constant_result(_blur_matrix)
    torch.compiler.assume_constant_result(_luma_weights)


def _pixels(image: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C): a view of a channels_last image (a copy otherwise)."""
    return image.permute(0, 2, 3, 1).reshape(-1, image.shape[1])


def luma(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) BT.601 luma Y."""
    n, _, h, w = image.shape
    return (_pixels(image) @ _luma_weights(image.device, image.dtype)).view(n, 1, h, w)


def _blur_pair(size: tuple[int, int], stride: int, like: torch.Tensor):
    h, w = size
    return (
        _blur_matrix(h, SSIM_WINDOW, SSIM_SIGMA, stride, like.device, like.dtype),
        _blur_matrix(w, SSIM_WINDOW, SSIM_SIGMA, stride, like.device, like.dtype),
    )


def _blur(maps: torch.Tensor, along_h: torch.Tensor, along_w: torch.Tensor) -> torch.Tensor:
    """Gaussian-blur (B, H, W) maps at the window positions: (B, W', H'), transposed.

    The separable blur runs as two matrix products with banded Gaussian matrices: on a
    CPU that beats a depthwise convolution, whose cost here is per-call overhead. The
    maps come out transposed, which no elementwise statistic or mean sees.
    """
    return (maps @ along_w).mT @ along_h


def _ssim_map(mu_x, mu_y, xx, yy, xy):
    """The SSIM map from the blurred statistics, and its numerator and denominator factors."""
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    n1, n2 = 2 * mu_xy + SSIM_C1, 2 * (xy - mu_xy) + SSIM_C2
    d1, d2 = mu_xx + mu_yy + SSIM_C1, (xx - mu_xx) + (yy - mu_yy) + SSIM_C2
    return n1 * n2 / (d1 * d2), (n1, n2, d1, d2)


def ssim(x: torch.Tensor, y: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of two (N, C, H, W) images with data_range = 1.

    An 11x11 Gaussian window (sigma 1.5) over the valid region, the definition of
    skimage's `structural_similarity(gaussian_weights=True, use_sample_covariance=False,
    data_range=1.0)`, averaged over channels. With `stride` s the same SSIM map is
    averaged over every s-th window position in each direction. Differentiable by autograd.
    """
    return _ssim_terms(x, y, stride)[1].mean()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, stride: int):
    """(blurred statistics (5, N*C, W', H'), SSIM map, its factors) of two (N, C, H, W) images."""
    along_h, along_w = _blur_pair(x.shape[-2:], stride, x)
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y]).flatten(0, 1), along_h, along_w).unflatten(0, (5, -1))
    return (stats, *_ssim_map(*stats.unbind(0)))


class ReconstructionLoss(torch.autograd.Function):
    """The whole training loss of each image with a hand-written backward; outputs
    (loss, mse, l1, ssim), each (N,), one value per image.

    Only the loss is differentiable, with respect to the reconstruction. On a CPU each
    full-resolution pass costs more than its arithmetic, so this keeps them few: the
    forward reads the images nine times (colour reductions per pixel are matrix-vector
    products on the (pixels, 3) view), and the backward writes the gradient in four
    passes as a channels_last image (the CPU model's layout; a contiguous reconstruction,
    as on CUDA, gets a contiguous copy). The SSIM
    gradient is three transposed blurs of the SSIM map's partial derivatives in
    mu_x, E[x^2] and E[xy]. Autograd over the same formulas takes more time per
    update (measured in docs/BENCHMARKS.md).
    """

    @staticmethod
    def forward(ctx, reconstruction, target, pixel_weight):
        n, channels = reconstruction.shape[:2]
        count = reconstruction[0].numel()  # values per image
        error = reconstruction - target
        error_pixels = _pixels(error).reshape(n, -1)
        absolute = error_pixels.abs()
        mse = torch.linalg.vector_norm(error_pixels, dim=1).square() / count
        l1 = absolute.sum(1) / count
        if pixel_weight is None:
            weight_mean = None
            pixel_terms = MSE_WEIGHT * mse + L1_WEIGHT * l1
        else:  # normalised to mean 1 per image: sum over pixels of w * (MSE_WEIGHT * e^2 + L1_WEIGHT * |e|)
            weights = pixel_weight.reshape(n, -1, 1)
            weight_mean = weights.mean((1, 2))
            per_value = torch.addcmul(absolute * L1_WEIGHT, absolute, absolute, value=MSE_WEIGHT)
            per_channel = per_value.view(n, -1, channels).mT @ weights  # (N, C, 1)
            pixel_terms = per_channel.sum((1, 2)) / (count * weight_mean)

        x, y = luma(reconstruction), luma(target)
        stats, ssim_map, factors = _ssim_terms(x, y, SSIM_STRIDE)
        similarity = ssim_map.mean((1, 2))
        loss = pixel_terms + SSIM_WEIGHT * (1 - similarity)

        ctx.save_for_backward(error, pixel_weight, weight_mean, x, y, stats[0], stats[1], ssim_map, *factors)
        ctx.channels_last = reconstruction.is_contiguous(memory_format=torch.channels_last)
        ctx.mark_non_differentiable(mse, l1, similarity)
        return loss, mse, l1, similarity

    @staticmethod
    def backward(ctx, grad, _grad_mse, _grad_l1, _grad_ssim):
        error, pixel_weight, weight_mean, x, y, mu_x, mu_y, ssim_map, n1, n2, d1, d2 = ctx.saved_tensors
        n, c, h, w = error.shape
        # SSIM: partial derivatives of each mean map in mu_x, E[x^2] and E[xy], blurred back to pixels
        scale = grad.view(n, 1, 1) * (-SSIM_WEIGHT / ssim_map[0].numel())
        inverse = 1 / (d1 * d2)
        d_mu = 2 * mu_y * (n2 - n1) * inverse - 2 * mu_x * ssim_map * (1 / d1 - 1 / d2)
        d_xx = -ssim_map / d2
        d_xy = 2 * n1 * inverse
        partials = torch.stack([d_mu, d_xx, d_xy]) * scale  # (3, N, W', H'): transposed, like the blurred maps
        along_h, along_w = _blur_pair(x.shape[-2:], SSIM_STRIDE, x)
        back = (along_h @ partials.mT @ along_w.T).unsqueeze(2)  # (3, N, 1, H, W)
        grad_luma = torch.addcmul(back[0], x, back[1], value=2).addcmul_(y, back[2])
        # MSE and L1: w * (2 * MSE_WEIGHT * e + L1_WEIGHT * sign(e)) / count, per pixel weight w
        pixel_scale = (grad * (L1_WEIGHT / error[0].numel())).view(n, 1, 1)
        if pixel_weight is not None:
            pixel_scale = (pixel_weight.reshape(n, -1, 1) / weight_mean.view(n, 1, 1)) * pixel_scale
        error_pixels = _pixels(error).reshape(n, -1, c)
        grad_error = error_pixels.sign().add_(error_pixels, alpha=2 * MSE_WEIGHT / L1_WEIGHT)
        luma_weights = _luma_weights(error.device, error.dtype)
        grad_pixels = torch.addcmul(grad_luma.reshape(n, -1, 1) * luma_weights, grad_error, pixel_scale)
        grad_image = grad_pixels.view(n, h, w, c).permute(0, 3, 1, 2)  # channels_last
        return (grad_image if ctx.channels_last else grad_image.contiguous()), None, None


def reconstruction_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    per_image: bool = False,
) -> dict[str, torch.Tensor]:
    """The training loss and its parts: 0-d tensors, the mean over the N images, or with
    `per_image` (N,) tensors, each image's own (K streams learn from one image each).

    SSIM is taken on the luma (Y) channel, as video codecs report it, and averaged
    over every 2nd window position in each direction: a twelfth of the window
    positions of dense per-channel SSIM, while MSE and L1 keep colour exact.
    `mse`, `l1` and `ssim` are always the plain image metrics. `pixel_weight`
    (N, 1, H, W), if given, reweights the MSE and L1 terms of `loss` only (the
    change detector's emphasis on moving pixels); it is normalised to mean 1 per image.
    The target gets no gradient.
    """
    if pixel_weight is not None:
        pixel_weight = pixel_weight.to(reconstruction.dtype)
    parts = ReconstructionLoss.apply(reconstruction, target.detach(), pixel_weight)
    return dict(zip(("loss", "mse", "l1", "ssim"), parts if per_image else (p.mean() for p in parts)))

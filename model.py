"""The network: a three-branch convolutional encoder and a fused decoder.

Every named part has a single role and a switch in `ModelConfig`:

- LayerNormalization: parameter-free normalisation after the decoder's fusion and
  first upsampling, which keeps activations on one scale as the frame statistics
  drift (as in the streaming-RL paper, where it is what makes large streaming steps
  safe). Without it in the decoder, activations grow without bound and a stream can
  collapse (measured in docs/BENCHMARKS.md). After each encoder convolution
  (`encoder_layer_norm`) it buys no quality measurable over three seeds and costs
  time per update (measured in docs/BENCHMARKS.md), so it is off there by default.
- ResidualBlock: extra depth in the decoder trunk at 28x28, with an identity path
  so gradients pass undamped.
- TransformerBlock: global self-attention over the fused decoder features, so a
  pixel can use context from the whole screen (score bars, mirrored layouts).
- PixelChangeDetector: |frame_t - frame_t-1| against an adaptive threshold; its mask
  weights the loss towards moving objects (a ball is a few pixels that plain MSE
  ignores). It sees input frames only, so it never feeds the decoder.
- LatentQuantizer: bounds the latents and rounds them to `latent_bits` bits, so the
  decoder learns from and is scored on exactly the codes a bitstream carries.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils import FRAME_SIZE, compute_frame_difference

BRANCH_KERNELS = (3, 5, 7)


@dataclass(frozen=True)
class ModelConfig:
    latent_channels: int = 3
    small_latent_channels: int = 2  # the 5x5 and 7x7 branches, fixed by the spec
    encoder_widths: tuple[int, int] = (8, 8)
    decoder_width: int = 32
    branch_heads: bool = False  # a 3x3 conv per latent before the resize and a 1x1 fusion; off: one 3x3 fusion
    upsampled_width: int = 16  # channels at 56x56, before the last sub-pixel step to 224x224
    fused_size: int = 28
    use_layer_norm: bool = True
    encoder_layer_norm: bool = False  # with use_layer_norm, also normalise after each encoder convolution
    use_residual: bool = False  # off by default: the speed/quality trade-off is in docs/BENCHMARKS.md
    use_transformer: bool = False  # likewise
    use_change_detector: bool = True
    output_margin: float = 0.05  # 0: a plain sigmoid (see ReachableSigmoid)
    latent_bits: int = 8  # levels per latent value: 2^bits in [-1, 1]; 0 = float latents, unbounded (an ablation)
    latent_noise: bool = False  # learn through uniform noise instead of straight-through rounding (see LatentQuantizer)

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Latent (C, H, W) per branch: three stride-2 no-padding convolutions."""
        shapes = []
        for i, k in enumerate(BRANCH_KERNELS):
            size = FRAME_SIZE
            for _ in range(3):
                size = (size - k) // 2 + 1
            shapes.append((self.latent_channels if i == 0 else self.small_latent_channels, size, size))
        return shapes


def compression_ratios(config: ModelConfig) -> dict[str, float]:
    """Input values (224*224*3) per latent value, per branch and for all three."""
    pixels = FRAME_SIZE * FRAME_SIZE * 3
    sizes = [c * h * w for c, h, w in config.latent_shapes()]
    ratios = {f"{k}x{k}": pixels / n for k, n in zip(BRANCH_KERNELS, sizes)}
    ratios["all"] = pixels / sum(sizes)
    return ratios


class LayerNormalization(nn.Module):
    """Parameter-free layer norm over (C, H, W) of each sample: no learned affine."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, 1, eps=self.eps)  # one group = layer norm over (C, H, W), keeps channels_last


class ResidualBlock(nn.Module):
    """x + conv(act(conv(x))): two 3x3 same-size convolutions with a skip path."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention and MLP over a 2x2-pooled feature map, added back residually.

    Every position gets context from the whole screen. Attending over the pooled
    map (196 tokens at 28x28) costs a quarter of full resolution; the block's output
    is upsampled bilinearly and added to its input.
    """

    def __init__(self, channels: int, heads: int = 2, mlp_ratio: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(channels, elementwise_affine=False)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(channels, mlp_ratio * channels), nn.GELU(), nn.Linear(mlp_ratio * channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 2)
        b, c, h, w = pooled.shape
        tokens = pooled.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm1(tokens)).unflatten(-1, (3, self.heads, c // self.heads)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        update = self.proj(attended)
        update = update + self.mlp(self.norm2(tokens + update))
        update = update.transpose(1, 2).reshape(b, c, h, w)
        return x + F.interpolate(update, size=x.shape[-2:], mode="bilinear", align_corners=False)


class PixelChangeDetector(nn.Module):
    """Change mask from |frame_t - frame_t-1| with an adaptive threshold.

    The threshold is mean + `sensitivity` * std of each frame's difference map,
    floored at `min_threshold` so sensor-free Atari frames with no motion give an
    empty mask. It keeps the previous frame as a buffer; the first frame has no
    change. Everything stays on the device (no host sync).
    """

    def __init__(self, sensitivity: float = 2.0, min_threshold: float = 0.02):
        super().__init__()
        self.sensitivity = sensitivity
        self.min_threshold = min_threshold
        self.register_buffer("previous", torch.empty(0), persistent=False)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        if self.previous.shape != frame.shape:
            self.previous = frame.detach().clone()
        diff = compute_frame_difference(frame, self.previous)
        self.previous.copy_(frame.detach())  # in place: a captured CUDA graph reads this very buffer
        per_image = diff.flatten(1)  # one threshold per frame: K streams are K frames of a batch
        spread = per_image.mean(1) + self.sensitivity * per_image.std(1)
        threshold = torch.clamp(spread, min=self.min_threshold).view(-1, 1, 1, 1)
        return (diff > threshold).to(frame.dtype)


def _conv_stage(c_in: int, c_out: int, kernel: int, layer_norm: bool) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride=2)]
    if layer_norm:
        layers.append(LayerNormalization())
    layers.append(nn.LeakyReLU())
    return nn.Sequential(*layers)


class EncoderBranch(nn.Module):
    """Three stride-2 no-padding k x k convolutions: 224 -> latent (C, s, s)."""

    def __init__(self, kernel: int, latent_channels: int, config: ModelConfig):
        super().__init__()
        w1, w2 = config.encoder_widths
        layer_norm = config.use_layer_norm and config.encoder_layer_norm
        self.stage1 = _conv_stage(3, w1, kernel, layer_norm)
        self.stage2 = _conv_stage(w1, w2, kernel, layer_norm)
        self.to_latent = nn.Conv2d(w2, latent_channels, kernel, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.stage2(self.stage1(x)))

    def hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(stage 1 output, stage 2 output, latent): the hidden maps after their activation."""
        first = self.stage1(x)
        second = self.stage2(first)
        return first, second, self.to_latent(second)


class Encoder(nn.Module):
    """Three parallel branches (3x3, 5x5, 7x7 kernels), one latent each."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        shapes = config.latent_shapes()
        self.branches = nn.ModuleList(EncoderBranch(k, shape[0], config) for k, shape in zip(BRANCH_KERNELS, shapes))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [branch(x) for branch in self.branches]

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The second stage's feature maps of each branch, for visualisation."""
        return {f"{k}x{k}": b.stage2(b.stage1(x)) for k, b in zip(BRANCH_KERNELS, self.branches)}


class LatentQuantizer(nn.Module):
    """Bounds each latent value to [-1, 1] with tanh and rounds it to one of 2^bits levels.

    The forward pass always uses the rounded value. Its gradient is straight-through:
    rounding counts as the identity, so the encoder gets tanh's gradient. `noisy`
    is the other training proxy (Ballé et al., 2017): tanh plus uniform noise one
    level wide, from a generator the caller owns. With `bits=0` the latents stay
    float and unbounded. Codes are the integers 0 .. 2^bits - 1.
    """

    def __init__(self, bits: int):
        super().__init__()
        if not 0 <= bits <= 16:
            raise ValueError(f"latent_bits must be 0 (float) to 16, got {bits}")
        self.bits = bits
        self.top = 2**bits - 1

    def _scaled(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(z) + 1.0) * (self.top / 2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.bits:
            return z
        scaled = self._scaled(z)
        return self.values(scaled + (scaled.round() - scaled).detach())  # exactly round(scaled) going forward

    def noisy(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scaled = self._scaled(z)
        noise = torch.rand(scaled.shape, generator=generator, device=scaled.device, dtype=scaled.dtype)
        return self.values(scaled + noise - 0.5)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """The integer code of each latent value (int64)."""
        return self._scaled(z).round_().long()

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """The latent value the decoder sees for each code (or scaled value, in its own dtype)."""
        return (codes if codes.is_floating_point() else codes.float()).mul(2 / self.top).sub_(1.0)


class ReachableSigmoid(torch.autograd.Function):
    """clip((1 + 2m) * sigmoid(z) - m, 0, 1): a sigmoid that reaches 0 and 1 exactly.

    A plain sigmoid reaches 0 only at z = -inf. On mostly black frames the L1 term,
    whose gradient is sign(error) however tiny the error, then drives the logits
    without end, the sigmoid saturates and no gradient ever reaches a bright pixel
    again (measured on Assault in docs/BENCHMARKS.md). Widened by the margin m, the output
    reaches 0 and 1 at finite logits, +-log((1 + m) / m), where the error and so
    the push become exactly zero. Past those logits the backward pass uses the
    slope at the nearest one, so a pixel whose target changes still learns.

    The slope is computed from the output alone: with u = output + m = (1 + 2m) * s,
    (1 + 2m) * s * (1 - s) = u - u^2 / (1 + 2m), which at a clipped output (u = m or
    1 + m) is exactly the slope at the edge logit.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, margin: float) -> torch.Tensor:
        output = torch.sigmoid(logits).mul_(1 + 2 * margin).sub_(margin).clamp_(0.0, 1.0)
        ctx.save_for_backward(output)
        ctx.margin = margin
        return output

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (output,) = ctx.saved_tensors
        shifted = output + ctx.margin
        return torch.addcmul(shifted, shifted, shifted, value=-1 / (1 + 2 * ctx.margin)).mul_(grad), None


class DenseGrad(torch.autograd.Function):
    """Identity whose backward hands on a dense copy of the gradient, in the input's layout.

    `torch.cat`'s backward gives each input a strided slice of the concatenated
    gradient; bilinear upsampling's backward runs slower on such a slice than on a
    dense copy, even counting the copy (`docs/cpu_profile.py layout`, measured in
    docs/BENCHMARKS.md).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)


class _Upsample(nn.Sequential):
    """Sub-pixel upsampling: a 3x3 conv to factor^2 * c_out channels, then PixelShuffle."""

    def __init__(self, c_in: int, c_out: int, factor: int = 2):
        super().__init__(nn.Conv2d(c_in, factor * factor * c_out, 3, padding=1), nn.PixelShuffle(factor))


class Decoder(nn.Module):
    """A learned fusion of the three latents and a sub-pixel upsampling trunk.

    The latents are resized bilinearly to `fused_size` and fused by one 3x3 conv over
    their concatenation (with `branch_heads`, each latent first gets its own 3x3 conv
    and the fusion is 1x1: four convolutions instead of one, slower and no better in
    docs/BENCHMARKS.md's ablation). The trunk upsamples 28 -> 56 -> 224 with PixelShuffle,
    so no convolution runs at 224x224 (full-resolution layers dominate the cost). It sees
    the latents only.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.decoder_width
        self.fused_size = config.fused_size
        self.output_margin = config.output_margin
        latent_channels = [c for c, _, _ in config.latent_shapes()]
        if config.branch_heads:
            self.heads = nn.ModuleList(nn.Conv2d(c, width, 3, padding=1) for c in latent_channels)
            self.fuse = nn.Conv2d(3 * width, width, 1)
        else:
            self.heads = None
            self.fuse = nn.Conv2d(sum(latent_channels), width, 3, padding=1)
        self.residual = ResidualBlock(width) if config.use_residual else nn.Identity()
        self.transformer = TransformerBlock(width) if config.use_transformer else nn.Identity()
        self.up = _Upsample(width, config.upsampled_width)
        self.to_rgb = _Upsample(config.upsampled_width, 3, factor=4)
        self.norm = LayerNormalization() if config.use_layer_norm else nn.Identity()

    def forward(self, latents: list[torch.Tensor]) -> torch.Tensor:
        return self.hidden(latents)[-1]

    def hidden(self, latents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fused 28x28 features, upsampled 56x56 features, output image): the hidden maps
        after their activation, and the reconstruction."""

        def resize(z: torch.Tensor) -> torch.Tensor:
            return F.interpolate(z, size=(self.fused_size, self.fused_size), mode="bilinear", align_corners=False)

        if self.heads is None:
            branches = [resize(z) for z in latents]
        else:
            branches = [DenseGrad.apply(resize(F.leaky_relu(head(z)))) for head, z in zip(self.heads, latents)]
        fused = F.leaky_relu(self.norm(self.fuse(torch.cat(branches, dim=1))))
        upsampled = F.leaky_relu(self.norm(self.up(self.transformer(self.residual(fused)))))
        logits = self.to_rgb(upsampled)
        image = ReachableSigmoid.apply(logits, self.output_margin) if self.output_margin > 0 else torch.sigmoid(logits)
        return fused, upsampled, image


class AutoEncoder(nn.Module):
    """The network alone: frames (N, 3, 224, 224) -> (reconstructions, quantised latents)."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = LatentQuantizer(config.latent_bits)
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor, hidden: dict | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """With `hidden` (a dict), every hidden layer's activation of this very pass is
        recorded in it by name (see `hidden_activations`)."""
        if hidden is None:
            latents = [self.quantizer(z) for z in self.encoder(x)]
            return self.decoder(latents), latents
        maps, latents, image = self._hidden_pass(x)
        hidden.update(maps)
        return image, latents

    def codes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The integer codes of each branch's latent (needs `latent_bits` > 0)."""
        return [self.quantizer.codes(z) for z in self.encoder(x)]

    def decode_codes(self, codes: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder([self.quantizer.values(c) for c in codes])

    def hidden_activations(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every hidden convolution's output after its activation (the encoder stages, the
        decoder's fusion and upsampling; not the latents, not the RGB output), by name,
        and the reconstruction."""
        maps, _, image = self._hidden_pass(x)
        return maps, image

    def _hidden_pass(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], torch.Tensor]:
        maps, latents = {}, []
        for k, branch in zip(BRANCH_KERNELS, self.encoder.branches):
            first, second, latent = branch.hidden(x)
            maps[f"encoder.{k}x{k}.stage1"], maps[f"encoder.{k}x{k}.stage2"] = first, second
            latents.append(self.quantizer(latent))
        maps["decoder.fuse"], maps["decoder.up"], image = self.decoder.hidden(latents)
        return maps, latents, image


@dataclass(frozen=True)
class HiddenLayer:
    """Where the units of a hidden layer live: the convolution that makes them (a unit is
    `group` consecutive output channels of it: 4 where a 2x pixel shuffle follows, which
    turns 4 channels into one channel at twice the resolution) and the one that reads them
    (a unit is one of its input channels)."""

    produced_by: str
    read_by: str
    group: int = 1


def hidden_layers(config: ModelConfig) -> dict[str, HiddenLayer]:
    """The hidden layers of `hidden_activations` whose units can be reset, by the same names.
    The fusion's units feed the residual or attention block when one is on, where zeroing
    outgoing weights would not silence them: then the fusion is not listed."""
    layers = {}
    for i, k in enumerate(BRANCH_KERNELS):
        branch = f"encoder.branches.{i}"
        layers[f"encoder.{k}x{k}.stage1"] = HiddenLayer(f"{branch}.stage1.0", f"{branch}.stage2.0")
        layers[f"encoder.{k}x{k}.stage2"] = HiddenLayer(f"{branch}.stage2.0", f"{branch}.to_latent")
    if not (config.use_residual or config.use_transformer):
        layers["decoder.fuse"] = HiddenLayer("decoder.fuse", "decoder.up.0")
    layers["decoder.up"] = HiddenLayer("decoder.up.0", "decoder.to_rgb.0", group=4)
    return layers


class StreamConv2d(nn.Module):
    """K convolutions of one shape, one per stream, as one grouped convolution.

    Image k of the batch is stream k's; weight (K, out, in, kh, kw), bias (K, out). On
    the frames themselves (an input that needs no gradient: three channels at full
    resolution) K convolutions of batch 1 run faster on a CPU than the grouped one
    (`docs/cpu_profile.py streams`), so there it runs them in turn.
    """

    stream_layer = True

    def __init__(self, conv: nn.Conv2d, streams: int):
        super().__init__()
        self.stride, self.padding, self.groups = conv.stride, conv.padding, conv.groups
        self.weight = nn.Parameter(conv.weight.detach().expand(streams, *conv.weight.shape).clone())
        self.bias = nn.Parameter(conv.bias.detach().expand(streams, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        streams = self.weight.shape[0]
        if not x.requires_grad and x.device.type == "cpu":
            return torch.cat(
                [
                    F.conv2d(x[k : k + 1], self.weight[k], self.bias[k], self.stride, self.padding, groups=self.groups)
                    for k in range(streams)
                ]
            )
        folded = x.reshape(1, -1, *x.shape[-2:])  # (K, C, H, W) -> (1, K*C, H, W), a copy if channels_last
        out = F.conv2d(
            folded,
            self.weight.flatten(0, 1),
            self.bias.flatten(),
            self.stride,
            self.padding,
            groups=streams * self.groups,
        )
        return out.view(streams, -1, *out.shape[-2:])


class StreamLinear(nn.Module):
    """K linear layers of one shape, one per stream, as one batched matrix product over
    (K, ..., in) inputs; weight (K, out, in), bias (K, out)."""

    stream_layer = True

    def __init__(self, linear: nn.Linear, streams: int):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().expand(streams, *linear.weight.shape).clone())
        self.bias = nn.Parameter(linear.bias.detach().expand(streams, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        return torch.baddbmm(self.bias.unsqueeze(1), rows, self.weight.mT).view(*x.shape[:-1], -1)


def stream_network(config: ModelConfig, streams: int) -> AutoEncoder:
    """The network of `config` for K independent streams: every convolution and linear layer
    K-stream, image k of a batch stream k's (every other layer is already per image). Its
    parameters have the single network's names, each with a leading K dimension."""
    network = AutoEncoder(config)
    for module in list(network.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(module, name, StreamConv2d(child, streams))
            elif isinstance(child, nn.Linear):
                setattr(module, name, StreamLinear(child, streams))
    return network

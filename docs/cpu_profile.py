"""The CPU microbenchmarks behind docs/BENCHMARKS.md's speed analysis.

    uv run docs/cpu_profile.py [layout|convs|ssim|loss|threads|ops|candidates|streams ...]   (all when none given)

Each section prints plain lines of microseconds or milliseconds per call (median of
repeated calls, after a warm-up). Run it on an otherwise idle machine.
"""

import collections
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autoencoder import StreamingAutoEncoder  # noqa: E402
from benchmarks.speed import count_gflop  # noqa: E402
from loss import L1_WEIGHT, MSE_WEIGHT, SSIM_STRIDE, SSIM_WEIGHT, _blur_matrix, luma, reconstruction_loss, ssim  # noqa: E402
from model import ModelConfig  # noqa: E402
from stream import collect_frames  # noqa: E402
from utils import keep_freed_memory, weighted_channel_sum  # noqa: E402

CL = torch.channels_last


def us_per_call(fn, calls: int = 200) -> float:
    for _ in range(calls // 10):
        fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls // 5):
            fn()
        times.append((time.perf_counter() - start) / (calls // 5) * 1e6)
    return statistics.median(times)


def layout() -> None:
    """Full-resolution elementwise ops with one layout or two; upsampling's backward."""
    a = torch.rand(1, 3, 224, 224).contiguous(memory_format=CL)
    b = torch.rand(1, 3, 224, 224).contiguous(memory_format=CL)
    c = torch.rand(1, 3, 224, 224)
    print(
        f"layout: mul channels_last*channels_last {us_per_call(lambda: a * b):.0f} us, "
        f"channels_last*contiguous {us_per_call(lambda: a * c):.0f} us"
    )
    print(
        f"layout: mean over C of a channels_last image {us_per_call(lambda: a.mean(1, keepdim=True)):.0f} us, "
        f"three strided passes {us_per_call(lambda: weighted_channel_sum(a, (1 / 3,) * 3)):.0f} us"
    )
    sliced = torch.randn(1, 96, 28, 28).contiguous(memory_format=CL)[:, :32]
    dense = sliced.contiguous(memory_format=CL)

    def upsample_backward(grad):
        return torch.ops.aten.upsample_bilinear2d_backward(grad, [28, 28], [1, 32, 27, 27], False)

    print(
        f"layout: bilinear upsampling backward on a strided slice {us_per_call(lambda: upsample_backward(sliced)):.0f} us, "
        f"on a dense copy {us_per_call(lambda: upsample_backward(dense)):.0f} us "
        f"+ the copy {us_per_call(lambda: sliced.contiguous(memory_format=CL)):.0f} us"
    )


def conv_backward(grad, x, weight, stride, padding, mask):
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, mask
    )


def convs() -> None:
    """oneDNN's batch-1 convolution backward against the output channels; one merged first layer."""
    x = torch.rand(1, 8, 110, 110).contiguous(memory_format=CL)
    for out_channels in (4, 8, 16, 32):
        w = torch.randn(out_channels, 8, 5, 5).contiguous(memory_format=CL)
        g = torch.randn_like(F.conv2d(x, w, stride=2))
        flops = 2 * g[0].numel() * 8 * 25 / 1e6
        print(
            f"convs: 5x5 stride-2 from 8 channels to {out_channels} ({flops:.1f} MFLOP forward): backward "
            f"{us_per_call(lambda: conv_backward(g, x, w, 2, 0, [True, True, False]), 50):.0f} us"
        )
    frame = torch.rand(1, 3, 224, 224).contiguous(memory_format=CL)
    weights = [torch.randn(8, 3, k, k).contiguous(memory_format=CL) for k in (3, 5, 7)]
    grads = [torch.randn_like(F.conv2d(frame, w, stride=2)) for w in weights]

    def separate():
        for w, g in zip(weights, grads):
            F.conv2d(frame, w, stride=2)
            conv_backward(g, frame, w, 2, 0, [False, True, False])

    padded = F.pad(frame, (0, 4, 0, 4)).contiguous(memory_format=CL)
    merged_weight = torch.randn(24, 3, 7, 7).contiguous(memory_format=CL)
    merged_grad = torch.randn_like(F.conv2d(padded, merged_weight, stride=2))

    def merged():
        F.conv2d(padded, merged_weight, stride=2)
        conv_backward(merged_grad, padded, merged_weight, 2, 0, [False, True, False])

    print(
        f"convs: first layer, forward + weight gradient: three convolutions {us_per_call(separate, 50):.0f} us, "
        f"one 24-channel 7x7 {us_per_call(merged, 50):.0f} us"
    )


def ssim_blur() -> None:
    """The SSIM blur along both axes: banded matrix products against eleven shifted slices."""
    maps = torch.rand(3, 224, 224)
    matrix = _blur_matrix(224, 11, 1.5, 2, maps.device, maps.dtype)
    kernel = matrix[:11, 0].tolist()

    def slices_along_last(a):
        out = a[..., 0:213:2] * kernel[0]
        for k in range(1, 11):
            out.add_(a[..., k : k + 213 : 2], alpha=kernel[k])
        return out

    print(
        f"ssim: blur of three maps by matrix products {us_per_call(lambda: (maps @ matrix).mT @ matrix):.0f} us, "
        f"by shifted slices {us_per_call(lambda: slices_along_last(slices_along_last(maps).mT)):.0f} us"
    )


class BranchThreads(StreamingAutoEncoder):
    """The default model with its encoder branches run on two Python threads, forward and backward."""

    pool = ThreadPoolExecutor(2, initializer=lambda: torch.set_num_threads(1))

    def _network_loss(self, x, pixel_weight):
        futures = [self.pool.submit(branch, x) for branch in reversed(self.encoder.branches)]
        self.latents = [f.result() for f in futures][::-1]
        self.leaves = [z.detach().requires_grad_() for z in self.latents]
        reconstruction = self.decoder(self.leaves)
        return reconstruction_loss(reconstruction, x, pixel_weight), reconstruction, self.latents

    def backward(self, loss):
        super().backward(loss)
        futures = [
            self.pool.submit(torch.autograd.backward, z, leaf.grad) for z, leaf in zip(self.latents, self.leaves)
        ]
        for future in futures:
            future.result()


def threads() -> None:
    """ms per update, windows alternating in one process: 2 torch threads, 1, and threaded branches."""
    frames = collect_frames("Breakout", 64)
    settings = {
        "2 torch threads": (StreamingAutoEncoder(), 2),
        "1 torch thread": (StreamingAutoEncoder(), 1),
        "branches on 2 Python threads, 1 torch thread each": (BranchThreads(), 1),
    }
    for model, _ in settings.values():
        for frame in frames[:5]:
            model.update_params(frame)
    times = collections.defaultdict(list)
    for window in range(45):
        name = list(settings)[window % len(settings)]
        model, count = settings[name]
        torch.set_num_threads(count)
        start = time.perf_counter()
        for i in range(5):
            model.update_params(frames[(window * 5 + i) % 64])
        times[name].append((time.perf_counter() - start) / 5 * 1e3)
    torch.set_num_threads(2)
    for name, values in times.items():
        print(
            f"threads: {name}: fastest window {min(values):.1f} ms, median {statistics.median(values):.1f} ms per update"
        )


def op_times(model, inputs: list) -> dict[str, tuple[float, float]]:
    """(ms, ops) per update of `model` by kind of op, timed one aten op at a time over `inputs`
    after ten warm-up updates."""
    for x in inputs[:10]:
        model.update_params(x)
    totals, counts = collections.Counter(), collections.Counter()

    class Timer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            name = func.__name__
            kind = (
                "convolution" if "convolution" in name else "matmul" if name.split(".")[0] in ("mm", "bmm") else "other"
            )
            totals[kind] += time.perf_counter() - start
            counts[kind] += 1
            return out

    with Timer():
        for x in inputs[10:]:
            model.update_params(x)
    updates = len(inputs) - 10
    return {kind: (totals[kind] / updates * 1e3, counts[kind] / updates) for kind in totals}


def ops() -> None:
    """Milliseconds per update by kind of op, timed one aten op at a time over 20 updates."""
    for kind, (ms, count) in op_times(StreamingAutoEncoder(), collect_frames("Breakout", 30)).items():
        print(f"ops: {kind}: {ms:.1f} ms and {count:.0f} ops per update")


def streams(count: int = 8) -> None:
    """K stacked streams against one: the first layer (frames in, no input gradient) as one grouped
    convolution or K of batch 1, and each kind of op's milliseconds per stream-update."""
    frames = torch.rand(count, 3, 224, 224)
    for kernel in (3, 5, 7):
        weight = torch.randn(count, 8, 3, kernel, kernel, requires_grad=True)

        def grouped():
            F.conv2d(frames.reshape(1, -1, 224, 224), weight.flatten(0, 1), stride=2, groups=count).sum().backward()

        def one_by_one():
            x = frames.contiguous(memory_format=CL)
            torch.cat([F.conv2d(x[k : k + 1], weight[k], stride=2) for k in range(count)]).sum().backward()

        print(
            f"streams: first layer {kernel}x{kernel}, {count} streams, forward and backward: grouped "
            f"{us_per_call(grouped, 20) / 1e3:.1f} ms, {count} of batch 1 {us_per_call(one_by_one, 20) / 1e3:.1f} ms"
        )
    games = ("Breakout", "Assault", "SpaceInvaders", "Pacman", "Asteroids")
    per_stream = [collect_frames(games[k % len(games)], 30, seed=k) for k in range(count)]
    stacked = StreamingAutoEncoder.stack([StreamingAutoEncoder() for _ in range(count)])
    alone = op_times(StreamingAutoEncoder(), per_stream[0])
    together = op_times(stacked, [[f[i] for f in per_stream] for i in range(30)])
    for kind in alone:
        print(
            f"streams: {kind}: one stream {alone[kind][0]:.1f} ms and {alone[kind][1]:.0f} ops per update, "
            f"{count} stacked {together[kind][0] / count:.1f} ms per stream-update and "
            f"{together[kind][1]:.0f} ops per update"
        )


def windows_taking_turns(models: dict, frames: list, rounds: int, window: int = 15) -> dict[str, list[float]]:
    """ms per update of each model in `rounds` windows of `window` updates, the models taking turns,
    after ten warm-up updates each."""
    for model in models.values():
        for frame in frames[:10]:
            model.update_params(frame)
    times = collections.defaultdict(list)
    for round_ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for i in range(window):
                model.update_params(frames[(round_ * window + i) % len(frames)])
            times[name].append((time.perf_counter() - start) / window * 1e3)
    return times


class AutogradLoss(StreamingAutoEncoder):
    """The default model with its loss as plain formulas, differentiated by autograd."""

    def _network_loss(self, x, pixel_weight, hidden=None):
        reconstruction, latents = self(x)
        error = reconstruction - x
        weight = pixel_weight / pixel_weight.mean()
        loss = MSE_WEIGHT * (weight * error.square()).mean() + L1_WEIGHT * (weight * error.abs()).mean()
        loss = loss + SSIM_WEIGHT * (1 - ssim(luma(reconstruction), luma(x), stride=SSIM_STRIDE))
        return (
            loss,
            {
                "loss": loss,
                "mse": error.detach().square().mean(),
                "l1": error.detach().abs().mean(),
                "ssim": torch.zeros(()),
            },
            reconstruction,
            latents,
        )


def loss() -> None:
    """ms per update with the fused loss and with autograd over the same formulas, windows taking turns."""
    frames = collect_frames("Breakout", 64)
    models = {"fused loss (loss.ReconstructionLoss)": StreamingAutoEncoder(), "autograd loss": AutogradLoss()}
    times = windows_taking_turns(models, frames, rounds=20)
    fused = times["fused loss (loss.ReconstructionLoss)"]
    for name, values in times.items():
        ratio = statistics.median(a / b for a, b in zip(values, fused))
        print(
            f"loss: {name}: median {statistics.median(values):.1f} ms per update, {ratio:.3f} x the fused loss's time"
        )


WITH_ENCODER_NORM = {
    "encoder_layer_norm": True
}  # the candidates with encoder layer norm, as their quality was measured
CANDIDATES = {
    "default": {},
    "+ encoder layer norm": WITH_ENCODER_NORM,
    "branch heads, encoder 8,16, encoder layer norm": {
        **WITH_ENCODER_NORM,
        "branch_heads": True,
        "encoder_widths": (8, 16),
    },
    "branch heads": {**WITH_ENCODER_NORM, "branch_heads": True},
    "encoder 8,16": {**WITH_ENCODER_NORM, "encoder_widths": (8, 16)},
    "upsampled width 8": {**WITH_ENCODER_NORM, "upsampled_width": 8},
    "+ residual": {**WITH_ENCODER_NORM, "use_residual": True},
    "+ transformer": {**WITH_ENCODER_NORM, "use_transformer": True},
    "- layer norm": {"use_layer_norm": False},
    "- change detector": {**WITH_ENCODER_NORM, "use_change_detector": False},
    "plain sigmoid": {**WITH_ENCODER_NORM, "output_margin": 0.0},
}


def candidates() -> None:
    """ms per update of each candidate model, in windows that take turns in one process.

    The machine's speed drifts by 10-30% over minutes, more than most candidates differ;
    taking turns every 15 updates exposes all of them to the same drift, and the median
    ratio of each window to the default's window of the same round cancels it.
    """
    frames = collect_frames("Breakout", 64)
    models = {}
    for name, overrides in CANDIDATES.items():
        torch.manual_seed(0)
        models[name] = StreamingAutoEncoder(ModelConfig(**overrides))
    times = windows_taking_turns(models, frames, rounds=16)
    for name, values in times.items():
        ratio = statistics.median(a / b for a, b in zip(values, times["default"]))
        gflop = count_gflop(ModelConfig(**CANDIDATES[name]), "obgd-adaptive", frames, torch.device("cpu"))
        print(
            f"candidates: {name}: {gflop:.3f} GFLOP, median {statistics.median(values):.1f} ms per update, "
            f"{ratio:.3f} x the default's time"
        )


if __name__ == "__main__":
    keep_freed_memory()
    sections = {
        "layout": layout,
        "convs": convs,
        "ssim": ssim_blur,
        "loss": loss,
        "threads": threads,
        "ops": ops,
        "candidates": candidates,
        "streams": streams,
    }
    for name in sys.argv[1:] or sections:
        sections[name]()

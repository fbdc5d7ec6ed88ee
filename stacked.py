"""K independent streams in one learner: one batched update learns K frames, one per stream.

Streams share no weight and no state. Stream k's weights are row k of one (K, P) buffer,
laid out as a single learner's flat buffer; every convolution but the first of each branch
runs the K streams' kernels as one grouped convolution over the K frames folded into
channels, every other layer is already per image (layer norm over each image, the loss of
each image), and the optimizer reduces per row. So one update costs about the kernels of a
single one, each K times wider, plus K first convolutions per branch.
"""

import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoencoder import update_outputs
from loss import reconstruction_loss
from model import AutoEncoder, ModelConfig, PixelChangeDetector
from monitoring import PerformanceMonitor
from optim import OPTIMIZERS, clip_gradient
from utils import FRAME_SIZE, preprocess_frame


# A parameter of K streams is a strided view of the (K, P) buffer, and so is its gradient, by design.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


class StreamConv2d(nn.Module):
    """K convolutions of one shape, one per stream, as one grouped convolution.

    Image k of the batch is stream k's; weight (K, out, in, kh, kw), bias (K, out). On
    the frames themselves (an input that needs no gradient: three channels at full
    resolution) K convolutions of batch 1 run faster on a CPU than the grouped one
    (`docs/cpu_profile.py streams`), so there it runs them in turn.
    """

    def __init__(self, conv: nn.Conv2d, streams: int):
        super().__init__()
        self.stride, self.padding, self.groups = conv.stride, conv.padding, conv.groups
        self.weight = nn.Parameter(conv.weight.detach().expand(streams, *conv.weight.shape).clone())
        self.bias = nn.Parameter(conv.bias.detach().expand(streams, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        streams = self.weight.shape[0]
        if not x.requires_grad and x.device.type == "cpu":
            return torch.cat([F.conv2d(x[k : k + 1], self.weight[k], self.bias[k], self.stride, self.padding,
                                       groups=self.groups) for k in range(streams)])
        folded = x.reshape(1, -1, *x.shape[-2:])  # (K, C, H, W) -> (1, K*C, H, W), a copy if channels_last
        out = F.conv2d(folded, self.weight.flatten(0, 1), self.bias.flatten(), self.stride, self.padding,
                       groups=streams * self.groups)
        return out.view(streams, -1, *out.shape[-2:])


class StreamLinear(nn.Module):
    """K linear layers of one shape, one per stream, as one batched matrix product over
    (K, ..., in) inputs; weight (K, out, in), bias (K, out)."""

    def __init__(self, linear: nn.Linear, streams: int):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().expand(streams, *linear.weight.shape).clone())
        self.bias = nn.Parameter(linear.bias.detach().expand(streams, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        return torch.baddbmm(self.bias.unsqueeze(1), rows, self.weight.mT).view(*x.shape[:-1], -1)


def stream_network(config: ModelConfig, streams: int) -> AutoEncoder:
    """The network of `config` with every convolution and linear layer made K-stream; its
    parameters have the single network's names, each with a leading K dimension."""
    network = AutoEncoder(config)
    for module in list(network.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(module, name, StreamConv2d(child, streams))
            elif isinstance(child, nn.Linear):
                setattr(module, name, StreamLinear(child, streams))
    return network


class StackedAutoEncoder(nn.Module):
    """K single-stream learners as one: `update_params(frames)` learns K frames, one per stream.

    Built by `StreamingAutoEncoder.stack(models)`; `unstack()` gives K single learners
    back. Stream k behaves as model k alone would: its own weights, optimizer state
    (ObGD's global bound over its own parameters), change detector, step and skip flag.
    Learners whose configuration, optimizer or hyper-parameters differ cannot be stacked.
    The update runs eagerly (no torch.compile, no CUDA graph); with `latent_noise` each
    stream would need its own noise generator in the batch, so such learners run alone.
    """

    def __init__(self, models: list):
        super().__init__()
        self._check_stackable(models)
        first = models[0]
        self.streams = len(models)
        self.config, self.optimizer_name, self.lr = first.config, first.optimizer_name, first.lr
        self.change_weight, self.device = first.change_weight, first.device
        self.single = type(first)
        # the frames and reconstructions in the single learner's layout: its loss and first convolutions' own
        self.memory_format = first.memory_format
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: draw nothing from the caller's RNG
            self.network = stream_network(self.config, self.streams).to(self.device)
        self.change_detector = PixelChangeDetector() if self.config.use_change_detector else None
        # row k is model k's flat buffer: each parameter at its offset and strides there
        self.layout = [(p.shape, p.stride(), p.storage_offset()) for p in first.parameters()]
        self.flat_params = self._flatten_parameters(models)
        states = [m.optimizer.state_dict() for m in models]
        hyper = {k: v for k, v in states[0]["param_groups"][0].items() if k not in ("params", "count")}
        self.optimizer = OPTIMIZERS[self.optimizer_name].streams(self.flat_params, hyper, states)
        self.steps = [m.step for m in models]
        previous = [m.change_detector.previous if m.change_detector is not None else None for m in models]
        fresh = [p is None or p.numel() == 0 for p in previous]
        if self.change_detector is not None and not all(fresh):
            self.change_detector.previous = torch.cat([
                torch.zeros(1, 3, FRAME_SIZE, FRAME_SIZE, device=self.device) if f else p
                for p, f in zip(previous, fresh)])
        self._cut = [m._cut or f for m, f in zip(models, fresh)]  # a stream without a previous frame sees no change
        self.performance = PerformanceMonitor()
        self._views: dict[int, object] = {}

    @staticmethod
    def _check_stackable(models: list) -> None:
        if not models:
            raise ValueError("stack needs at least one learner")
        first = models[0]
        for k, model in enumerate(models):
            if isinstance(model, StackedAutoEncoder):
                raise ValueError(f"learner {k} is already stacked; unstack it first")
            ours = (model.config, model.optimizer_name, model.lr, model.change_weight, model.device)
            theirs = (first.config, first.optimizer_name, first.lr, first.change_weight, first.device)
            for label, a, b in zip(("config", "optimizer", "lr", "change_weight", "device"), ours, theirs):
                if a != b:
                    raise ValueError(f"cannot stack learners whose {label} differs: learner 0 has {b}, "
                                     f"learner {k} has {a}")
            groups = [{n: v for n, v in m.optimizer.state_dict()["param_groups"][0].items()
                       if n not in ("params", "count")} for m in (first, model)]
            if groups[0] != groups[1]:
                raise ValueError(f"cannot stack learners whose optimizer hyper-parameters differ: "
                                 f"learner 0 has {groups[0]}, learner {k} has {groups[1]}")
            if model.captured_step is not None:
                raise ValueError(f"learner {k} replays a CUDA graph; stack learners built without one")
        if first.config.latent_noise and first.config.latent_bits:
            raise ValueError("learners with latent_noise draw their own noise and cannot be stacked")
        if OPTIMIZERS[first.optimizer_name].streams is None:
            raise ValueError(f"optimizer {first.optimizer_name!r} has no stacked form (register_optimizer's streams)")

    def _flatten_parameters(self, models: list) -> torch.Tensor:
        """A (K, P) leaf whose row k holds model k's flat parameters; every parameter of the
        stacked network (and its gradient) a view into it, so clipping, the finite check and
        the optimizer are a few whole-buffer kernels."""
        flat = torch.stack([m.flat_params.detach() for m in models]).requires_grad_()
        flat.grad = torch.zeros_like(flat)
        size = flat.shape[1]
        for p, (shape, stride, offset) in zip(self.network.parameters(), self.layout):
            p.data = torch.as_strided(flat.detach(), (self.streams, *shape), (size, *stride), offset)
            p.grad = torch.as_strided(flat.grad, (self.streams, *shape), (size, *stride), offset)
        return flat

    def _inputs(self, frames) -> torch.Tensor:
        if torch.is_tensor(frames):
            if frames.shape != (self.streams, 3, FRAME_SIZE, FRAME_SIZE) or not frames.is_floating_point():
                raise ValueError(f"expected a float tensor ({self.streams}, 3, 224, 224), got {tuple(frames.shape)}")
            return frames.to(self.device).contiguous(memory_format=self.memory_format)
        if len(frames) != self.streams:
            raise ValueError(f"expected {self.streams} frames, one per stream, got {len(frames)}")
        return torch.cat([preprocess_frame(frame, self.device) for frame in frames]).contiguous(
            memory_format=self.memory_format)

    def update_params(self, frames: list[np.ndarray] | torch.Tensor) -> dict:
        """Learn one frame per stream: a list of K HxWx3 uint8 arrays or a (K, 3, 224, 224)
        float tensor. Every entry of the result has a leading K dimension (`embeddings`:
        one (K, C, h, w) tensor per branch); `stream_results(results, k)` is stream k's, as
        its model alone would report them. A non-finite loss or gradient skips only its stream."""
        start = time.perf_counter()
        x = self._inputs(frames)
        if any(self._cut) and self.change_detector is not None and self.change_detector.previous.shape == x.shape:
            cut = torch.tensor(self._cut, device=self.device).view(-1, 1, 1, 1)
            self.change_detector.previous.copy_(torch.where(cut, x, self.change_detector.previous))
        self._cut = [False] * self.streams
        outputs = self._train_step(x)
        fps, step_ms = self.performance.tick(start)
        self.steps = [s + 1 for s in self.steps]
        embeddings = [outputs.pop(f"embedding{i}") for i in range(len(self.network.encoder.branches))]
        return {**outputs, "embeddings": embeddings, "input": x, "step": torch.tensor(self.steps),
                "fps": torch.full((self.streams,), fps), "step_ms": torch.full((self.streams,), step_ms)}

    @staticmethod
    def stream_results(results: dict, k: int) -> dict:
        """Stream k's entries of `update_params`' results, shaped as a single learner's."""
        def one(v):
            return v[k : k + 1] if v.dim() == 4 else v[k]

        return {name: [one(z) for z in v] if name == "embeddings" else one(v) for name, v in results.items()}

    def forget_previous_frame(self, streams: list[int] | None = None) -> None:
        """A cut, not motion, in the given streams (default: all): their next change mask is empty."""
        for k in range(self.streams) if streams is None else streams:
            self._cut[k] = True

    def _train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.change_detector is None:
            mask, pixel_weight = torch.zeros_like(x[:, :1]), None
        else:
            mask = self.change_detector(x)
            pixel_weight = 1.0 + self.change_weight * mask
        reconstruction, latents = self.network(x)
        reconstruction = reconstruction.contiguous(memory_format=self.memory_format)  # the loss's layout: one copy
        parts = reconstruction_loss(reconstruction, x, pixel_weight, per_image=True)
        self.flat_params.grad.zero_()
        parts["loss"].sum().backward()  # stream k's weights see only stream k's loss
        loss = parts["loss"].detach()
        grad_norm, finite = clip_gradient(self.flat_params.grad, loss)
        step_size = self.optimizer.update(loss, finite)
        return update_outputs(parts, reconstruction, latents, mask, step_size, finite, grad_norm)

    def _single(self):
        """A fresh single learner of this configuration, built without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            return self.single(self.config, optimizer=self.optimizer_name, lr=self.lr,
                               change_weight=self.change_weight, device=self.device)

    def unstack(self) -> list:
        """K single learners, stream k's weights, optimizer state, step and change detector each."""
        models = []
        for k in range(self.streams):
            model = self._single()
            with torch.no_grad():
                model.flat_params.copy_(self.flat_params[k])
            model.optimizer.load_state_dict(self.optimizer.state_dict_of(k, model.optimizer.state_dict()))
            model.step = self.steps[k]
            if self.change_detector is not None and self.change_detector.previous.numel():
                model.change_detector.previous = self.change_detector.previous[k : k + 1].clone()
            model._cut = self._cut[k]
            models.append(model)
        return models

    def view(self, k: int):
        """Stream k as a single learner for scoring and coding (`evaluate`, `codec`,
        `network`, `loss_on`): its parameters are views of stream k's, always current. It
        has no optimizer; the stacked learner is the one that learns."""
        if k not in self._views:
            view = self._single()
            size = self.flat_params.shape[1]
            for p, (shape, stride, offset) in zip(view.parameters(), self.layout):
                p.data = torch.as_strided(self.flat_params.detach(), shape, stride, k * size + offset)
            view.flat_params = self.flat_params.detach()[k]
            view.optimizer = None
            self._views[k] = view
        return self._views[k]

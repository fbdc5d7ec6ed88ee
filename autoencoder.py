"""StreamingAutoEncoder: one frame in, one forward/backward/step, metrics out."""

import time
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from codec import LatentCodec
from loss import mark_constants_for_compile, reconstruction_loss
from monitoring import PerformanceMonitor, TensorBoardLogger
from model import AutoEncoder, Decoder, Encoder, ModelConfig, PixelChangeDetector, compression_ratios
from optim import OPTIMIZERS, clip_gradient, make_optimizer, sparse_init_model_
from utils import keep_freed_memory, preprocess_frame


class StreamingAutoEncoder(nn.Module):
    """The learner: the network, its change detector and its optimizer, one frame at a time.

    `parameters()`, `.encoder` and `.decoder` are the network's (`self.network`, an
    `AutoEncoder`). `update_params` learns from a frame; `evaluate` scores frames without
    learning and without touching any state. Callables in `on_update` get every
    update's results (a TensorBoard logger, say).
    """

    def __init__(
        self,
        config: ModelConfig = ModelConfig(),
        optimizer: str = "obgd-adaptive",
        lr: float | None = None,
        change_weight: float = 4.0,
        device: torch.device | str = "cpu",
        compile: bool = False,
        cuda_graph: bool | None = None,
    ):
        """`compile=True` runs network and loss through torch.compile (opt-in: the first
        update then takes a minute or more to compile). `cuda_graph` captures the whole
        update (forward, loss, backward, clip, step) as one CUDA graph after a few
        eager updates, then replays it (CUDA only); by default it follows `compile` on CUDA."""
        super().__init__()
        keep_freed_memory()
        self.config = config
        self.change_weight = change_weight
        self.network = AutoEncoder(config)
        self.change_detector = PixelChangeDetector() if config.use_change_detector else None
        sparse_init_model_(self.network)
        self.device = torch.device(device)
        use_graph = (compile and self.device.type == "cuda") if cuda_graph is None else cuda_graph
        if use_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        # channels_last makes oneDNN's CPU convolutions faster; on CUDA, torch.compile's
        # convolution backward rejected channels_last weights (torch 2.11).
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.to(device, memory_format=self.memory_format)
        self.flat_params = self._flatten_parameters()
        self.optimizer_name = optimizer
        self.lr = OPTIMIZERS[optimizer].default_lr if lr is None else lr
        self.optimizer = make_optimizer(optimizer, [self.flat_params], self.lr, capturable=bool(use_graph))
        self.step = 0
        self._cut = False
        self.noise = None
        if config.latent_noise and config.latent_bits:
            seed = int(torch.randint(2**62, (1,)))  # from the global RNG: torch.manual_seed makes it reproducible
            self.noise = torch.Generator(self.device).manual_seed(seed)
        self._network_loss = torch.compile(self._network_loss, dynamic=False) if compile else self._network_loss
        if compile:
            mark_constants_for_compile()
        self.captured_step = CapturedStep(self._train_step) if use_graph else None
        self.performance = PerformanceMonitor()
        self.on_update: list = []

    @staticmethod
    def stack(models: list["StreamingAutoEncoder"]):
        """One K-stream learner from K single-stream ones of one configuration and optimizer
        (see `stacked.StackedAutoEncoder`); its `unstack()` gives them back."""
        from stacked import StackedAutoEncoder  # it builds on this module

        return StackedAutoEncoder(models)

    @property
    def encoder(self) -> Encoder:
        return self.network.encoder

    @property
    def decoder(self) -> Decoder:
        return self.network.decoder

    def _flatten_parameters(self) -> torch.Tensor:
        """Make every parameter and its gradient a view into one flat buffer each.

        Clipping, the finite check and the optimizer then run as a few whole-model
        kernels instead of a loop over ~60 small tensors. The views keep each
        parameter's own strides (channels_last on a CPU); autograd accumulates into them in
        place. The model must not be moved to another device afterwards.
        """
        params = list(self.parameters())
        total = sum(p.numel() for p in params)
        flat = torch.empty(total, device=self.device).requires_grad_()
        flat.grad = torch.zeros_like(flat)
        offset = 0
        with torch.no_grad():
            for p in params:
                view = torch.as_strided(flat.detach(), p.shape, p.stride(), offset)
                view.copy_(p)
                p.data = view
                p.grad = torch.as_strided(flat.grad, p.shape, p.stride(), offset)
                offset += p.numel()
        return flat

    def compression_ratios(self) -> dict[str, float]:
        return compression_ratios(self.config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.network(x)

    def update_params(self, frame: np.ndarray | torch.Tensor, debug: bool = False, stage_marks=None) -> dict:
        """Learn from one frame: forward, loss, backward, clip at 1.0, one optimizer step.

        Metrics are prequential: scored on this frame before the update. Nothing here
        waits for the device unless `debug=True` (then the timing is synchronised),
        except once with a CUDA graph: capturing it (the 4th call) synchronises.
        A non-finite loss or gradient skips the update (the optimizer gets `finite`
        False and a zero gradient); `skipped` reports it. `stage_marks(name)`, if given,
        is called after each stage (preprocess, forward, backward, optimizer) of an
        eager update, for timing by parts.
        """
        start = time.perf_counter()
        x = preprocess_frame(frame, self.device)
        if self._cut and self.change_detector is not None and self.change_detector.previous.shape == x.shape:
            self.change_detector.previous.copy_(x)  # in place: a captured CUDA graph reads this buffer
        self._cut = False
        if stage_marks is not None:
            stage_marks("preprocess")
            outputs = self._train_step(x, stage_marks)
        elif self.captured_step is not None:
            outputs = self.captured_step(x)
        else:
            outputs = self._train_step(x)
        if debug and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        fps, step_ms = self.performance.tick(start)
        self.step += 1
        embeddings = [outputs.pop(f"embedding{i}") for i in range(len(self.encoder.branches))]
        results = {**outputs, "embeddings": embeddings, "input": x, "step": self.step, "fps": fps, "step_ms": step_ms}
        for observer in self.on_update:
            observer(results)
        if debug:
            results = {k: v.item() if torch.is_tensor(v) and v.dim() == 0 else v for k, v in results.items()}
        return results

    def forget_previous_frame(self) -> None:
        """A cut, not motion: the next frame's change mask is empty (a switch of games)."""
        self._cut = True

    def _train_step(self, x: torch.Tensor, stage_marks=None) -> dict[str, torch.Tensor]:
        """One whole update on the device, no host sync: every tensor `update_params` reports."""
        mask, pixel_weight = self._change_weights(x)
        training_loss, parts, reconstruction, latents = self._network_loss(x, pixel_weight)
        if stage_marks is not None:
            stage_marks("forward")
        self.flat_params.grad.zero_()
        training_loss.backward()
        if stage_marks is not None:
            stage_marks("backward")
        grad_norm, finite = clip_gradient(self.flat_params.grad, training_loss.detach())
        step_size = self.optimizer.update(training_loss.detach(), finite)
        if stage_marks is not None:
            stage_marks("optimizer")
        return update_outputs(parts, reconstruction, latents, mask, step_size, finite, grad_norm)

    def _change_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The change mask of this frame (updating the detector) and the loss's pixel weights."""
        if self.change_detector is None:
            return torch.zeros_like(x[:, :1]), None
        mask = self.change_detector(x)
        return mask, self.pixel_weight(mask)

    def pixel_weight(self, change_mask: torch.Tensor) -> torch.Tensor | None:
        return 1.0 + self.change_weight * change_mask if self.change_detector is not None else None

    def _network_loss(self, x: torch.Tensor, pixel_weight: torch.Tensor | None):
        """(the loss to learn from, the reported loss terms, reconstruction, latents).

        Reported terms and reconstruction always come from the rounded codes. With
        `latent_noise` the loss learned from is another decoding, of the noisy latents."""
        if self.noise is None:
            reconstruction, latents = self.network(x)
            parts = reconstruction_loss(reconstruction, x, pixel_weight)
            return parts["loss"], parts, reconstruction, latents
        raw = self.network.encoder(x)
        noisy = self.network.decoder([self.network.quantizer.noisy(z, self.noise) for z in raw])
        training_loss = reconstruction_loss(noisy, x, pixel_weight)["loss"]
        with torch.no_grad():
            latents = [self.network.quantizer(z) for z in raw]
            reconstruction = self.network.decoder(latents)
            parts = reconstruction_loss(reconstruction, x, pixel_weight)
        return training_loss, parts, reconstruction, latents

    @torch.no_grad()
    def evaluate(self, frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Per-frame MSE of the reconstructions of (N, 3, 224, 224) frames (uint8, or float
        in [0, 1]), without an update: weights, optimizer and change detector are untouched."""
        errors = []
        for part in frames.split(chunk):
            x = self.as_input(part)
            reconstruction, _ = self.network(x)
            errors.append((reconstruction - x).square().mean(dim=(1, 2, 3)))
        return torch.cat(errors)

    def as_input(self, frames: torch.Tensor) -> torch.Tensor:
        """A batch of frames as the network's float input on its device and memory layout."""
        x = frames.to(self.device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x.contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def loss_on(self, x: torch.Tensor, change_mask: torch.Tensor) -> torch.Tensor:
        """The training loss of the current weights on frame `x` with the pixel weights of
        `change_mask`, leaving every state as it is (for UPGD's plasticity)."""
        reconstruction, _ = self.network(x)
        return reconstruction_loss(reconstruction, x, self.pixel_weight(change_mask))["loss"]

    def codec(self, temporal: bool = True):
        """A coding session over the current weights (see `codec.LatentCodec`); coding
        changes nothing in this learner."""
        return LatentCodec(self.network, temporal=temporal, memory_format=self.memory_format)

    def architecture(self) -> dict:
        """What a checkpoint must match to be loaded into this model."""
        return {**asdict(self.config), "optimizer": self.optimizer_name}


def update_outputs(parts: dict, reconstruction: torch.Tensor, latents: list[torch.Tensor], change_mask: torch.Tensor,
                   step_size: torch.Tensor, finite: torch.Tensor, grad_norm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tensor an update reports, detached (one value per stream where there are K)."""
    return {
        **{k: v.detach() for k, v in parts.items()},
        "psnr": -10.0 * torch.log10(parts["mse"].detach().clamp_min(1e-10)),
        "reconstruction": reconstruction.detach(),
        **{f"embedding{i}": z.detach() for i, z in enumerate(latents)},
        "change_mask": change_mask,
        "step_size": step_size,
        "skipped": ~finite,
        "grad_norm": grad_norm,
    }


class CapturedStep:
    """Runs `update(x)` eagerly a few times, then captures it as one CUDA graph and replays it.

    A streaming update is hundreds of small kernels whose launches cost more than
    their work; replaying a graph launches them all at once. The eager warm-ups run
    on a side stream, as CUDA graph capture requires, and each is a real update, so
    every frame is learned from exactly once. Replays write into the same buffers,
    so the outputs are packed into one flat tensor in the graph and copied out with
    one kernel per call: results stay valid after the next update.

    The capture freezes what the update reads from Python (learning rate and other
    hyper-parameters) and the addresses of every state tensor: load a checkpoint or
    change a hyper-parameter before the capture, never after.
    """

    def __init__(self, update, warmups: int = 3):
        self.update = update
        self.warmups_left = warmups
        self.graph = None
        self.static_input = None
        self.layout = None  # (name, shape, dtype) of each packed output
        self.packed = None

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.graph is not None:
            self.static_input.copy_(x)
            self.graph.replay()
            return self._unpack(self.packed.clone())
        if self.warmups_left > 0:
            self.warmups_left -= 1
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                outputs = self.update(x)
            torch.cuda.current_stream(x.device).wait_stream(side)
            return outputs
        self.static_input = x.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            outputs = self.update(self.static_input)
            self.layout = [(name, t.shape, t.dtype) for name, t in outputs.items()]
            self.packed = torch.cat([t.reshape(-1).float() for t in outputs.values()])
        self.graph.replay()
        return self._unpack(self.packed.clone())

    def _unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = [shape.numel() for _, shape, _ in self.layout]
        return {name: (part.view(shape) if dtype == torch.float32 else part.view(shape).to(dtype))
                for (name, shape, dtype), part in zip(self.layout, flat.split(sizes))}


def create_streaming_ae(
    input_channels: int = 3,
    latent_channels: int = 3,
    lr: float | None = None,
    debug_vis: bool = False,
    use_tensorboard: bool = False,
    log_dir: str | None = None,
    optimizer: str = "obgd-adaptive",
    device: torch.device | str = "cpu",
    **config_overrides,
) -> StreamingAutoEncoder:
    """Build the default model; optionally attach a TensorBoard logger to it.

    `debug_vis` adds feature-map images to the logger's throttled image logging. With
    `use_tensorboard`, `model.logger` logs every update; `model.logger.close()` ends it.
    """
    if input_channels != 3:
        raise ValueError("the model takes RGB frames: input_channels must be 3")
    config = ModelConfig(latent_channels=latent_channels, **config_overrides)
    model = StreamingAutoEncoder(config, optimizer=optimizer, lr=lr, device=device)
    if use_tensorboard:
        model.logger = TensorBoardLogger(log_dir or "runs/streaming_ae", feature_maps=debug_vis)
        model.on_update.append(lambda results: model.logger.log_step(results, model))
    return model

"""StreamingAutoEncoder: K >= 1 streams, one frame each per update; a single stream is K = 1."""

import time
import warnings
from dataclasses import asdict

import torch
from torch import nn

from codec import LatentCodec
from loss import mark_constants_for_compile, reconstruction_loss
from methods import make_method, stack_states, stream_state
from metrics import psnr
from model import (
    AutoEncoder,
    Decoder,
    Encoder,
    ModelConfig,
    PixelChangeDetector,
    compression_ratios,
    hidden_layers,
    stream_network,
)
from monitoring import PerformanceMonitor, TensorBoardLogger
from optim import DEFAULT_OPTIMIZER, OPTIMIZERS, clip_gradient, make_optimizer, sparse_init_model_
from utils import FRAME_SIZE, keep_freed_memory, preprocess_frame

# A parameter of K streams is a strided view of the (K, P) buffer, and so is its gradient, by design.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


class StreamingAutoEncoder(nn.Module):
    """The learner: the network, its change detector, optimizer and method, for K streams.

    `parameters()`, `.encoder` and `.decoder` are the network's (`self.network`, an
    `AutoEncoder`; for K > 1 its convolutions hold K streams' kernels, see
    `model.stream_network`). `update_params` learns one frame per stream; `evaluate`
    scores frames without learning and without touching any state. Callables in
    `on_update` get every update's results (a TensorBoard logger, say).

    Streams share no weight and no state. Stream k's weights are row k of one (K, P)
    buffer laid out as a single learner's flat buffer (a single learner's is (P,)), so
    the optimizer's state vectors are rows too and every optimizer rule reduces per row.
    A stream has its own weights, optimizer state, method state, change detector, step,
    cut and skip flag. `stack(models)` builds one from K single learners; `unstack()`
    gives them back.
    """

    def __init__(
        self,
        config: ModelConfig = ModelConfig(),
        optimizer: str = DEFAULT_OPTIMIZER,
        lr: float | None = None,
        change_weight: float = 4.0,
        device: torch.device | str = "cpu",
        compile: bool = False,
        cuda_graph: bool | None = None,
        method: str = "none",
        method_options: object = None,
        streams: int = 1,
    ):
        """`compile=True` runs network and loss through torch.compile (opt-in: the first
        update then takes a minute or more to compile). `cuda_graph` captures the whole
        update (forward, loss, backward, clip, step) as one CUDA graph after a few
        eager updates, then replays it (CUDA only, one stream, no method); by default it
        follows `compile` on CUDA. `method` names a method of `methods` (its options a
        dict, `KEY=VALUE` texts or its Options). `streams=K` builds K independent streams,
        each initialised as a single learner is."""
        super().__init__()
        keep_freed_memory()
        self.config = config
        self.change_weight = change_weight
        self.streams = streams
        self.network = AutoEncoder(config) if streams == 1 else stream_network(config, streams)
        self.change_detector = PixelChangeDetector() if config.use_change_detector else None
        sparse_init_model_(self.network)
        self.device = torch.device(device)
        use_graph = (
            (compile and self.device.type == "cuda" and streams == 1 and method == "none")
            if cuda_graph is None
            else cuda_graph
        )
        if use_graph and (self.device.type != "cuda" or streams > 1 or method != "none"):
            raise ValueError("cuda_graph=True needs a CUDA device, one stream and no method")
        if config.latent_noise and config.latent_bits and streams > 1:
            raise ValueError("latent_noise draws one stream's noise: a learner with it has one stream")
        # channels_last makes oneDNN's CPU convolutions faster; on CUDA, torch.compile's
        # convolution backward rejected channels_last weights (torch 2.11).
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        if streams == 1:
            self.to(device, memory_format=self.memory_format)
        else:  # K-stream weights are 5-d; their rows get the single network's layout below
            self.to(device)
        self.flat_params = self._flatten_parameters()
        self.optimizer_name = optimizer
        self.lr = OPTIMIZERS[optimizer].default_lr if lr is None else lr
        self.optimizer = make_optimizer(
            optimizer, [self.flat_params], self.lr, streams=None if streams == 1 else streams
        )
        self.steps = [0] * streams
        self._cut = [False] * streams
        self.noise = None
        if config.latent_noise and config.latent_bits:
            seed = int(torch.randint(2**62, (1,)))  # from the global RNG: torch.manual_seed makes it reproducible
            self.noise = torch.Generator(self.device).manual_seed(seed)
        self.method_name = method
        self.method = make_method(method, self, method_options)
        if self.method.reads_activations and self.noise is not None:
            raise ValueError(f"method {method!r} reads activations, which latent_noise's two decodings do not give")
        self._network_loss = torch.compile(self._network_loss, dynamic=False) if compile else self._network_loss
        if compile:
            mark_constants_for_compile()
        generators = list(getattr(self.optimizer, "generators", ()))  # UPGD's noise, drawn inside the graph
        self.captured_step = CapturedStep(self._train_step, generators) if use_graph else None
        self.performance = PerformanceMonitor()
        self.on_update: list = []
        self._views: dict[int, StreamingAutoEncoder] = {}

    # Streams ---------------------------------------------------------------------------------

    @property
    def step(self) -> int | list[int]:
        """Updates learned: an int for one stream, one per stream for K."""
        return self.steps[0] if self.streams == 1 else list(self.steps)

    @step.setter
    def step(self, value: int) -> None:
        self.steps = [int(value)] * self.streams

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` with a leading stream dimension, (K, ...) whatever K (a view)."""
        return tensor if self.streams > 1 else tensor.unsqueeze(0)

    @classmethod
    def stack(cls, models: list["StreamingAutoEncoder"]) -> "StreamingAutoEncoder":
        """One K-stream learner from K single-stream ones of one configuration, optimizer and
        method; its `unstack()` gives them back. Stacking draws nothing from the global RNG."""
        _check_stackable(models)
        first = models[0]
        if len(models) == 1:
            return first
        learner = first._sibling(streams=len(models))
        with torch.no_grad():
            learner.flat_params.copy_(torch.stack([m.flat_params.detach() for m in models]))
        for k, model in enumerate(models):
            learner.optimizer.load_stream_state(k, model.optimizer.state_dict())
        learner.method.load_state_dict(stack_states([m.method.state_dict() for m in models]))
        learner.steps = [m.step for m in models]
        previous = [m.change_detector.previous if m.change_detector is not None else None for m in models]
        fresh = [p is None or p.numel() == 0 for p in previous]
        if learner.change_detector is not None and not all(fresh):
            learner.change_detector.previous = torch.cat(
                [
                    torch.zeros(1, 3, FRAME_SIZE, FRAME_SIZE, device=learner.device) if f else p
                    for p, f in zip(previous, fresh)
                ]
            )
        learner._cut = [m._cut[0] or f for m, f in zip(models, fresh)]  # no previous frame: no change
        return learner

    def _sibling(self, streams: int = 1) -> "StreamingAutoEncoder":
        """A fresh learner of this configuration, optimizer and method with `streams` streams,
        built without touching the global RNG (its weights are to be overwritten)."""
        with torch.random.fork_rng(devices=[]):
            return type(self)(
                self.config,
                optimizer=self.optimizer_name,
                lr=self.lr,
                change_weight=self.change_weight,
                device=self.device,
                method=self.method_name,
                method_options=self.method.options,
                streams=streams,
            )

    def unstack(self) -> list["StreamingAutoEncoder"]:
        """K single learners: stream k's weights, optimizer and method state, step and change
        detector each."""
        if self.streams == 1:
            return [self]
        models = []
        for k in range(self.streams):
            model = self._sibling()
            with torch.no_grad():
                model.flat_params.copy_(self.flat_params[k])
            model.optimizer.load_state_dict(self.optimizer.stream_state_dict(k))
            model.method.load_state_dict(stream_state(self.method.state_dict(), k))
            model.step = self.steps[k]
            if self.change_detector is not None and self.change_detector.previous.numel():
                model.change_detector.previous = self.change_detector.previous[k : k + 1].clone()
            model._cut = [self._cut[k]]
            models.append(model)
        return models

    def view(self, k: int) -> "StreamingAutoEncoder":
        """Stream k as a single learner for scoring and coding (`evaluate`, `codec`,
        `network`, `loss_on`): its parameters are views of stream k's, always current. It
        has no optimizer; this learner is the one that learns."""
        if self.streams == 1:
            return self
        if k not in self._views:
            view = self._sibling()
            for p, (shape, stride, offset) in zip(view.parameters(), self.layout):
                p.data = torch.as_strided(
                    self.flat_params.detach(), shape, stride, k * self.flat_params.shape[1] + offset
                )
            view.flat_params = self.flat_params.detach()[k]
            view.optimizer = None
            self._views[k] = view
        return self._views[k]

    def stream_results(self, results: dict, k: int) -> dict:
        """Stream k's entries of `update_params`' results, shaped as a single learner's."""
        if self.streams == 1:
            return results

        def one(v):
            return v[k : k + 1] if v.dim() == 4 else v[k]

        return {
            name: [one(z) for z in v]
            if name == "embeddings"
            else {key: one(s) for key, s in v.items()}
            if name == "method"
            else one(v)
            for name, v in results.items()
        }

    # The network -----------------------------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        return self.network.encoder

    @property
    def decoder(self) -> Decoder:
        return self.network.decoder

    def _flatten_parameters(self) -> torch.Tensor:
        """Make every parameter and its gradient a view into one flat buffer each: (P,) for
        one stream, (K, P) for K, row k laid out as a single learner's buffer.

        Clipping, the finite check and the optimizer then run as a few whole-model
        kernels instead of a loop over ~60 small tensors. The views keep each
        parameter's own strides (channels_last on a CPU); autograd accumulates into them in
        place. The model must not be moved to another device afterwards.
        """
        params = list(self.parameters())
        if self.streams == 1:
            self.layout = [(p.shape, p.stride(), 0) for p in params]
        else:  # each row laid out as a single learner's parameters are
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                single = AutoEncoder(self.config).to(memory_format=self.memory_format)
            self.layout = [(p.shape, p.stride(), 0) for p in single.parameters()]
        offset = 0
        for i, (shape, stride, _) in enumerate(self.layout):
            self.layout[i] = (shape, stride, offset)
            offset += shape.numel()
        size = offset
        flat = torch.empty((size,) if self.streams == 1 else (self.streams, size), device=self.device)
        flat.requires_grad_()
        flat.grad = torch.zeros_like(flat)
        with torch.no_grad():
            for p, (shape, stride, offset) in zip(params, self.layout):
                if self.streams > 1:
                    shape, stride = (self.streams, *shape), (size, *stride)
                view = torch.as_strided(flat.detach(), shape, stride, offset)
                view.copy_(p)
                p.data = view
                p.grad = torch.as_strided(flat.grad, shape, stride, offset)
        return flat

    def compression_ratios(self) -> dict[str, float]:
        return compression_ratios(self.config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.network(x)

    # Learning --------------------------------------------------------------------------------

    def update_params(self, frames, debug: bool = False, stage_marks=None) -> dict:
        """Learn one frame per stream: forward, loss, backward, clip at 1.0, one optimizer step.

        One stream takes an HxWx3 uint8 RGB array or a (1, 3, 224, 224) float tensor; K
        streams a list of K arrays or a (K, 3, 224, 224) tensor, and every entry of their
        results has a leading K (`embeddings`: one (K, C, h, w) per branch;
        `stream_results(results, k)` is stream k's, as its model alone would report it).
        Metrics are prequential: scored on this frame before the update. Nothing here
        waits for the device unless `debug=True` (then the timing is synchronised),
        except once with a CUDA graph: capturing it (the 4th call) synchronises.
        A non-finite loss or gradient skips that stream's update (the optimizer gets
        `finite` False and a zero gradient); `skipped` reports it. `stage_marks(name)`, if
        given, is called after each stage (preprocess, forward, backward, optimizer) of an
        eager update, for timing by parts.
        """
        start = time.perf_counter()
        x = self._inputs(frames)
        self._apply_cuts(x)
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
        self.steps = [s + 1 for s in self.steps]
        embeddings = [outputs.pop(f"embedding{i}") for i in range(len(self.encoder.branches))]
        method = {name[len("method/") :]: outputs.pop(name) for name in list(outputs) if name.startswith("method/")}
        results = {**outputs, "embeddings": embeddings, "input": x, "method": method}
        if self.streams == 1:
            results.update(step=self.steps[0], fps=fps, step_ms=step_ms)
        else:
            results.update(
                step=torch.tensor(self.steps),
                fps=torch.full((self.streams,), fps),
                step_ms=torch.full((self.streams,), step_ms),
            )
        for observer in self.on_update:
            observer(results)
        if debug:
            results = {k: v.item() if torch.is_tensor(v) and v.dim() == 0 else v for k, v in results.items()}
        return results

    def _inputs(self, frames) -> torch.Tensor:
        if self.streams == 1:
            return preprocess_frame(frames[0] if isinstance(frames, (list, tuple)) else frames, self.device)
        if torch.is_tensor(frames):
            if frames.shape != (self.streams, 3, FRAME_SIZE, FRAME_SIZE) or not frames.is_floating_point():
                raise ValueError(f"expected a float tensor ({self.streams}, 3, 224, 224), got {tuple(frames.shape)}")
            return frames.to(self.device).contiguous(memory_format=self.memory_format)
        if len(frames) != self.streams:
            raise ValueError(f"expected {self.streams} frames, one per stream, got {len(frames)}")
        return torch.cat([preprocess_frame(frame, self.device) for frame in frames]).contiguous(
            memory_format=self.memory_format
        )

    def forget_previous_frame(self, streams: list[int] | None = None) -> None:
        """A cut, not motion, in the given streams (default: all): their next change mask
        is empty (a switch of games), and the method and optimizer hear of it."""
        streams = list(range(self.streams)) if streams is None else list(streams)
        for k in streams:
            self._cut[k] = True
        self.method.on_cut(streams)
        on_cut = getattr(self.optimizer, "on_cut", None)  # optional in the optimizer protocol
        if on_cut is not None:
            on_cut(streams)

    def _apply_cuts(self, x: torch.Tensor) -> None:
        detector = self.change_detector
        if detector is not None and detector.previous.shape == x.shape:
            for k, cut in enumerate(self._cut):
                if cut:  # in place: a captured CUDA graph reads this buffer
                    detector.previous[k : k + 1].copy_(x[k : k + 1])
        self._cut = [False] * self.streams

    def _train_step(self, x: torch.Tensor, stage_marks=None) -> dict[str, torch.Tensor]:
        """One whole update on the device, no host sync: every tensor `update_params` reports."""
        mask, pixel_weight = self._change_weights(x)
        hidden = {} if self.method.reads_activations else None
        training_loss, parts, reconstruction, latents = self._network_loss(x, pixel_weight, hidden)
        extra = self.method.loss(self)
        if extra is not None:
            training_loss = training_loss + extra.view_as(training_loss)
        if stage_marks is not None:
            stage_marks("forward")
        self.flat_params.grad.zero_()
        training_loss.sum().backward()  # stream k's weights see only stream k's loss
        if stage_marks is not None:
            stage_marks("backward")
        training_loss = training_loss.detach()
        grad_norm, finite = clip_gradient(self.flat_params.grad, training_loss)
        self.method.before_step(self, finite)
        step_size = self.optimizer.update(training_loss, finite)
        statistics = self._per_stream(self.method.after_step(self, finite, hidden))
        if stage_marks is not None:
            stage_marks("optimizer")
        outputs = update_outputs(parts, reconstruction, latents, mask, step_size, finite, grad_norm)
        return {**outputs, **{f"method/{name}": value for name, value in statistics.items()}}

    def _change_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The change mask of this frame (updating the detector) and the loss's pixel weights."""
        if self.change_detector is None:
            return torch.zeros_like(x[:, :1]), None
        mask = self.change_detector(x)
        return mask, self.pixel_weight(mask)

    def pixel_weight(self, change_mask: torch.Tensor) -> torch.Tensor | None:
        return 1.0 + self.change_weight * change_mask if self.change_detector is not None else None

    def _network_loss(self, x: torch.Tensor, pixel_weight: torch.Tensor | None, hidden: dict | None = None):
        """(the loss to learn from, the reported loss terms, reconstruction, latents): one
        value per stream, 0-d for one stream.

        Reported terms and reconstruction always come from the rounded codes. With
        `latent_noise` the loss learned from is another decoding, of the noisy latents."""
        if self.noise is None:
            reconstruction, latents = self.network(x, hidden)
            reconstruction = reconstruction.contiguous(memory_format=self.memory_format)  # the loss's layout
            parts = self._per_stream(reconstruction_loss(reconstruction, x, pixel_weight, per_image=True))
            return parts["loss"], parts, reconstruction, latents
        raw = self.network.encoder(x)
        noisy = self.network.decoder([self.network.quantizer.noisy(z, self.noise) for z in raw])
        training_loss = self._per_stream(reconstruction_loss(noisy, x, pixel_weight, per_image=True))["loss"]
        with torch.no_grad():
            latents = [self.network.quantizer(z) for z in raw]
            reconstruction = self.network.decoder(latents)
            parts = self._per_stream(reconstruction_loss(reconstruction, x, pixel_weight, per_image=True))
        return training_loss, parts, reconstruction, latents

    def _per_stream(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(K,) values as reported: 0-d for one stream."""
        return parts if self.streams > 1 else {k: v.squeeze(0) for k, v in parts.items()}

    @torch.no_grad()
    def reset_units(self, layer: str, units: torch.Tensor, draw) -> None:
        """Re-initialise chosen units of a hidden layer (a name of `model.hidden_layers`):
        `units` a bool mask (K, C) (or (C,) for one stream). Their incoming weights become
        `draw(shape, fan_in)` (a tensor of that shape) and their biases zero, their outgoing
        weights zero, and the optimizer state of all of these zero. A mask, not indices,
        so the update never waits for the host to count units."""
        spec = hidden_layers(self.config)[layer]
        modules = dict(self.network.named_modules())
        producer, reader = modules[spec.produced_by], modules[spec.read_by]
        units = self.rows(units)
        outputs = units.repeat_interleave(spec.group, dim=1)  # (K, out channels of the producer)
        touched = torch.zeros_like(self.flat_params, dtype=torch.bool)
        weight = self.rows(producer.weight)
        fan_in = weight[0, 0].numel()
        chosen = outputs.view(*outputs.shape, *([1] * (weight.dim() - 2)))
        weight.copy_(torch.where(chosen, draw(weight.shape, fan_in).to(weight), weight))
        bias = self.rows(producer.bias)
        bias.masked_fill_(outputs, 0.0)
        incoming = self.rows(reader.weight)
        read = units.view(units.shape[0], 1, units.shape[1], *([1] * (incoming.dim() - 3)))
        incoming.masked_fill_(read, 0.0)
        for parameter, mask in ((producer.weight, chosen), (producer.bias, outputs), (reader.weight, read)):
            self.rows(self._flat_view(touched, parameter)).copy_(mask.expand_as(self.rows(parameter)))
        self.optimizer.clear(touched)

    def _flat_view(self, flat: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
        """The view of a flat-shaped tensor (like `flat_params`) at `parameter`'s place."""
        offset = parameter.storage_offset() - self.flat_params.storage_offset()
        return torch.as_strided(flat, parameter.shape, parameter.stride(), flat.storage_offset() + offset)

    # Scoring and coding ------------------------------------------------------------------------

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
        return {
            **asdict(self.config),
            "optimizer": self.optimizer_name,
            "method": self.method_name,
            "method_options": asdict(self.method.options),
        }


def _check_stackable(models: list[StreamingAutoEncoder]) -> None:
    if not models:
        raise ValueError("stack needs at least one learner")
    first = models[0]
    labels = ("config", "optimizer", "lr", "change_weight", "device", "method", "method options")
    for k, model in enumerate(models):
        if model.streams > 1:
            raise ValueError(f"learner {k} is already stacked; unstack it first")
        ours = (
            model.config,
            model.optimizer_name,
            model.lr,
            model.change_weight,
            model.device,
            model.method_name,
            model.method.options,
        )
        theirs = (
            first.config,
            first.optimizer_name,
            first.lr,
            first.change_weight,
            first.device,
            first.method_name,
            first.method.options,
        )
        for label, a, b in zip(labels, ours, theirs):
            if a != b:
                raise ValueError(f"cannot stack learners whose {label} differs: learner 0 has {b}, learner {k} has {a}")
        groups = [
            {n: v for n, v in m.optimizer.param_groups[0].items() if not torch.is_tensor(v) and n != "params"}
            for m in (first, model)
        ]
        if groups[0] != groups[1]:
            raise ValueError(
                f"cannot stack learners whose optimizer hyper-parameters differ: "
                f"learner 0 has {groups[0]}, learner {k} has {groups[1]}"
            )
        if model.captured_step is not None:
            raise ValueError(f"learner {k} replays a CUDA graph; stack learners built without one")
    if len(models) > 1 and first.config.latent_noise and first.config.latent_bits:
        raise ValueError("learners with latent_noise draw their own noise and cannot be stacked")
    if len(models) > 1 and not OPTIMIZERS[first.optimizer_name].stackable:
        raise ValueError(f"optimizer {first.optimizer_name!r} has no stacked form (register it with stackable=True)")


def update_outputs(
    parts: dict,
    reconstruction: torch.Tensor,
    latents: list[torch.Tensor],
    change_mask: torch.Tensor,
    step_size: torch.Tensor,
    finite: torch.Tensor,
    grad_norm: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Every tensor an update reports, detached (one value per stream where there are K)."""
    return {
        **{k: v.detach() for k, v in parts.items()},
        "psnr": psnr(parts["mse"].detach()),
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

    def __init__(self, update, generators: list[torch.Generator] = (), warmups: int = 3):
        self.update = update
        self.generators = list(generators)  # registered with the graph: each replay draws afresh
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
        for generator in self.generators:
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            outputs = self.update(self.static_input)
            self.layout = [(name, t.shape, t.dtype) for name, t in outputs.items()]
            self.packed = torch.cat([t.reshape(-1).float() for t in outputs.values()])
        self.graph.replay()
        return self._unpack(self.packed.clone())

    def _unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = [shape.numel() for _, shape, _ in self.layout]
        return {
            name: (part.view(shape) if dtype == torch.float32 else part.view(shape).to(dtype))
            for (name, shape, dtype), part in zip(self.layout, flat.split(sizes))
        }


def create_streaming_ae(
    input_channels: int = 3,
    latent_channels: int = 3,
    lr: float | None = None,
    debug_vis: bool = False,
    use_tensorboard: bool = False,
    log_dir: str | None = None,
    optimizer: str = DEFAULT_OPTIMIZER,
    device: torch.device | str = "cpu",
    method: str = "none",
    method_options: object = None,
    **config_overrides,
) -> StreamingAutoEncoder:
    """Build the default model; optionally attach a TensorBoard logger to it.

    `debug_vis` adds feature-map images to the logger's throttled image logging. With
    `use_tensorboard`, `model.logger` logs every update; `model.logger.close()` ends it.
    """
    if input_channels != 3:
        raise ValueError("the model takes RGB frames: input_channels must be 3")
    config = ModelConfig(latent_channels=latent_channels, **config_overrides)
    model = StreamingAutoEncoder(
        config, optimizer=optimizer, lr=lr, device=device, method=method, method_options=method_options
    )
    if use_tensorboard:
        model.logger = TensorBoardLogger(log_dir or "runs/streaming_ae", feature_maps=debug_vis)
        model.on_update.append(lambda results: model.logger.log_step(results, model))
    return model

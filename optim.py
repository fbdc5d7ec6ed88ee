"""ObGD, the step-size-bounded streaming optimizer, its baselines, and sparse initialisation.

Reference: Elsayed, Vasan and Mahmood (2024), "Streaming Deep Reinforcement Learning
Finally Works". Each rule is written once, over per-stream rows: built with
`streams=K`, every parameter's leading dimension is the stream, row k of every
parameter is stream k's, and every reduction (ObGD's bound over all parameters, a step
count) is per row. Built as torch.optim builds an optimizer (`streams=None`), the same
rule sees one stream. The bound and every count live on the device, so a step never
waits for the host.

Every optimizer the learner can use implements one protocol, `StreamingOptimizer`:
`update(loss, finite) -> step_size`, called after the gradient is clipped (and zeroed
when not finite). Registering a class in `OPTIMIZERS` (`register_optimizer`) is all a
new one needs; one that accepts `streams` can also run in a stacked learner.
"""

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

MAX_GRAD_NORM = 1.0  # every update's gradient is clipped to this L2 norm


def clip_gradient(grad: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the gradient at norm MAX_GRAD_NORM in place and zero it where not finite; (norm
    before clipping, finite). A (K, P) gradient with (K,) losses is K streams: per row."""
    norm = torch.linalg.vector_norm(grad, dim=-1)
    finite = torch.isfinite(loss + norm)  # finite only if both terms are (an overflow skips too)
    clip = torch.where(finite, (MAX_GRAD_NORM / (norm + 1e-6)).clamp(max=1.0), 0.0)  # clip_grad_norm_'s factor
    grad.mul_(clip.unsqueeze(-1)).nan_to_num_(0.0, 0.0, 0.0)  # a no-op when finite; else zero (NaN * 0 stays NaN)
    return norm, finite


class StreamingOptimizer(Protocol):
    """What the learner asks of an optimizer: one update per frame, no host sync.

    `update(loss, finite)` gets the (detached) loss and a bool tensor that is False
    when the loss or gradient was not finite; the gradient is then already zero, and the
    update must leave the parameters as they are. It returns the effective step size as a
    device tensor (0-d, or one per stream). `state_dict` / `load_state_dict` carry the
    state in checkpoints. An optimizer may also define `on_cut(streams)`: the learner
    calls it at a cut (a game switch) in those streams, before their next update.
    """

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> None: ...


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K,) values shaped to broadcast over the rows of a (K, ...) tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _row_sums(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The sum over every element of each row, across all the tensors: (K,)."""
    return torch.stack([t.sum(dim=tuple(range(1, t.dim()))) for t in tensors]).sum(0)


class RowOptimizer:
    """torch.optim's interface (`param_groups`, `state`, `zero_grad`, `state_dict`) over
    per-stream rows, without subclassing `torch.optim.Optimizer`, whose first use imports
    torch._dynamo: a slow start-up on a small CPU (measured in docs/BENCHMARKS.md).

    `vectors` name the per-parameter state (zero at start); `per_step` names tensors in
    each parameter's state holding one value per stream (a step count), and `group_tensors`
    tensors of the param group holding one value per stream. With `streams=None` every
    per-stream value is 0-d; with `streams=K` it is (K,). `stream_state_dict(k)` and
    `load_stream_state(k, state)` move one stream's state in the single-stream format.
    """

    vectors: tuple[str, ...] = ()
    per_step: tuple[str, ...] = ()
    group_tensors: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict, streams: int | None = None):
        self.params = [p for p in params if p.requires_grad]
        self.streams = streams
        self.param_groups = [dict(params=self.params, **defaults)]
        shape = () if streams is None else (streams,)
        device = self.params[0].device
        for name in self.group_tensors:
            self.param_groups[0][name] = torch.zeros(shape, dtype=torch.float64, device=device)
        self.state = {
            p: {
                **{name: torch.zeros_like(p) for name in self.vectors},
                **{name: torch.zeros(shape, dtype=p.dtype, device=device) for name in self.per_step},
            }
            for p in self.params
        }

    @property
    def hyper(self) -> dict:
        return self.param_groups[0]

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` with its leading stream dimension (a view: in-place updates land)."""
        return tensor if self.streams is not None else tensor.unsqueeze(0)

    def out(self, values: torch.Tensor) -> torch.Tensor:
        """Per-stream values as the caller sees them: (K,), or 0-d for one stream."""
        return values if self.streams is not None else values.squeeze(0)

    def stepping(self) -> list[torch.nn.Parameter]:
        return [p for p in self.params if p.grad is not None]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    def state_dict(self) -> dict:
        """torch.optim's layout: state by parameter index, hyper-parameters in param_groups."""
        hyper = {k: v for k, v in self.hyper.items() if k != "params"}
        return {
            "state": {i: dict(self.state[p]) for i, p in enumerate(self.params)},
            "param_groups": [{**hyper, "params": list(range(len(self.params)))}],
        }

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        """In place: a captured CUDA graph keeps reading these very tensors. A missing
        entry (a state never stepped) loads as zero, a plain number as a 0-d value."""
        saved = state_dict["state"]
        if not set(saved) <= set(range(len(self.params))):
            raise ValueError("optimizer state does not match the model's parameters")
        for i, p in enumerate(self.params):
            for name, tensor in self.state[p].items():
                value = saved.get(i, {}).get(name, 0.0)
                tensor.copy_(value if torch.is_tensor(value) else torch.tensor(float(value)))
        group = state_dict["param_groups"][0]
        for name, value in group.items():
            if name in self.group_tensors:
                self.hyper[name].copy_(value if torch.is_tensor(value) else torch.tensor(float(value)))
            elif name in self.hyper and name != "params":
                self.hyper[name] = value

    def stream_state_dict(self, k: int) -> dict:
        """Stream k's state in the format of a single-stream optimizer of this class."""
        hyper = {
            name: (value[k].clone() if name in self.group_tensors else value)
            for name, value in self.hyper.items()
            if name != "params"
        }
        return {
            "state": {i: {name: t[k].clone() for name, t in self.state[p].items()} for i, p in enumerate(self.params)},
            "param_groups": [{**hyper, "params": list(range(len(self.params)))}],
        }

    @torch.no_grad()
    def load_stream_state(self, k: int, state_dict: dict) -> None:
        """Stream k's state from a single-stream optimizer's `state_dict()`."""
        saved = state_dict["state"]
        for i, p in enumerate(self.params):
            for name, tensor in self.state[p].items():
                value = saved.get(i, {}).get(name, 0.0)
                tensor[k].copy_(value if torch.is_tensor(value) else torch.tensor(float(value)))
        for name in self.group_tensors:
            self.hyper[name][k] = float(state_dict["param_groups"][0].get(name, 0))

    def on_cut(self, streams: list[int]) -> None:
        """A cut (a game switch) in these streams: most rules do not care."""

    @torch.no_grad()
    def clear(self, mask: torch.Tensor) -> None:
        """Zero the per-parameter state wherever `mask` (a bool per element of the single
        parameter) is set: the optimizer state of re-initialised units."""
        for p in self.params:
            for name in self.vectors:
                self.state[p][name].masked_fill_(mask, 0.0)


class ObGD(RowOptimizer):
    """The reference rule, for a loss gradient and a pseudo-error `delta` (default 1).

    z <- gamma*lamda*z + grad               (per parameter, the eligibility trace)
    M = lr * kappa * max(|delta|, 1) * sum|z|  (over all parameters)
    step = lr / M if M > 1 else lr
    theta <- theta - step * delta * z
    """

    vectors = ("trace",)

    def __init__(
        self,
        params,
        lr: float = 1.0,
        gamma: float = 0.99,
        lamda: float = 0.8,
        kappa: float = 2.0,
        streams: int | None = None,
    ):
        super().__init__(params, dict(lr=lr, gamma=gamma, lamda=lamda, kappa=kappa), streams)

    @torch.no_grad()
    def step(self, delta: float | torch.Tensor = 1.0) -> torch.Tensor:
        """One update; returns the effective step size (a device tensor: 0-d, or (K,))."""
        h, params = self.hyper, self.stepping()
        traces = self._accumulate_traces(params)
        delta = self._delta(delta, params[0])
        bound = h["lr"] * h["kappa"] * torch.clamp(delta.abs(), min=1.0) * _row_sums([z.abs() for z in traces])
        step_size = h["lr"] / torch.clamp(bound, min=1.0)
        for p, z in zip(params, traces):
            p_rows = self.rows(p)
            p_rows.sub_(z * _per_row(step_size * delta, z))
        return self.out(step_size)

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """For a loss the pseudo-error is 1; a skipped update gets delta = 0 (no step)."""
        return self.step(delta=finite.float())

    def _delta(self, delta: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The pseudo-error per stream, made on the device without a host copy (which would
        wait for the device and cannot be captured in a CUDA graph)."""
        if torch.is_tensor(delta):
            return delta.to(device=like.device, dtype=like.dtype).reshape(-1)
        return like.new_full((1,), delta)

    def _accumulate_traces(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """z <- gamma*lamda*z + grad for every parameter with a gradient; their traces as rows."""
        h = self.hyper
        traces = [self.rows(self.state[p]["trace"]) for p in params]
        for z, p in zip(traces, params):
            z.mul_(h["gamma"] * h["lamda"]).add_(self.rows(p.grad))
        return traces


class AdaptiveObGD(ObGD):
    """ObGD with Adam's per-parameter scaling and an overshoot bound (`obgd-adaptive`).

    As stream-x's AdaptiveObGD, the trace is divided by the running RMS of delta*z
    (beta2, bias-corrected), which gives every parameter its own scale:
    u = delta * z / (sqrt(v_hat) + eps). The paper's bound sums |u| over all
    parameters, which grows with their number and shrinks every step as many times. Here the
    bound keeps ObGD's purpose, no overshoot, but measures it where it happens: the
    first-order loss decrease of the step, step * |g . u|, may not exceed loss / kappa:

    M = lr * kappa * |g . u| / loss
    step = lr / max(M, 1);   theta <- theta - step * u

    Without `loss` there is no bound. At the default lr 1e-3 the bound rarely engages,
    and it does not keep a plain sigmoid output from saturating to a constant black
    image on Assault (neither do Adam and the reference ObGD; docs/BENCHMARKS.md):
    that is the job of `model.ReachableSigmoid` and the decoder's layer norm.
    """

    vectors = ("trace", "v")
    group_tensors = ("count",)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        gamma: float = 0.99,
        lamda: float = 0.8,
        kappa: float = 2.0,
        beta2: float = 0.999,
        eps: float = 1e-8,
        streams: int | None = None,
    ):
        RowOptimizer.__init__(
            self, params, dict(lr=lr, gamma=gamma, lamda=lamda, kappa=kappa, beta2=beta2, eps=eps), streams
        )

    @torch.no_grad()
    def step(self, delta: float | torch.Tensor = 1.0, loss: torch.Tensor | None = None) -> torch.Tensor:
        h, params = self.hyper, self.stepping()
        count = self.rows(h["count"])
        count.add_(1)  # on the device, so a captured CUDA graph counts on replay
        traces = self._accumulate_traces(params)
        delta = self._delta(delta, params[0])
        correction = (1 - torch.pow(h["beta2"], count)).to(params[0].dtype)  # float64 as in Python
        directions = []
        for p, z in zip(params, traces):
            second = self.rows(self.state[p]["v"])
            scaled = z * _per_row(delta, z)
            second.mul_(h["beta2"]).addcmul_(scaled, scaled, value=1 - h["beta2"])
            directions.append(scaled / (second / _per_row(correction, z)).sqrt_().add_(h["eps"]))
        step_size = params[0].new_full((len(count),), h["lr"])
        if loss is not None:
            effect = _row_sums([self.rows(p.grad) * u for p, u in zip(params, directions)]).abs()
            bound = h["lr"] * h["kappa"] * effect / torch.clamp(loss.detach().reshape(-1), min=1e-12)
            step_size = step_size / torch.clamp(bound, min=1.0)
        for p, u in zip(params, directions):
            self.rows(p).sub_(u * _per_row(step_size, u))
        return self.out(step_size)

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return self.step(delta=finite.float(), loss=torch.where(finite, loss.detach(), 0.0))


class StreamingAdam(RowOptimizer):
    """Adam at batch size 1 (torch.optim.Adam's rule, no weight decay). A skipped update
    keeps the moments and the step count, as torch's fused Adam does with `found_inf`."""

    vectors = ("exp_avg", "exp_avg_sq")
    per_step = ("step",)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        streams: int | None = None,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps), streams)

    @torch.no_grad()
    def step(self, taken: torch.Tensor | None = None) -> torch.Tensor:
        """One update; `taken` (one bool per stream) says which streams step. Returns the lr."""
        (beta1, beta2), params = self.hyper["betas"], self.stepping()
        if taken is None:
            taken = torch.ones((), dtype=torch.bool, device=params[0].device)
        taken = taken.to(params[0].dtype).reshape(-1)
        for p in params:
            state, grad = self.state[p], self.rows(p.grad)
            steps = self.rows(state["step"])
            steps.add_(taken)
            exp_avg, exp_avg_sq = self.rows(state["exp_avg"]), self.rows(state["exp_avg_sq"])
            exp_avg.lerp_(grad, _per_row((1 - beta1) * taken, grad))
            exp_avg_sq.lerp_(grad * grad, _per_row((1 - beta2) * taken, grad))
            counted = steps.clamp(min=1)  # a stream that never stepped has zero moments: no step either way
            denominator = exp_avg_sq.sqrt() / _per_row((1 - torch.pow(beta2, counted)).sqrt(), grad)
            step_size = self.hyper["lr"] / (1 - torch.pow(beta1, counted)) * taken
            self.rows(p).sub_(exp_avg / denominator.add_(self.hyper["eps"]) * _per_row(step_size, grad))
        return self.out(params[0].new_full((len(taken),), self.hyper["lr"]))

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return self.step(taken=finite)


class AdamRel(StreamingAdam):
    """Adam with relative timesteps (`adam-rel`): Ellis et al. (NeurIPS 2024), "Adam on Local
    Time: Addressing Nonstationarity in RL with Relative Adam Timesteps" (arXiv 2412.17113),
    Algorithm 1. Adam's rule, with the step count t of its bias corrections counted from the
    last change of objective: at a cut (a game switch) t restarts at 0 in that stream, while
    the moments m and v are kept. After a cut, with t counted afresh:

    m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
    theta <- theta - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    Without cuts it is `adam`. The restart is one in-place write per cut stream: no host sync.
    """

    @torch.no_grad()
    def on_cut(self, streams: list[int]) -> None:
        rows = list(streams)
        for p in self.params:
            self.rows(self.state[p]["step"])[rows] = 0.0


class UPGD(RowOptimizer):
    """Utility-based Perturbed Gradient Descent, the first-order global rule (`upgd`).

    Elsayed and Mahmood (ICLR 2024), "Addressing Loss of Plasticity and Catastrophic
    Forgetting in Continual Learning"; it follows `FirstOrderGlobalUPGD` in
    mohmdelsayed/upgd, `core/optim/weight_upgd/first_order.py`, with that class's defaults.
    Per weight, with the gradient g and a fresh standard normal xi each step:

    u <- beta_utility u + (1 - beta_utility) (-g theta)      (first-order utility trace)
    eta = max u over every weight of the stream               (the global max, per stream)
    s = sigmoid((u / (1 - beta_utility^t)) / eta)             (t: this stream's step count)
    theta <- theta (1 - lr weight_decay) - lr (g + sigma xi) (1 - s)

    Useful weights (s near 1) are protected from both the gradient and the noise; the
    others are perturbed, which keeps them plastic. Where u / (1 - beta^t) is exactly 0 the
    scaled utility is 0 (s = 1/2) whatever eta, as the formula gives for any eta != 0; the
    reference's 0 / 0 when eta is 0 would make the weight NaN.

    The noise comes from generators this optimizer owns, one per stream, seeded from the
    global RNG when it is built; their states are in `state_dict()` (and move with a
    stream's state), so a loaded optimizer draws what its uninterrupted twin draws. A
    skipped update (`finite` False) leaves the stream's weights, utilities and step count
    as they were (its generator still draws, so that nothing waits for the host).
    """

    vectors = ("avg_utility",)
    per_step = ("step",)

    def __init__(
        self,
        params,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        beta_utility: float = 0.0,
        sigma: float = 1.0,
        streams: int | None = None,
    ):
        super().__init__(
            params, dict(lr=lr, weight_decay=weight_decay, beta_utility=beta_utility, sigma=sigma), streams
        )
        device = self.params[0].device
        self.generators = [
            torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,)))) for _ in range(streams or 1)
        ]

    @torch.no_grad()
    def step(self, taken: torch.Tensor | None = None) -> torch.Tensor:
        """One update; `taken` (one bool per stream) says which streams step. Returns the lr."""
        h, params = self.hyper, self.stepping()
        beta, lr = h["beta_utility"], h["lr"]
        if taken is None:
            taken = torch.ones((), dtype=torch.bool, device=params[0].device)
        taken = taken.reshape(-1)
        dtype = params[0].dtype
        counted = taken.to(dtype)
        # each factor rounded from its float64 value, as torch rounds a Python number (the reference's)
        exact = torch.zeros_like(counted, dtype=torch.float64)
        decay = torch.where(taken, exact + beta, 1.0).to(dtype)
        shrink = torch.where(taken, exact + (1 - lr * h["weight_decay"]), 1.0).to(dtype)
        maxima = []
        for p in params:
            utility, grad, theta = self.rows(self.state[p]["avg_utility"]), self.rows(p.grad), self.rows(p)
            utility.mul_(_per_row(decay, utility)).add_(-grad * theta, alpha=1 - beta)
            self.rows(self.state[p]["step"]).add_(counted)
            maxima.append(utility.reshape(len(utility), -1).amax(dim=1))  # a 0-d parameter too
        global_max = torch.stack(maxima).amax(dim=0)  # (K,): one per stream, on the device
        for p in params:
            utility, grad, theta = self.rows(self.state[p]["avg_utility"]), self.rows(p.grad), self.rows(p)
            steps = self.rows(self.state[p]["step"]).clamp(min=1)  # a stream never stepped: no step either way
            correction = (1 - torch.pow(beta, steps.to(torch.float64))).to(dtype)
            corrected = utility / _per_row(correction, utility)
            scaled = torch.where(corrected == 0, 0.0, corrected / _per_row(global_max, utility)).sigmoid_()
            noise = self._noise(theta) * h["sigma"]
            change = (grad + noise) * (1 - scaled)
            theta.mul_(_per_row(shrink, theta))
            theta.add_(torch.where(_per_row(taken, change), change, 0.0), alpha=-lr)
        return self.out(params[0].new_full((len(taken),), lr))

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return self.step(taken=finite)

    def _noise(self, rows: torch.Tensor) -> torch.Tensor:
        """A standard normal draw shaped as `rows`, row k from stream k's generator."""
        return torch.stack(
            [torch.randn(rows.shape[1:], generator=g, dtype=rows.dtype, device=rows.device) for g in self.generators]
        )

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("generators")
        if saved is not None:
            if len(saved) != len(self.generators):
                raise ValueError(f"{len(saved)} noise generators saved for {len(self.generators)} streams")
            for generator, state in zip(self.generators, saved):
                generator.set_state(state.cpu())

    def stream_state_dict(self, k: int) -> dict:
        return {**super().stream_state_dict(k), "generators": [self.generators[k].get_state()]}

    def load_stream_state(self, k: int, state_dict: dict) -> None:
        super().load_stream_state(k, state_dict)
        if state_dict.get("generators") is not None:
            self.generators[k].set_state(state_dict["generators"][0].cpu())


class StreamingSGD(RowOptimizer):
    """Plain SGD at batch size 1 (a skipped update's gradient is already zero)."""

    def __init__(self, params, lr: float = 1.0, streams: int | None = None):
        super().__init__(params, dict(lr=lr), streams)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        params = self.stepping()
        for p in params:
            p.sub_(p.grad * self.hyper["lr"])
        return self.out(params[0].new_full((len(self.rows(params[0])),), self.hyper["lr"]))

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return self.step()


@torch.no_grad()
def sparse_init_(weight: torch.Tensor, sparsity: float = 0.5, unit_dim: int = 0) -> torch.Tensor:
    """Zero `sparsity` of each output unit's fan-in; the rest uniform +-1/sqrt(fan_in).

    `unit_dim` is the dimension of output units: 0 for Linear and Conv weights
    (out, in, kh, kw), 1 for ConvTranspose weights (in, out, kh, kw), whose fan-in
    is then in * kh * kw.
    """
    units = weight.transpose(0, unit_dim).flatten(1)
    fan_in = units.shape[1]
    bound = 1.0 / math.sqrt(fan_in)
    values = torch.empty_like(units).uniform_(-bound, bound)
    zeroed = torch.rand_like(units).argsort(dim=1)[:, : round(sparsity * fan_in)]
    values.scatter_(1, zeroed, 0.0)
    weight.transpose(0, unit_dim).copy_(values.view_as(weight.transpose(0, unit_dim)))
    return weight


@torch.no_grad()
def sparse_init_model_(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    """Sparse-initialise every Linear and (transposed) conv; biases start at zero. A
    K-stream layer (a weight with a leading stream dimension) gets K draws, stream by stream."""
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            sparse_init_(module.weight, sparsity, unit_dim=1)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            sparse_init_(module.weight, sparsity)
        elif getattr(module, "stream_layer", False):
            for weight in module.weight:
                sparse_init_(weight, sparsity)
        else:
            continue
        if module.bias is not None:
            module.bias.zero_()
    return model


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable[..., StreamingOptimizer]
    default_lr: float
    summary: str
    stackable: bool = False  # `build` takes `streams=K`: learners using it can be stacked


OPTIMIZERS: dict[str, OptimizerSpec] = {}
DEFAULT_OPTIMIZER = "obgd-adaptive"  # measured better than the reference rule (docs/BENCHMARKS.md)


def register_optimizer(
    name: str, build: Callable[..., StreamingOptimizer], default_lr: float, summary: str, stackable: bool = False
) -> None:
    """Make `build(params, lr=...)` available to the learner, `--optimizer` and bench.py as `name`;
    `stackable`: `build` also takes `streams=K` (per-stream rows), so learners using it stack."""
    OPTIMIZERS[name] = OptimizerSpec(build, default_lr, summary, stackable)


register_optimizer("obgd", ObGD, 1.0, "the reference ObGD rule (Elsayed et al. 2024)", stackable=True)
register_optimizer(
    "obgd-adaptive",
    AdaptiveObGD,
    1e-3,
    "ObGD with per-parameter RMS scaling and a bound on the first-order loss decrease",
    stackable=True,
)
register_optimizer("adam", StreamingAdam, 1e-3, "Adam at batch size 1 (baseline)", stackable=True)
register_optimizer("sgd", StreamingSGD, 1.0, "plain SGD at batch size 1 (baseline)", stackable=True)
register_optimizer(
    "adam-rel",
    AdamRel,
    1e-3,
    "Adam whose bias-correction step restarts at each cut, moments kept (Ellis et al. 2024)",
    stackable=True,
)


def learner_upgd(params, lr: float = 1.0, streams: int | None = None) -> UPGD:
    """`--optimizer upgd`: `UPGD` with the utility decay and noise scale of the authors'
    stand-alone UPGD (their README; also their PPO script): beta_utility 0.999, sigma 1e-3,
    and no weight decay (the class's). The reference class's defaults (beta_utility 0, sigma
    1, lr 1e-5) suit a gradient that is not clipped; this learner's is clipped at norm 1 over
    every weight, as `sgd`'s is, whose lr is 1.0; lr 2 and 4 did no better over 400-600
    frames of Breakout, Assault and Pacman (one seed each)."""
    return UPGD(params, lr=lr, weight_decay=0.0, beta_utility=0.999, sigma=1e-3, streams=streams)


register_optimizer(
    "upgd",
    learner_upgd,
    1.0,
    "utility-based perturbed gradient descent, first-order global (Elsayed and Mahmood 2024)",
    stackable=True,
)


def make_optimizer(name: str, params, lr: float, streams: int | None = None) -> StreamingOptimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    if streams is not None and not spec.stackable:
        raise ValueError(f"optimizer {name!r} has no stacked form (register it with stackable=True)")
    return spec.build(params, lr=lr, **({} if streams is None else {"streams": streams}))

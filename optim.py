"""ObGD, the step-size-bounded streaming optimizer, its baselines, and sparse initialisation.

Reference: Elsayed, Vasan and Mahmood (2024), "Streaming Deep Reinforcement Learning
Finally Works". Every step is a handful of fused `torch._foreach_*` kernels, and the
bound is computed on the device, so `step()` never waits for the host.

Every optimizer the learner can use implements one protocol, `StreamingOptimizer`:
`update(loss, finite) -> step_size`, called after the gradient is clipped (and zeroed
when not finite). Registering a class in `OPTIMIZERS` (`register_optimizer`) is all a
new one needs.
"""

import math
from dataclasses import dataclass, field
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


def _on_device(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor on `like`'s device, made by a fill kernel: no host-to-device copy,
    which would wait for the device and cannot be captured in a CUDA graph."""
    return value.to(device=like.device, dtype=like.dtype) if torch.is_tensor(value) else like.new_full((), value)


class StreamingOptimizer(Protocol):
    """What the learner asks of an optimizer: one update per frame, no host sync.

    `update(loss, finite)` gets the (detached) loss and a 0-d bool tensor that is False
    when the loss or gradient was not finite; the gradient is then already zero, and the
    update must leave the parameters as they are. It returns the effective step size as a
    0-d device tensor. `state_dict` / `load_state_dict` carry the state in checkpoints.
    """

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> None: ...


class ObGD:
    """The reference rule, for a loss gradient and a pseudo-error `delta` (default 1).

    z <- gamma*lamda*z + grad               (per parameter, the eligibility trace)
    M = lr * kappa * max(|delta|, 1) * sum|z|  (over all parameters)
    step = lr / M if M > 1 else lr
    theta <- theta - step * delta * z

    It keeps torch.optim's interface (`param_groups`, `state`, `zero_grad`,
    `state_dict`) without subclassing `torch.optim.Optimizer`, whose first use
    imports torch._dynamo: a slow start-up on a small CPU (measured in
    docs/BENCHMARKS.md).
    """

    def __init__(self, params, lr: float = 1.0, gamma: float = 0.99, lamda: float = 0.8, kappa: float = 2.0):
        self.params = [p for p in params if p.requires_grad]
        self.param_groups = [dict(params=self.params, lr=lr, gamma=gamma, lamda=lamda, kappa=kappa)]
        self.state = {p: {"trace": torch.zeros_like(p)} for p in self.params}

    @torch.no_grad()
    def step(self, delta: float | torch.Tensor = 1.0) -> torch.Tensor:
        """One update; returns the effective step size as a 0-d device tensor."""
        group = self.param_groups[0]
        params, grads, traces = self._accumulate_traces()
        delta = _on_device(delta, params[0])
        trace_l1 = torch.stack(torch._foreach_norm(traces, 1)).sum()
        bound = group["lr"] * group["kappa"] * torch.clamp(delta.abs(), min=1.0) * trace_l1
        step_size = group["lr"] / torch.clamp(bound, min=1.0)
        torch._foreach_add_(params, torch._foreach_mul(traces, -step_size * delta))
        return step_size

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """For a loss the pseudo-error is 1; a skipped update gets delta = 0 (no step)."""
        return self.step(delta=finite.float())

    def _accumulate_traces(self):
        """z <- gamma*lamda*z + grad for every parameter with a gradient; (params, grads, traces)."""
        group = self.param_groups[0]
        params = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in params]
        traces = [self.state[p]["trace"] for p in params]
        torch._foreach_mul_(traces, group["gamma"] * group["lamda"])
        torch._foreach_add_(traces, grads)
        return params, grads, traces

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    def state_dict(self) -> dict:
        """torch.optim's layout: traces by parameter index, hyper-parameters in param_groups."""
        hyper = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {
            "state": {i: {"trace": self.state[p]["trace"]} for i, p in enumerate(self.params)},
            "param_groups": [{**hyper, "params": list(range(len(self.params)))}],
        }

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["state"]
        if set(saved) != set(range(len(self.params))):
            raise ValueError("optimizer state does not match the model's parameters")
        for i, p in enumerate(self.params):
            self.state[p]["trace"].copy_(saved[i]["trace"])
        hyper = {k: v for k, v in state_dict["param_groups"][0].items() if k != "params"}
        self.param_groups[0].update(hyper)


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

    def __init__(self, params, lr: float = 1e-3, gamma: float = 0.99, lamda: float = 0.8, kappa: float = 2.0,
                 beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(params, lr=lr, gamma=gamma, lamda=lamda, kappa=kappa)
        device = self.params[0].device
        self.param_groups[0].update(beta2=beta2, eps=eps, count=torch.zeros((), dtype=torch.float64, device=device))
        for p in self.params:
            self.state[p]["v"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, delta: float | torch.Tensor = 1.0, loss: torch.Tensor | None = None) -> torch.Tensor:
        group = self.param_groups[0]
        group["count"].add_(1)  # on the device, so a captured CUDA graph counts on replay
        params, grads, traces = self._accumulate_traces()
        second = [self.state[p]["v"] for p in params]
        delta = _on_device(delta, params[0])
        scaled = torch._foreach_mul(traces, delta)
        torch._foreach_mul_(second, group["beta2"])
        torch._foreach_addcmul_(second, scaled, scaled, value=1 - group["beta2"])
        correction = (1 - torch.pow(group["beta2"], group["count"])).to(params[0].dtype)  # float64 as in Python
        denominators = torch._foreach_add(torch._foreach_sqrt(torch._foreach_div(second, correction)), group["eps"])
        direction = torch._foreach_div(scaled, denominators)
        step_size = params[0].new_full((), group["lr"])
        if loss is not None:
            effect = torch.stack([(g * u).sum() for g, u in zip(grads, direction)]).sum().abs()
            bound = group["lr"] * group["kappa"] * effect / torch.clamp(loss.detach(), min=1e-12)
            step_size = step_size / torch.clamp(bound, min=1.0)
        torch._foreach_add_(params, torch._foreach_mul(direction, -step_size))
        return step_size

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return self.step(delta=finite.float(), loss=torch.where(finite, loss.detach(), 0.0))

    def state_dict(self) -> dict:
        saved = super().state_dict()
        for i, p in enumerate(self.params):
            saved["state"][i]["v"] = self.state[p]["v"]
        return saved

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        count = self.param_groups[0]["count"]
        super().load_state_dict(state_dict)
        # filled in place: a captured CUDA graph keeps reading this very tensor (an int in old checkpoints)
        self.param_groups[0]["count"] = count.fill_(float(state_dict["param_groups"][0].get("count", 0)))
        for i, p in enumerate(self.params):
            self.state[p]["v"].copy_(state_dict["state"][i]["v"])


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
    """Sparse-initialise every Linear and (transposed) conv; biases start at zero."""
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            sparse_init_(module.weight, sparsity, unit_dim=1)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            sparse_init_(module.weight, sparsity)
        else:
            continue
        if module.bias is not None:
            module.bias.zero_()
    return model


class _LearningRateStep:
    """The protocol for torch.optim's fused Adam and SGD: a non-finite update is skipped
    by their `found_inf` flag, and the step size reported is the learning rate."""

    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        self.found_inf = (~finite).float()
        self.step()
        if not hasattr(self, "_lr_tensor"):
            self._lr_tensor = finite.new_full((), self.param_groups[0]["lr"], dtype=torch.float32)
        return self._lr_tensor


class StreamingAdam(_LearningRateStep, torch.optim.Adam):
    """Adam at batch size 1 (fused)."""

    def __init__(self, params, lr: float = 1e-3, capturable: bool = False):
        super().__init__(params, lr=lr, fused=True, capturable=capturable)


class StreamingSGD(_LearningRateStep, torch.optim.SGD):
    """Plain SGD at batch size 1 (fused)."""

    def __init__(self, params, lr: float = 1.0):
        super().__init__(params, lr=lr, fused=True)


class StreamsOptimizer:
    """One optimizer rule for K streams at once, each stream's state its own.

    Row k of the (K, P) parameter (and of its gradient) is stream k's whole model, laid out
    as a single-stream learner's flat buffer, so a stream's state vectors are rows too.
    `update(loss, finite)` gets (K,) losses and flags and returns (K,) step sizes; every
    reduction is per row. Built from the K single-stream optimizers' state dicts;
    `state_dict_of(k, template)` gives stream k's back, in the single optimizer's format
    (`template`: a fresh one's `state_dict()`).
    """

    vectors: tuple[str, ...] = ()  # per-parameter state, one row per stream

    def __init__(self, param: torch.Tensor, hyper: dict, states: list[dict]):
        self.param, self.hyper = param, hyper
        for name in self.vectors:
            rows = [s["state"].get(0, {}).get(name) for s in states]
            setattr(self, name, torch.stack([torch.zeros_like(param[0]) if r is None else r.to(param) for r in rows]))

    def state_dict_of(self, k: int, template: dict) -> dict:
        state = {name: getattr(self, name)[k].clone() for name in self.vectors}
        return {"state": {0: state} if state else {}, "param_groups": template["param_groups"]}


class StreamsObGD(StreamsOptimizer):
    """`ObGD` per stream: stream k's trace, and its global bound over its own parameters."""

    vectors = ("trace",)

    @torch.no_grad()
    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        h, delta = self.hyper, finite.to(self.param.dtype)  # max(|delta|, 1) = 1 for delta in {0, 1}
        self.trace.mul_(h["gamma"] * h["lamda"]).add_(self.param.grad)
        step_size = h["lr"] / torch.clamp(h["lr"] * h["kappa"] * self.trace.abs().sum(1), min=1.0)
        self.param.sub_(self.trace * (step_size * delta)[:, None])
        return step_size


class StreamsAdaptiveObGD(StreamsOptimizer):
    """`AdaptiveObGD` per stream: its own trace, RMS, count and overshoot bound."""

    vectors = ("trace", "v")

    def __init__(self, param: torch.Tensor, hyper: dict, states: list[dict]):
        super().__init__(param, hyper, states)
        self.count = torch.tensor([float(s["param_groups"][0]["count"]) for s in states], dtype=torch.float64,
                                  device=param.device)

    @torch.no_grad()
    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        h, grad = self.hyper, self.param.grad
        self.count.add_(1)
        self.trace.mul_(h["gamma"] * h["lamda"]).add_(grad)
        scaled = self.trace * finite.to(grad.dtype)[:, None]
        self.v.mul_(h["beta2"]).addcmul_(scaled, scaled, value=1 - h["beta2"])
        correction = (1 - torch.pow(h["beta2"], self.count)).to(grad.dtype)[:, None]
        direction = scaled / (self.v / correction).sqrt_().add_(h["eps"])
        effect = (grad * direction).sum(1).abs()
        bound = h["lr"] * h["kappa"] * effect / torch.clamp(torch.where(finite, loss, 0.0), min=1e-12)
        step_size = h["lr"] / torch.clamp(bound, min=1.0)
        self.param.sub_(direction * step_size[:, None])
        return step_size

    def state_dict_of(self, k: int, template: dict) -> dict:
        saved = super().state_dict_of(k, template)
        saved["param_groups"] = [{**template["param_groups"][0], "count": float(self.count[k])}]
        return saved


class StreamsAdam(StreamsOptimizer):
    """torch.optim.Adam's rule per stream (no weight decay); a skipped stream keeps its
    moments and its step count, as fused Adam's `found_inf` does."""

    vectors = ("exp_avg", "exp_avg_sq")

    def __init__(self, param: torch.Tensor, hyper: dict, states: list[dict]):
        super().__init__(param, hyper, states)
        self.steps = torch.tensor([float(s["state"].get(0, {}).get("step", 0)) for s in states], device=param.device)
        self.lr = param.new_full((len(states),), hyper["lr"])

    @torch.no_grad()
    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        (beta1, beta2), grad, taken = self.hyper["betas"], self.param.grad, finite.to(self.param.dtype)
        self.steps.add_(taken)
        self.exp_avg.lerp_(grad, ((1 - beta1) * taken)[:, None])
        self.exp_avg_sq.lerp_(grad * grad, ((1 - beta2) * taken)[:, None])
        steps = self.steps.clamp(min=1)  # a stream that never stepped has zero moments: no step either way
        denominator = (self.exp_avg_sq.sqrt() / (1 - torch.pow(beta2, steps)).sqrt()[:, None]).add_(self.hyper["eps"])
        step_size = self.lr / (1 - torch.pow(beta1, steps)) * taken
        self.param.sub_(self.exp_avg / denominator * step_size[:, None])
        return self.lr

    def state_dict_of(self, k: int, template: dict) -> dict:
        if not self.steps[k]:
            return {"state": {}, "param_groups": template["param_groups"]}
        saved = super().state_dict_of(k, template)
        saved["state"][0]["step"] = self.steps[k].clone()
        return saved


class StreamsSGD(StreamsOptimizer):
    """Plain SGD per stream (a skipped stream's gradient is already zero)."""

    def __init__(self, param: torch.Tensor, hyper: dict, states: list[dict]):
        super().__init__(param, hyper, states)
        self.lr = param.new_full((len(states),), hyper["lr"])

    @torch.no_grad()
    def update(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        self.param.sub_(self.param.grad * self.hyper["lr"])
        return self.lr


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable[..., StreamingOptimizer]
    default_lr: float
    summary: str
    capture_kwargs: dict = field(default_factory=dict)  # extra constructor arguments under a CUDA graph
    streams: type[StreamsOptimizer] | None = None  # the same rule for K stacked streams


OPTIMIZERS: dict[str, OptimizerSpec] = {}
DEFAULT_OPTIMIZER = "obgd-adaptive"  # measured better than the reference rule (docs/BENCHMARKS.md)


def register_optimizer(name: str, build: Callable[..., StreamingOptimizer], default_lr: float, summary: str,
                       capture_kwargs: dict | None = None, streams: type[StreamsOptimizer] | None = None) -> None:
    """Make `build(params, lr=...)` available to the learner, `--optimizer` and bench.py as `name`;
    `streams`, its `StreamsOptimizer`, lets learners using it be stacked."""
    OPTIMIZERS[name] = OptimizerSpec(build, default_lr, summary, capture_kwargs or {}, streams)


register_optimizer("obgd", ObGD, 1.0, "the reference ObGD rule (Elsayed et al. 2024)", streams=StreamsObGD)
register_optimizer("obgd-adaptive", AdaptiveObGD, 1e-3,
                   "ObGD with per-parameter RMS scaling and a bound on the first-order loss decrease",
                   streams=StreamsAdaptiveObGD)
register_optimizer("adam", StreamingAdam, 1e-3, "Adam at batch size 1 (baseline)", {"capturable": True},
                   streams=StreamsAdam)
register_optimizer("sgd", StreamingSGD, 1.0, "plain SGD at batch size 1 (baseline)", streams=StreamsSGD)


def make_optimizer(name: str, params, lr: float, capturable: bool = False) -> StreamingOptimizer:
    """`capturable`: the optimizer will be replayed in a CUDA graph (Adam refuses capture
    without its `capturable` mode)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    return spec.build(params, lr=lr, **(spec.capture_kwargs if capturable else {}))

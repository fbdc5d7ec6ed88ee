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


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable[..., StreamingOptimizer]
    default_lr: float
    summary: str
    capture_kwargs: dict = field(default_factory=dict)  # extra constructor arguments under a CUDA graph


OPTIMIZERS: dict[str, OptimizerSpec] = {}
DEFAULT_OPTIMIZER = "obgd-adaptive"  # measured better than the reference rule (docs/BENCHMARKS.md)


def register_optimizer(name: str, build: Callable[..., StreamingOptimizer], default_lr: float, summary: str,
                       capture_kwargs: dict | None = None) -> None:
    """Make `build(params, lr=...)` available to the learner, `--optimizer` and bench.py as `name`."""
    OPTIMIZERS[name] = OptimizerSpec(build, default_lr, summary, capture_kwargs or {})


register_optimizer("obgd", ObGD, 1.0, "the reference ObGD rule (Elsayed et al. 2024)")
register_optimizer("obgd-adaptive", AdaptiveObGD, 1e-3,
                   "ObGD with per-parameter RMS scaling and a bound on the first-order loss decrease")
register_optimizer("adam", StreamingAdam, 1e-3, "Adam at batch size 1 (baseline)", {"capturable": True})
register_optimizer("sgd", StreamingSGD, 1.0, "plain SGD at batch size 1 (baseline)")


def make_optimizer(name: str, params, lr: float, capturable: bool = False) -> StreamingOptimizer:
    """`capturable`: the optimizer will be replayed in a CUDA graph (Adam refuses capture
    without its `capturable` mode)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    return spec.build(params, lr=lr, **(spec.capture_kwargs if capturable else {}))

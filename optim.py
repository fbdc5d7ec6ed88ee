"""ObGD, the step-size-bounded streaming optimizer, and sparse initialisation.

Reference: Elsayed, Vasan and Mahmood (2024), "Streaming Deep Reinforcement Learning
Finally Works". Every step is a handful of fused `torch._foreach_*` kernels, and the
bound is computed on the device, so `step()` never waits for the host.
"""

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn


class ObGD(torch.optim.Optimizer):
    """The reference rule, for a loss gradient and a pseudo-error `delta` (default 1).

    z <- gamma*lamda*z + grad               (per parameter, the eligibility trace)
    M = lr * kappa * max(|delta|, 1) * sum|z|  (over all parameters)
    step = lr / M if M > 1 else lr
    theta <- theta - step * delta * z
    """

    def __init__(self, params, lr: float = 1.0, gamma: float = 0.99, lamda: float = 0.8, kappa: float = 2.0):
        super().__init__(params, dict(lr=lr, gamma=gamma, lamda=lamda, kappa=kappa))
        self.last_step_size = torch.zeros(())

    @torch.no_grad()
    def step(self, delta: float | torch.Tensor = 1.0) -> torch.Tensor:
        """One update; returns the effective step size as a 0-d device tensor."""
        group = self.param_groups[0]
        params, grads, traces = self._gather()
        torch._foreach_mul_(traces, group["gamma"] * group["lamda"])
        torch._foreach_add_(traces, grads)
        delta = torch.as_tensor(delta, dtype=params[0].dtype, device=params[0].device)
        trace_l1 = torch.stack(torch._foreach_norm(traces, 1)).sum()
        bound = group["lr"] * group["kappa"] * torch.clamp(delta.abs(), min=1.0) * trace_l1
        step_size = group["lr"] / torch.clamp(bound, min=1.0)
        torch._foreach_add_(params, torch._foreach_mul(traces, -step_size * delta))
        self.last_step_size = step_size
        return step_size

    def _gather(self):
        """Parameters with a gradient, their gradients and traces (created lazily)."""
        params, grads, traces = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "trace" not in state:
                    state["trace"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                traces.append(state["trace"])
        return params, grads, traces


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


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable
    default_lr: float
    summary: str


OPTIMIZERS = {
    "obgd": OptimizerSpec(ObGD, 1.0, "the reference ObGD rule (Elsayed et al. 2024)"),
    "adam": OptimizerSpec(partial(torch.optim.Adam, fused=True), 1e-3, "Adam at batch size 1 (baseline)"),
    "sgd": OptimizerSpec(partial(torch.optim.SGD, fused=True), 1.0, "plain SGD at batch size 1 (baseline)"),
}


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name].build(params, lr=lr)

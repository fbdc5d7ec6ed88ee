"""Continual backprop: Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood and Sutton, "Loss of
plasticity in deep continual learning" (Nature 632, 2024). Reference code:
`shibhansh/loss-of-plasticity`, `lop/algos/cbp_conv.py` and `lop/algos/cbp_linear.py` (the
layer-wise implementation), with the running utility of `lop/algos/convGnT.py` (the
generate-and-test of the paper's convolutional experiments), to which `cbp_conv.py` reduces
at `decay_rate = 0`."""

import math
from dataclasses import dataclass

import numpy as np
import torch

from methods import Method, generator_states, load_generator_states, register_method, stream_generators, uniform_rows
from model import hidden_layers


@register_method
class ContinualBackprop(Method):
    """After every step, on every hidden layer of `model.hidden_layers`, per stream:

    1. every unit ages by one;
    2. its contribution utility is updated from this update's own activation h (after the
       layer's activation function) and the layer's outgoing weights w (the reading
       convolution's kernels, after the step):
           u <- decay * u + (1 - decay) * mean|w_i| * mean|h_i|
       mean|w_i| over the reader's output channels and kernel positions and mean|h_i| over
       positions, as the reference computes it for a convolution read by a convolution (the
       paper's sum over outgoing weights divided by a constant of the layer, which changes
       no choice); the utility that ranks is bias-corrected, u / (1 - decay^age);
    3. the units older than `maturity_threshold` are eligible; `replacement_rate` times
       their number is added to the layer's accumulator, and its integer part n is taken
       out of it: the n eligible units of least utility are replaced: incoming weights
       re-drawn uniform in +-sqrt(1 / fan_in) (the reference's bound for a convolution,
       fan_in = in channels x kernel area), bias zeroed, outgoing weights zeroed, their
       optimizer state cleared (`learner.reset_units`), utility and age set to zero.

    All utilities are computed before any unit of the step is replaced; layers are then
    replaced in order (a unit of a layer and one of the layer it feeds replaced at once: the
    second one's re-drawn incoming weights win, as in the reference).

    A unit is one output channel of a hidden layer after its activation: where a 2x pixel
    shuffle follows (`decoder.up`), that is one channel of the shuffled map, made by 4
    consecutive channels of the producing convolution; those 4 kernels are its incoming
    weights (re-drawn together) and its activation is the shuffled channel's, over every
    position at twice the resolution.

    No host sync: utilities and ages live on the device, (K, C) per layer. How many units a
    stream replaces is known on the host without reading the device: ages grow by one each
    step for every unit and only eligible units are replaced (back to age 0), so the number
    of eligible units follows from the host's own count of the multiset of ages; which
    units are replaced is a mask on the device. A skipped update (non-finite loss or
    gradient) does not update utilities from its activations but ages units and may
    replace, so the host's count never depends on device values.

    The reference's next-layer bias correction (`lop/algos/gnt.py`, for fully connected
    layers) is not in `cbp_conv.py`, `cbp_linear.py` or `convGnT.py`, and is not applied.
    """

    name = "cbp"
    reads_activations = True

    @dataclass(frozen=True)
    class Options:
        replacement_rate: float = 1e-4
        maturity_threshold: int = 100
        decay_rate: float = 0.99

    def __init__(self, learner, options: Options):
        super().__init__(learner, options)
        if not 0 <= options.decay_rate < 1:
            raise ValueError(f"decay_rate must be in [0, 1), got {options.decay_rate}")
        if not 0 <= options.replacement_rate <= 1:
            raise ValueError(f"replacement_rate must be in [0, 1], got {options.replacement_rate}")
        self.layers = hidden_layers(learner.config)
        modules = dict(learner.network.named_modules())
        self.widths = {name: learner.rows(modules[spec.read_by].weight).shape[2] for name, spec in self.layers.items()}
        device, dtype = learner.device, learner.flat_params.dtype
        self.utility = {n: torch.zeros(self.streams, c, device=device, dtype=dtype) for n, c in self.widths.items()}
        self.age = {n: torch.zeros(self.streams, c, device=device, dtype=torch.long) for n, c in self.widths.items()}
        # the host's copy of each layer's multiset of ages (which unit has which age is the device's)
        self.host_ages = {n: np.zeros((self.streams, c), dtype=np.int64) for n, c in self.widths.items()}
        self.accumulated = np.zeros((self.streams, len(self.layers)))
        self.generators = stream_generators(self.streams, device)

    @torch.no_grad()
    def after_step(self, learner, finite: torch.Tensor, hidden: dict | None) -> dict[str, torch.Tensor]:
        o = self.options
        modules = dict(learner.network.named_modules())
        kept = learner.rows(finite).view(-1, 1)
        chosen = {}
        utility_sum = 0.0
        for i, (name, spec) in enumerate(self.layers.items()):
            age, utility = self.age[name], self.utility[name]
            age.add_(1)
            outgoing = learner.rows(modules[spec.read_by].weight).abs().mean(dim=(1, 3, 4))
            activity = hidden[name].abs().mean(dim=(2, 3)).to(utility.dtype)
            fresh = torch.where(kept, decay_step(utility, outgoing * activity, o.decay_rate), utility)
            utility.copy_(fresh)
            corrected = utility / (1 - torch.pow(o.decay_rate, age.to(utility.dtype)))
            utility_sum = utility_sum + corrected.sum(1)
            n = self._count(i, name)
            if n.any():
                chosen[name] = (least(corrected, age > o.maturity_threshold, n), n)
        for name, spec in self.layers.items():
            if name in chosen:
                mask, n = chosen[name]
                learner.reset_units(name, mask if self.streams > 1 else mask[0], self._draw(n))
                self.utility[name].masked_fill_(mask, 0.0)
                self.age[name].masked_fill_(mask, 0)
        replaced = sum((mask.sum(1) for mask, _ in chosen.values()), torch.zeros_like(utility_sum))
        return {"units_reset": replaced, "utility_mean": utility_sum / sum(self.widths.values())}

    def _count(self, i: int, name: str) -> np.ndarray:
        """How many units of the layer each stream replaces this step, from the host's ages:
        the reference's fractional accumulator of replacement_rate x eligible units."""
        ages = self.host_ages[name]
        ages += 1
        eligible = (ages > self.options.maturity_threshold).sum(1)
        self.accumulated[:, i] += self.options.replacement_rate * eligible
        n = np.minimum(np.floor(self.accumulated[:, i]).astype(np.int64), eligible)
        self.accumulated[:, i] -= n
        for k in np.flatnonzero(n):  # any n eligible units: the count does not depend on which
            ages[k, np.flatnonzero(ages[k] > self.options.maturity_threshold)[: n[k]]] = 0
        return n

    def _draw(self, n: np.ndarray):
        """Uniform in +-sqrt(1 / fan_in), from each replacing stream's generator only."""

        def draw(shape, fan_in):
            return uniform_rows(shape, math.sqrt(1 / fan_in), self.generators, n)

        return draw

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"generator": generator_states(self.generators)}
        state["accumulated"] = torch.tensor(self.accumulated, dtype=torch.float64)
        for name in self.layers:
            state[f"utility/{name}"] = self.utility[name]
            state[f"age/{name}"] = self.age[name]
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_generator_states(self.generators, state["generator"])
        self.accumulated = state["accumulated"].double().cpu().numpy().copy()
        for name in self.layers:
            self.utility[name].copy_(state[f"utility/{name}"])
            self.age[name].copy_(state[f"age/{name}"])
            self.host_ages[name] = state[f"age/{name}"].cpu().numpy().astype(np.int64).copy()


def decay_step(average: torch.Tensor, value: torch.Tensor, decay: float) -> torch.Tensor:
    return decay * average + (1 - decay) * value


def least(score: torch.Tensor, eligible: torch.Tensor, n: np.ndarray) -> torch.Tensor:
    """A (K, C) mask of the n[k] eligible units of least score in each row k (ties: the lower
    index), on the device: n[k] never exceeds row k's eligible units."""
    masked = torch.where(eligible, score, torch.full_like(score, math.inf))
    order = masked.argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(score.shape[1], device=score.device).expand_as(order)
    )
    if (n == n[0]).all():
        return rank < int(n[0])
    return torch.stack([rank[k] < int(n[k]) for k in range(len(n))])

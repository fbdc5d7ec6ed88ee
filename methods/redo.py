"""ReDo, recycling dormant units: Sokar, Agarwal, Castro and Evci, "The Dormant Neuron
Phenomenon in Deep Reinforcement Learning" (ICML 2023). Reference code: `google/dopamine`,
`dopamine/labs/redo/weight_recyclers.py` (`NeuronRecycler`, `estimate_neuron_score`,
`recycle_dead_neurons`, `weight_reinit_random`)."""

import math
from dataclasses import dataclass

import torch

from methods import Method, generator_states, load_generator_states, register_method, stream_generators, uniform_rows
from model import hidden_layers


@register_method
class ReDo(Method):
    """Every `every` steps of a stream, its dormant units are recycled.

    On every hidden layer of `model.hidden_layers`, a unit's score is the one
    `continual.dormant_fraction` gives (and the reference's `estimate_neuron_score`):
        s_i = E|h_i| / ((1/H) sum_k E|h_k|)
    within its layer of H units, h the layer's output after its activation, E over frames
    and positions. Here the frames are the stream's own updates since its last recycling
    (E a running mean of each update's mean |h_i| over positions, from the activations of
    the update's own forward pass: no probe frame, no extra pass), where the reference
    scores a batch drawn from its replay buffer. At step t with t % every == 0, the units
    with s_i <= threshold are recycled: incoming weights re-drawn with the reference's
    initializer (Glorot uniform: +-sqrt(6 / (fan_in + fan_out)), fan_in and fan_out the
    producing convolution's in and out channels times its kernel area), biases and
    outgoing weights zeroed, their optimizer state cleared (`learner.reset_units`); the
    running means then start again. As in the reference, all layers' units are chosen
    first; a weight that is both a recycled unit's incoming weight and another recycled
    unit's outgoing weight ends zero (the reference zeroes outgoing weights after it
    re-draws incoming ones). Where a 2x pixel shuffle follows (`decoder.up`), a unit is one
    channel of the shuffled map: the 4 channels of the producing convolution that make it.
    The reference clears the Adam moments of the recycled weights but not of the biases;
    here the biases' optimizer state is cleared too.

    Statistics per stream: `units_reset` (units recycled this step) and `dormant_fraction`
    (the fraction of units whose running score is at most the threshold now). Updates that
    are skipped (non-finite) add nothing to the means. Nothing waits for the host: the
    recycling steps are the host's step counts; which units is a mask on the device.
    """

    name = "redo"
    reads_activations = True

    @dataclass(frozen=True)
    class Options:
        threshold: float = 0.1
        every: int = 1000

    def __init__(self, learner, options: Options):
        super().__init__(learner, options)
        if options.every < 1:
            raise ValueError(f"every must be at least 1, got {options.every}")
        self.layers = hidden_layers(learner.config)
        modules = dict(learner.network.named_modules())
        widths = {name: learner.rows(modules[spec.read_by].weight).shape[2] for name, spec in self.layers.items()}
        device, dtype = learner.device, learner.flat_params.dtype
        self.activity = {n: torch.zeros(self.streams, c, device=device, dtype=dtype) for n, c in widths.items()}
        self.frames = torch.zeros(self.streams, device=device, dtype=dtype)
        self.generators = stream_generators(self.streams, device)

    def scores(self) -> dict[str, torch.Tensor]:
        """Each layer's (K, H) scores from the running means."""
        scores = {}
        for name, activity in self.activity.items():
            mean = activity / self.frames.clamp_min(1).unsqueeze(1)
            scores[name] = mean / mean.mean(dim=1, keepdim=True).clamp_min(1e-12)
        return scores

    @torch.no_grad()
    def after_step(self, learner, finite: torch.Tensor, hidden: dict | None) -> dict[str, torch.Tensor]:
        kept = learner.rows(finite).view(-1, 1)
        for name, activity in self.activity.items():
            mean_abs = hidden[name].abs().mean(dim=(2, 3)).to(activity.dtype)
            activity.add_(torch.where(kept, mean_abs, torch.zeros_like(mean_abs)))
        self.frames.add_(kept.view(-1).to(self.frames.dtype))
        seen = (self.frames > 0).unsqueeze(1)
        dormant = {name: (s <= self.options.threshold) & seen for name, s in self.scores().items()}
        units = sum(d.shape[1] for d in dormant.values())
        fraction = sum(d.sum(1) for d in dormant.values()).to(self.frames.dtype) / units
        recycling = [(step + 1) % self.options.every == 0 for step in learner.steps]
        replaced = torch.zeros_like(self.frames)
        if any(recycling):
            for name in reversed(self.layers):  # incoming weights re-drawn before outgoing ones are zeroed
                mask = dormant[name]
                if not all(recycling):
                    mask = torch.stack([row if r else torch.zeros_like(row) for row, r in zip(mask, recycling)])
                learner.reset_units(name, mask if self.streams > 1 else mask[0], self._draw(recycling))
                replaced += mask.sum(1)
            for k in [k for k, r in enumerate(recycling) if r]:
                self.frames[k] = 0
                for activity in self.activity.values():
                    activity[k] = 0
        return {"units_reset": replaced, "dormant_fraction": fraction}

    def _draw(self, recycling: list[bool]):
        """Glorot uniform for a producing kernel (K, out, in, kh, kw), from each recycling
        stream's generator only."""

        def draw(shape, fan_in):
            fan_out = shape[1] * math.prod(shape[3:])
            return uniform_rows(shape, math.sqrt(6 / (fan_in + fan_out)), self.generators, recycling)

        return draw

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"generator": generator_states(self.generators), "frames": self.frames}
        state.update({f"activity/{name}": activity for name, activity in self.activity.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_generator_states(self.generators, state["generator"])
        self.frames.copy_(state["frames"])
        for name, activity in self.activity.items():
            activity.copy_(state[f"activity/{name}"])

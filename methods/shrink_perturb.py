"""Shrink and perturb: Ash and Adams, "On Warm-Starting Neural Network Training" (NeurIPS
2020), in the per-step form that Dohare et al., "Loss of plasticity in deep continual
learning" (Nature 2024; `shibhansh/loss-of-plasticity`), compare against continual backprop."""

from dataclasses import dataclass

import torch

from methods import Method, generator_states, load_generator_states, register_method, stream_generators


@register_method
class ShrinkPerturb(Method):
    """After every step, w <- (1 - shrink) * w + sigma * eps, eps ~ N(0, 1), on every parameter.

    Shrinking pulls the weights towards zero, which keeps them small enough to move; the
    noise keeps units from collapsing onto each other. Each stream draws its noise from a
    generator of its own, seeded from the global RNG when the learner is built and kept in
    the checkpoint. A skipped update (non-finite loss or gradient) is neither shrunk nor
    perturbed, but its noise is still drawn, so a stream's draws do not depend on its skips.
    """

    name = "shrink-perturb"

    @dataclass(frozen=True)
    class Options:
        shrink: float = 1e-4
        sigma: float = 1e-4

    def __init__(self, learner, options: Options):
        super().__init__(learner, options)
        device = learner.device
        self.generators = stream_generators(self.streams, device)

    @torch.no_grad()
    def after_step(self, learner, finite: torch.Tensor, hidden: dict | None) -> dict[str, torch.Tensor]:
        weights = learner.rows(learner.flat_params.detach())
        noise = torch.stack(
            [
                torch.randn(weights.shape[1:], generator=g, device=weights.device, dtype=weights.dtype)
                for g in self.generators
            ]
        )
        kept = learner.rows(finite).to(weights.dtype)[:, None]
        weights.mul_(1 - self.options.shrink * kept).add_(noise * (self.options.sigma * kept))
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": generator_states(self.generators)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_generator_states(self.generators, state["generator"])

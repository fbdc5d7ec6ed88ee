"""L2 Init: Kumar, Marklund and Van Roy, "Maintaining Plasticity in Continual Learning via
Regenerative Regularization" (CoLLAs 2024; arXiv 2308.11958, 2023)."""

from dataclasses import dataclass

import torch

from methods import Method, register_method


@register_method
class L2Init(Method):
    """Adds weight * ||theta - theta_0||^2 to each stream's loss, theta_0 its initial weights.

    Unlike L2 towards zero, the pull is towards the initialisation, whose weights are known
    to be trainable. theta_0 is the learner's weights when the method is built (at the start
    of a run), kept in the checkpoint so a resumed run pulls towards the same point.
    """

    name = "l2-init"

    @dataclass(frozen=True)
    class Options:
        weight: float = 1e-4

    def __init__(self, learner, options: Options):
        super().__init__(learner, options)
        self.initial = learner.rows(learner.flat_params.detach()).clone()

    def loss(self, learner) -> torch.Tensor:
        return self.options.weight * (learner.rows(learner.flat_params) - self.initial).square().sum(1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"initial": self.initial}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.initial.copy_(state["initial"])

"""Continual-learning measurements: probe scoring, plasticity, forgetting.

Scoring never updates: it runs the network on held-out probe frames and leaves weights,
optimizer state and change detector as they are. The plasticity metrics follow the
papers that define them (cited in each docstring); the forgetting summaries follow the
continual-learning convention of an accuracy matrix R[i][g], here probe PSNR of game g
at the end of segment i.
"""

import math

import torch

from autoencoder import StreamingAutoEncoder
from metrics import psnr_value

DORMANT_THRESHOLD = 0.1
EVAL_EVERY = 1000  # default steps between scorings of the probe sets
PROBE_FRAMES = 64  # default held-out probe frames per game


def upgd_plasticity(loss_before: torch.Tensor, loss_after: torch.Tensor) -> torch.Tensor:
    """clamp(1 - L_after / L_before, 0, 1): the share of the loss one update removes on the
    frame it learned from (Elsayed and Mahmood 2024, "Addressing Loss of Plasticity and
    Catastrophic Forgetting in Continual Learning", UPGD)."""
    return (1 - loss_after / loss_before.clamp_min(1e-12)).clamp(0.0, 1.0)


def dormant_fraction(activations: dict[str, torch.Tensor], threshold: float = DORMANT_THRESHOLD) -> float:
    """The fraction of channels, over all layers given, whose ReDo score is at most `threshold`.

    s_i = E|h_i| / ((1/H) sum_k E|h_k|) within its layer of H channels, h a layer's output
    after its activation, E over the batch and all positions (Sokar et al. 2023, "The
    Dormant Neuron Phenomenon in Deep Reinforcement Learning")."""
    dormant = total = 0
    for h in activations.values():
        mean_abs = h.abs().mean(dim=(0, 2, 3))
        score = mean_abs / mean_abs.mean().clamp_min(1e-12)
        dormant += int((score <= threshold).sum())
        total += score.numel()
    return dormant / total


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of p), p = sigma / sum(sigma), sigma the singular values of the feature
    matrix with every (frame, position) a row and every channel a column (Roy and Vetterli
    2007, "The effective rank"; as in Dohare et al. 2024, "Loss of plasticity in deep
    continual learning")."""
    matrix = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double()
    sigma = torch.linalg.svdvals(matrix)
    p = sigma / sigma.sum().clamp_min(1e-300)
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


@torch.no_grad()
def hidden_activations(model: StreamingAutoEncoder, frames: torch.Tensor, chunk: int = 16) -> dict[str, torch.Tensor]:
    """Every hidden layer's activations over the frames, batched in chunks."""
    parts = [model.network.hidden_activations(model.as_input(part))[0] for part in frames.split(chunk)]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def plasticity_metrics(model: StreamingAutoEncoder, probes: torch.Tensor, results: dict | None) -> dict[str, float]:
    """`plasticity/...` at a scoring: UPGD's on the frame just learned (`results` of its
    update), dormant fraction and effective rank over the current game's probe frames,
    and the norms of the weights and of the last gradient before clipping."""
    activations = hidden_activations(model, probes)
    metrics = {
        "plasticity/dormant_fraction": dormant_fraction(activations),
        "plasticity/effective_rank": effective_rank(activations["decoder.fuse"]),
        "plasticity/weight_l2": torch.linalg.vector_norm(model.flat_params.detach()).item(),
    }
    if results is not None:
        after = model.loss_on(results["input"], results["change_mask"])
        metrics["plasticity/upgd"] = upgd_plasticity(results["loss"], after).item()
        metrics["plasticity/grad_l2"] = float(results["grad_norm"])
    return metrics


def probe_psnrs(model: StreamingAutoEncoder, probe_sets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per game: 10 log10(1 / mean MSE over its probe frames), without an update."""
    return {game: psnr_value(model.evaluate(frames).mean().item()) for game, frames in probe_sets.items()}


def scoring(
    model: StreamingAutoEncoder, probe_sets: dict[str, torch.Tensor], game: str, results: dict | None
) -> dict[str, float]:
    """Every tag of one scoring: `probe/psnr/<Game>` for each set and the plasticity metrics."""
    tags = {f"probe/psnr/{g}": value for g, value in probe_psnrs(model, probe_sets).items()}
    tags.update(plasticity_metrics(model, probe_sets[game], results))
    return tags


def forgetting_summary(
    matrix: list[list[float]], segment_games: list[int], floor: list[float], games_per_cycle: int
) -> dict:
    """Forgetting, backward transfer, segment gains and plasticity trend of a PSNR matrix.

    `matrix[i][g]`: probe PSNR of game g at the end of segment i; `segment_games[i]`:
    the game trained in segment i; `floor[g]`: game g's mean-frame PSNR.
    - forgetting[g]: the best of R[i][g] over the rows before the last, from g's first
      trained segment on, minus R[last][g] (None when g has no such row);
    - bwt: the mean over every segment i but the last of R[last][g(i)] - R[i][g(i)];
    - segment_gain[i]: R[i][g(i)] - floor[g(i)];
    - plasticity_trend: the mean segment gain of the last cycle minus that of the first.
    """
    last = len(matrix) - 1
    forgetting = []
    for g in range(len(floor)):
        rows = range(segment_games.index(g), last) if g in segment_games else range(0)
        forgetting.append(max(matrix[i][g] for i in rows) - matrix[last][g] if rows else None)
    bwt = [matrix[last][segment_games[i]] - matrix[i][segment_games[i]] for i in range(last)]
    gains = [matrix[i][segment_games[i]] - floor[segment_games[i]] for i in range(len(matrix))]
    first, final = gains[:games_per_cycle], gains[-games_per_cycle:]
    return {
        "forgetting": forgetting,
        "bwt": sum(bwt) / len(bwt) if bwt else None,
        "segment_gain": gains,
        "plasticity_trend": sum(final) / len(final) - sum(first) / len(first),
    }

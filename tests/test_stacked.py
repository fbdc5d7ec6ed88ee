"""K stacked streams against K single learners on real frames of four games."""

import pytest
import torch
from conftest import ale_frames

from autoencoder import StreamingAutoEncoder
from model import ModelConfig
from optim import OPTIMIZERS
from utils import preprocess_frame

GAMES = ("Breakout", "Assault", "SpaceInvaders", "Pacman")


@pytest.fixture(scope="module")
def game_frames() -> dict[str, list]:
    return {game: ale_frames(game, 50, seed=i) for i, game in enumerate(GAMES)}


def singles_and_stack(config: ModelConfig, optimizer: str, count: int = len(GAMES)):
    """`count` single learners of different initial weights, and a stack of their twins
    (weights and optimizer state: UPGD's noise generators are optimizer state)."""
    singles = []
    for seed in range(count):
        torch.manual_seed(seed)
        singles.append(StreamingAutoEncoder(config, optimizer=optimizer))
    twins = []
    for model in singles:
        twin = StreamingAutoEncoder(config, optimizer=optimizer)
        twin.load_state_dict(model.state_dict())
        twin.optimizer.load_state_dict(model.optimizer.state_dict())
        twins.append(twin)
    return singles, StreamingAutoEncoder.stack(twins)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def inputs(game_frames, step: int, dtype=torch.float32) -> list[torch.Tensor]:
    return [preprocess_frame(game_frames[game][step]).to(dtype) for game in GAMES]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_one_stacked_update_is_each_streams_own_update_in_float32(game_frames, optimizer):
    singles, stacked = singles_and_stack(ModelConfig(latent_bits=0), optimizer)
    for step in range(2):  # the second update also reads each stream's optimizer state and previous frame
        frames = [game_frames[game][step] for game in GAMES]
        expected = [model.update_params(frame) for model, frame in zip(singles, frames)]
        results = stacked.update_params(frames)
    assert results["loss"].shape == results["skipped"].shape == (len(GAMES),)
    assert results["reconstruction"].shape == (len(GAMES), 3, 224, 224)
    for k, (model, alone) in enumerate(zip(singles, expected)):
        ours = stacked.stream_results(results, k)
        assert relative(stacked.flat_params[k], model.flat_params) < 1e-5
        assert relative(ours["reconstruction"], alone["reconstruction"]) < 1e-5
        assert ours["loss"].item() == pytest.approx(alone["loss"].item(), rel=1e-5)
        # the L1 term's gradient is sign(error), which flips wherever an error is within float32
        # rounding of zero (black pixels): the gradient's norms agree less closely than the weights
        assert ours["step_size"].item() == pytest.approx(alone["step_size"].item(), rel=1e-3)
        assert ours["grad_norm"].item() == pytest.approx(alone["grad_norm"].item(), rel=1e-3)
        assert torch.equal(ours["change_mask"], alone["change_mask"])
        assert int(ours["step"]) == alone["step"] == 2


def test_every_optional_layer_stacks(game_frames):
    """Attention and its linear layers, the residual block, branch heads, encoder layer norm,
    in float64 (in float32 a first adaptive step moves each weight by about lr whichever
    sign its tiny gradient rounds to)."""
    torch.set_default_dtype(torch.float64)
    try:
        config = ModelConfig(
            latent_bits=0, use_transformer=True, use_residual=True, branch_heads=True, encoder_layer_norm=True
        )
        singles, stacked = singles_and_stack(config, "obgd-adaptive", count=2)
        for step in range(2):
            frames = inputs(game_frames, step, torch.float64)[:2]
            expected = [model.update_params(x) for model, x in zip(singles, frames)]
            results = stacked.update_params(torch.cat(frames))
        for k, (model, alone) in enumerate(zip(singles, expected)):
            assert relative(stacked.flat_params[k], model.flat_params) < 1e-9
            assert relative(results["reconstruction"][k], alone["reconstruction"][0]) < 1e-9
    finally:
        torch.set_default_dtype(torch.float32)


def test_fifty_stacked_updates_follow_the_single_learners(game_frames):
    """The default model (8-bit latents) and optimizer, 50 updates on four games. In
    float64: in float32 the stream itself is chaotic, and the same single learner run
    on one thread instead of two drifts apart as far as any reordered sum does
    (measured in docs/BENCHMARKS.md), so only float64 can show that the stacked update is
    the same computation."""
    torch.set_default_dtype(torch.float64)
    try:
        singles, stacked = singles_and_stack(ModelConfig(), "obgd-adaptive")
        for step in range(50):
            frames = inputs(game_frames, step, torch.float64)
            expected = [model.update_params(x) for model, x in zip(singles, frames)]
            results = stacked.update_params(torch.cat(frames))
            for b, latents in enumerate(results["embeddings"]):
                agree = torch.stack([latents[k] == alone["embeddings"][b][0] for k, alone in enumerate(expected)])
                assert agree.double().mean() >= 0.999, (step, b)
        for k, (model, alone) in enumerate(zip(singles, expected)):
            assert relative(stacked.flat_params[k], model.flat_params) < 1e-3
            assert relative(results["reconstruction"][k], alone["reconstruction"][0]) < 1e-3
        assert not results["skipped"].any()
    finally:
        torch.set_default_dtype(torch.float32)


def test_unstack_gives_each_stream_back_and_it_learns_on_alone(game_frames):
    singles, stacked = singles_and_stack(ModelConfig(), "adam", count=2)
    frames = [game_frames[game][0] for game in GAMES[:2]]
    for model, frame in zip(singles, frames):
        model.update_params(frame)
    stacked.update_params(frames)
    back = stacked.unstack()
    for model, returned in zip(singles, back):
        assert type(returned) is StreamingAutoEncoder and returned.step == model.step == 1
        assert relative(returned.flat_params, model.flat_params) < 1e-5
        saved, ours = model.optimizer.state_dict()["state"][0], returned.optimizer.state_dict()["state"][0]
        assert float(ours["step"]) == float(saved["step"]) == 1
        assert relative(ours["exp_avg_sq"], saved["exp_avg_sq"]) < 1e-5
        torch.testing.assert_close(returned.change_detector.previous, model.change_detector.previous)
    nxt = [game_frames[game][1] for game in GAMES[:2]]
    for model, returned, frame in zip(singles, back, nxt):
        expected, ours = model.update_params(frame), returned.update_params(frame)
        assert relative(ours["reconstruction"], expected["reconstruction"]) < 1e-5
        assert relative(returned.flat_params, model.flat_params) < 1e-5


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_nan_frame_skips_only_its_own_stream(game_frames, optimizer):
    singles, stacked = singles_and_stack(ModelConfig(), optimizer)
    first = torch.cat(inputs(game_frames, 0))
    stacked.update_params(first)
    for model, x in zip(singles, first):
        model.update_params(x[None])
    before = stacked.flat_params.detach().clone()
    frames = torch.cat(inputs(game_frames, 1))
    frames[2, :, :40] = float("nan")
    results = stacked.update_params(frames)
    assert results["skipped"].tolist() == [False, False, True, False]
    assert torch.equal(stacked.flat_params[2], before[2])
    for k, (model, x) in enumerate(zip(singles, frames)):
        alone = model.update_params(x[None])
        assert bool(alone["skipped"]) == (k == 2)
        assert relative(stacked.flat_params[k], model.flat_params) < 1e-5
        if k != 2:
            assert not torch.equal(stacked.flat_params[k], before[k])
    frames = torch.cat(inputs(game_frames, 2))
    after = stacked.update_params(frames)
    assert not after["skipped"].any() and torch.isfinite(stacked.flat_params).all()
    for k, (model, x) in enumerate(zip(singles, frames)):  # the skipped stream's state went on as its own
        model.update_params(x[None])
        assert relative(stacked.flat_params[k], model.flat_params) < 1e-4  # three updates: Adam's 1/sqrt(v) amplifies


@pytest.mark.parametrize(
    "second, message",
    [
        (dict(config=ModelConfig(latent_channels=4)), "config differs"),
        (dict(optimizer="adam"), "optimizer differs"),
        (dict(lr=0.5), "lr differs"),
        (dict(change_weight=2.0), "change_weight differs"),
    ],
)
def test_learners_that_differ_are_refused(second, message):
    first = StreamingAutoEncoder()
    other = StreamingAutoEncoder(**{"config": ModelConfig(), **second})
    with pytest.raises(ValueError, match=message):
        StreamingAutoEncoder.stack([first, other])


def test_noise_learners_and_stacks_are_refused():
    noisy = ModelConfig(latent_noise=True)
    with pytest.raises(ValueError, match="latent_noise"):
        StreamingAutoEncoder.stack([StreamingAutoEncoder(noisy), StreamingAutoEncoder(noisy)])
    stacked = StreamingAutoEncoder.stack([StreamingAutoEncoder(), StreamingAutoEncoder()])
    with pytest.raises(ValueError, match="already stacked"):
        StreamingAutoEncoder.stack([stacked])
    alone = StreamingAutoEncoder()
    assert StreamingAutoEncoder.stack([alone]) is alone and alone.unstack() == [alone] and alone.view(0) is alone


def test_a_view_scores_its_stream_with_the_current_weights(game_frames):
    singles, stacked = singles_and_stack(ModelConfig(), "obgd-adaptive", count=2)
    probes = torch.from_numpy(game_frames["Pacman"][10]).permute(2, 0, 1)[None]
    probes = torch.nn.functional.interpolate(probes.float(), size=(224, 224)).to(torch.uint8)
    for step in range(3):
        frames = [game_frames[game][step] for game in GAMES[:2]]
        stacked.update_params(frames)
        for model, frame in zip(singles, frames):
            model.update_params(frame)
    for k, model in enumerate(singles):
        torch.testing.assert_close(stacked.view(k).evaluate(probes), model.evaluate(probes), rtol=1e-4, atol=1e-7)

"""UPGD and Adam-Rel: hand computations of the published rules on a tiny network, K streams
against lone learners, cuts, and their state through save and load."""

import io

import numpy as np
import pytest
import torch
from torch import nn

from autoencoder import StreamingAutoEncoder
from model import ModelConfig
from optim import UPGD, AdamRel

# every layer a few channels wide: the float64 checks cost milliseconds an update
TINY = ModelConfig(encoder_widths=(2, 2), decoder_width=4, upsampled_width=2, latent_bits=0)


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]], dtype=torch.float64) * (1 + 0.1 * step)
    return (model(x) - 0.3).square().mean()


def _gradients_at(theta: list[np.ndarray], step: int) -> list[np.ndarray]:
    """The loss gradient at parameters `theta`, from a separate copy of the model."""
    mirror = _tiny_model()
    for p, t in zip(mirror.parameters(), theta):
        p.data = torch.from_numpy(t.copy())
    _loss(mirror, step).backward()
    return [p.grad.numpy() for p in mirror.parameters()]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize(
    "lr, weight_decay, beta_utility, sigma",
    [(0.5, 0.0, 0.0, 0.0), (0.3, 0.01, 0.9, 0.0), (0.3, 0.01, 0.9, 0.2), (1e-5, 0.0, 0.0, 1.0)],
)
def test_upgd_matches_a_hand_computation_of_the_rule(lr, weight_decay, beta_utility, sigma):
    model = _tiny_model()
    optimizer = UPGD(model.parameters(), lr=lr, weight_decay=weight_decay, beta_utility=beta_utility, sigma=sigma)
    noise = torch.Generator().manual_seed(0)
    noise.set_state(optimizer.generators[0].get_state())  # the known state the optimizer draws from
    theta = [p.detach().numpy().copy() for p in model.parameters()]
    utility = [np.zeros_like(t) for t in theta]
    for step in range(1, 7):
        grads = _gradients_at(theta, step)
        utility = [beta_utility * u + (1 - beta_utility) * (-g * t) for u, g, t in zip(utility, grads, theta)]
        global_max = max(u.max() for u in utility)
        xi = [torch.randn(t.shape, generator=noise, dtype=torch.float64).numpy() for t in theta]
        scaled = [_sigmoid(u / (1 - beta_utility**step) / global_max) for u in utility]
        theta = [
            t * (1 - lr * weight_decay) - lr * (g + sigma * x) * (1 - s) for t, g, x, s in zip(theta, grads, xi, scaled)
        ]

        optimizer.zero_grad()
        _loss(model, step).backward()
        assert optimizer.step().item() == lr
        for p, t, u in zip(model.parameters(), theta, utility):
            np.testing.assert_allclose(p.detach().numpy(), t, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(optimizer.state[p]["avg_utility"].numpy(), u, rtol=1e-12, atol=1e-15)
    assert float(optimizer.state[next(model.parameters())]["step"]) == 6
    moved = max(np.abs(t - p.detach().numpy()).max() for t, p in zip(theta, _tiny_model().parameters()))
    assert moved > 10 * lr * 1e-3  # the weights did move: the comparison means something


def test_a_skipped_upgd_update_leaves_weights_and_state_as_they_were():
    model = _tiny_model()
    optimizer = UPGD(model.parameters(), lr=0.3, weight_decay=0.01, beta_utility=0.9, sigma=0.5)
    for step in range(3):
        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()
    weights = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()]
    for p in model.parameters():
        p.grad.zero_()  # what the learner hands on with finite False
    optimizer.update(torch.tensor(float("nan")), torch.tensor(False))
    for p, w, s in zip(model.parameters(), weights, state):
        assert torch.equal(p, w)
        assert all(torch.equal(optimizer.state[p][k], v) for k, v in s.items())


def test_upgd_with_a_zero_global_max_leaves_zero_utilities_at_one_half():
    """All utilities <= 0 with some exactly 0 (weights at zero): the global max is 0. A zero
    utility then scales to sigmoid(0) (the reference would divide 0 by 0: NaN weights)."""
    weight = nn.Parameter(torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    optimizer = UPGD([weight], lr=0.1, sigma=0.0)
    weight.grad = torch.tensor([[2.0, 3.0]], dtype=torch.float64)  # utilities -0 and -3
    optimizer.step()
    torch.testing.assert_close(
        weight.detach(), torch.tensor([[-0.1 * 2.0 * 0.5, 1.0 - 0.1 * 3.0 * 1.0]], dtype=torch.float64)
    )


@pytest.mark.parametrize("cut_after", [None, 3])
def test_adam_rel_matches_a_hand_computation_with_a_cut(cut_after):
    lr, beta1, beta2, eps = 0.05, 0.9, 0.999, 1e-8
    model = _tiny_model()
    optimizer = AdamRel(model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps)
    theta = [p.detach().numpy().copy() for p in model.parameters()]
    first = [np.zeros_like(t) for t in theta]
    second = [np.zeros_like(t) for t in theta]
    t_local = 0
    for step in range(1, 8):
        t_local += 1
        grads = _gradients_at(theta, step)
        first = [beta1 * m + (1 - beta1) * g for m, g in zip(first, grads)]
        second = [beta2 * v + (1 - beta2) * g**2 for v, g in zip(second, grads)]
        global_theta = [  # plain Adam's step from the same point, counting from the start
            t - lr * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
            for t, m, v in zip(theta, first, second)
        ]
        theta = [
            t - lr * (m / (1 - beta1**t_local)) / (np.sqrt(v / (1 - beta2**t_local)) + eps)
            for t, m, v in zip(theta, first, second)
        ]

        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()
        for p, t, m in zip(model.parameters(), theta, first):
            np.testing.assert_allclose(p.detach().numpy(), t, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(optimizer.state[p]["exp_avg"].numpy(), m, rtol=1e-12, atol=1e-15)
        if step == cut_after:
            optimizer.on_cut([0])
            t_local = 0
    assert float(optimizer.state[next(model.parameters())]["step"]) == 7 - (cut_after or 0)
    # the last step's local bias correction differs from global time's after a cut
    differs = max(np.abs(a - b).max() for a, b in zip(theta, global_theta)) > 1e-6
    assert differs == (cut_after is not None)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def frames(streams: int, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * step + streams)
    return torch.rand(streams, 3, 224, 224, generator=generator)


def lone_learners(optimizer: str, count: int = 3) -> list[StreamingAutoEncoder]:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append(StreamingAutoEncoder(TINY, optimizer=optimizer))
    return models


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("optimizer", ["upgd", "adam-rel"])
def test_three_streams_equal_three_lone_learners(float64, optimizer):
    """20 updates with a cut in stream 1 and a NaN frame in stream 2; then unstacked, each
    stream goes on as its lone learner."""
    singles = lone_learners(optimizer)
    stacked = StreamingAutoEncoder.stack(lone_learners(optimizer))
    for step in range(20):
        if step == 10:
            stacked.forget_previous_frame([1])
            singles[1].forget_previous_frame()
        x = frames(3, step)
        if step == 5:
            x[2, :, :40] = float("nan")
        results = stacked.update_params(x)
        for k, model in enumerate(singles):
            alone = model.update_params(x[k : k + 1])
            assert bool(alone["skipped"]) == bool(results["skipped"][k]) == (step == 5 and k == 2)
        for k, model in enumerate(singles):
            assert relative(stacked.flat_params[k], model.flat_params) < 1e-9, (step, k)
    if optimizer == "adam-rel":
        counts = stacked.optimizer.state[stacked.flat_params]["step"].tolist()
        assert counts == [20, 10, 19]  # the cut restarted stream 1; stream 2 skipped one
    for model, back in zip(singles, stacked.unstack()):
        for more in range(20, 22):
            x = frames(1, more)
            model.update_params(x)
            back.update_params(x)
        assert relative(back.flat_params, model.flat_params) < 1e-9


@pytest.mark.parametrize("optimizer", ["upgd", "adam-rel"])
def test_a_loaded_learner_continues_as_its_uninterrupted_twin(float64, optimizer):
    torch.manual_seed(0)
    learner = StreamingAutoEncoder(TINY, optimizer=optimizer)
    for step in range(3):
        learner.update_params(frames(1, step))
    learner.forget_previous_frame()
    learner.update_params(frames(1, 3))
    buffer = io.BytesIO()
    torch.save({"model": learner.state_dict(), "optimizer": learner.optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu", weights_only=True)  # as runtime.py loads a checkpoint
    torch.manual_seed(99)  # other weights and other noise seeds: everything must come from the save
    loaded = StreamingAutoEncoder(TINY, optimizer=optimizer)
    loaded.load_state_dict(saved["model"])
    loaded.optimizer.load_state_dict(saved["optimizer"])
    loaded.change_detector.previous = learner.change_detector.previous.clone()
    for step in range(4, 8):
        learner.update_params(frames(1, step))
        loaded.update_params(frames(1, step))
    assert torch.equal(loaded.flat_params, learner.flat_params)


def test_adam_rel_restarts_the_count_only_in_the_cut_stream(float64):
    learner = StreamingAutoEncoder.stack(lone_learners("adam-rel"))
    for step in range(4):
        learner.update_params(frames(3, step))
    state = learner.optimizer.state[learner.flat_params]
    moments = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    learner.forget_previous_frame([1])
    assert state["step"].tolist() == [4, 0, 4]
    assert torch.equal(state["exp_avg"], moments[0]) and torch.equal(state["exp_avg_sq"], moments[1])
    learner.update_params(frames(3, 4))
    assert state["step"].tolist() == [5, 1, 5]


def test_upgd_step_and_a_cut_never_sync_with_the_host(monkeypatch):
    model = _tiny_model()
    upgd, adam = UPGD(model.parameters(), sigma=0.1, beta_utility=0.9), AdamRel(model.parameters())
    _loss(model, 0).backward()

    def forbidden(*args, **kwargs):
        raise AssertionError("the optimizer synchronised with the host")

    for name in ("item", "__float__", "cpu", "tolist", "numpy", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    upgd.step()
    upgd.update(torch.tensor(1.0), torch.tensor(True))
    adam.step()
    adam.on_cut([0])

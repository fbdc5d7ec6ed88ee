import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from optim import AdaptiveObGD, ObGD, sparse_init_, sparse_init_model_


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]], dtype=torch.float64) * (1 + 0.1 * step)
    return (model(x) - 0.3).square().mean()


def _tiny_model_at(theta: list[np.ndarray]) -> nn.Module:
    mirror = _tiny_model()
    for p, t in zip(mirror.parameters(), theta):
        p.data = torch.from_numpy(t.copy())
    return mirror


def _gradients_at(theta: list[np.ndarray], step: int) -> list[np.ndarray]:
    """The loss gradient at parameters `theta`, from a separate copy of the model."""
    mirror = _tiny_model_at(theta)
    _loss(mirror, step).backward()
    return [p.grad.numpy() for p in mirror.parameters()]


@pytest.mark.parametrize("lr, expect_bound_active", [(1.0, True), (0.01, False)])
def test_obgd_matches_a_hand_computation_of_the_rule(lr, expect_bound_active):
    gamma, lamda, kappa = 0.99, 0.8, 2.0
    model = _tiny_model()
    optimizer = ObGD(model.parameters(), lr=lr, gamma=gamma, lamda=lamda, kappa=kappa)
    theta = [p.detach().numpy().copy() for p in model.parameters()]
    traces = [np.zeros_like(t) for t in theta]
    for step in range(5):
        grads = _gradients_at(theta, step)
        traces = [gamma * lamda * z + g for z, g in zip(traces, grads)]
        bound = lr * kappa * max(abs(1.0), 1.0) * sum(np.abs(z).sum() for z in traces)
        step_size = lr / bound if bound > 1 else lr
        assert (bound > 1) == expect_bound_active
        theta = [t - step_size * 1.0 * z for t, z in zip(theta, traces)]

        optimizer.zero_grad()
        _loss(model, step).backward()
        returned = optimizer.step()
        assert returned.item() == pytest.approx(step_size, rel=1e-12)
        for p, t in zip(model.parameters(), theta):
            np.testing.assert_allclose(p.detach().numpy(), t, rtol=1e-12, atol=1e-14)


def test_obgd_uses_the_pseudo_error_in_bound_and_step():
    model = _tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = ObGD(model.parameters(), lr=1.0)
    _loss(model, 0).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    step = optimizer.step(delta=-3.0)
    z_sum = sum(g.abs().sum() for g in grads)
    expected = 1.0 / max(1.0 * 2.0 * 3.0 * z_sum.item(), 1.0)
    assert step.item() == pytest.approx(expected)
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b + expected * 3.0 * g)


def test_obgd_traces_survive_a_state_dict_round_trip():
    model = _tiny_model()
    optimizer = ObGD(model.parameters())
    for step in range(3):
        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    clone = _tiny_model()
    clone.load_state_dict(model.state_dict())
    restored = ObGD(clone.parameters())
    restored.load_state_dict(saved)
    for p, q in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(optimizer.state[p]["trace"], restored.state[q]["trace"])
        assert optimizer.state[p]["trace"].abs().sum() > 0
    for opt, net in ((optimizer, model), (restored, clone)):
        opt.zero_grad()
        _loss(net, 3).backward()
        opt.step()
    for p, q in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(p, q)


def test_adaptive_obgd_resumes_its_step_count_in_place_from_new_and_old_checkpoints():
    """The bias correction's step count lives on the device, filled in place on load
    (a captured CUDA graph keeps reading it); checkpoints before it held an int."""
    model = _tiny_model()
    optimizer = AdaptiveObGD(model.parameters())
    for step in range(3):
        optimizer.zero_grad()
        loss = _loss(model, step)
        loss.backward()
        optimizer.step(loss=loss)
    weights, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    optimizer.zero_grad()
    loss = _loss(model, 3)
    loss.backward()
    optimizer.step(loss=loss)
    old_format = copy.deepcopy(saved)
    old_format["param_groups"][0]["count"] = 3
    for state in (saved, old_format):
        clone = _tiny_model()
        clone.load_state_dict(weights)
        restored = AdaptiveObGD(clone.parameters())
        count = restored.param_groups[0]["count"]
        restored.load_state_dict(copy.deepcopy(state))
        assert restored.param_groups[0]["count"] is count and count.item() == 3
        restored.zero_grad()
        loss = _loss(clone, 3)
        loss.backward()
        restored.step(loss=loss)
        for p, q in zip(model.parameters(), clone.parameters()):
            torch.testing.assert_close(p, q)


@pytest.mark.parametrize("optimizer_class", [ObGD, AdaptiveObGD])
def test_obgd_step_never_syncs_with_the_host(monkeypatch, optimizer_class):
    model = _tiny_model()
    optimizer = optimizer_class(model.parameters())
    _loss(model, 0).backward()

    def forbidden(*args, **kwargs):
        raise AssertionError("ObGD.step synchronised with the host")

    for name in ("item", "__float__", "cpu", "tolist", "numpy", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    optimizer.step()
    optimizer.step(delta=torch.tensor(0.5, dtype=torch.float64))


@pytest.mark.parametrize(
    "shape, unit_dim, fan_in", [((16, 8, 3, 3), 0, 72), ((10, 30), 0, 30), ((8, 12, 4, 4), 1, 128)]
)
def test_sparse_init_zeroes_half_of_each_units_fan_in(shape, unit_dim, fan_in):
    weight = torch.empty(shape)
    sparse_init_(weight, 0.5, unit_dim=unit_dim)
    units = weight.transpose(0, unit_dim).flatten(1)
    assert units.shape[1] == fan_in
    zero_fraction = (units == 0).float().mean(dim=1)
    assert torch.all((zero_fraction - 0.5).abs() <= 1 / fan_in)
    assert units.abs().max() <= 1 / fan_in**0.5
    assert units[units != 0].abs().min() > 0


def test_sparse_init_model_handles_transposed_convolutions_by_their_fan_in():
    model = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ConvTranspose2d(6, 4, 3), nn.Linear(7, 2))
    sparse_init_model_(model)
    transposed = model[1].weight  # (in=6, out=4, 3, 3): each of the 4 units has fan-in 54
    per_unit = transposed.transpose(0, 1).flatten(1)
    assert per_unit.abs().max() <= 1 / 54**0.5
    assert torch.all((per_unit == 0).sum(dim=1) == 27)
    assert all(m.bias.abs().sum() == 0 for m in model)


@pytest.mark.parametrize("lr, expect_bound_active", [(1.0, True), (1e-4, False)])
def test_adaptive_obgd_matches_a_hand_computation(lr, expect_bound_active):
    gamma, lamda, kappa, beta2, eps = 0.99, 0.8, 2.0, 0.999, 1e-8
    model = _tiny_model()
    optimizer = AdaptiveObGD(model.parameters(), lr=lr, gamma=gamma, lamda=lamda, kappa=kappa, beta2=beta2, eps=eps)
    theta = [p.detach().numpy().copy() for p in model.parameters()]
    traces = [np.zeros_like(t) for t in theta]
    second = [np.zeros_like(t) for t in theta]
    active = []
    for step in range(1, 5):
        grads = _gradients_at(theta, step)
        traces = [gamma * lamda * z + g for z, g in zip(traces, grads)]
        second = [beta2 * v + (1 - beta2) * z**2 for v, z in zip(second, traces)]
        direction = [z / (np.sqrt(v / (1 - beta2**step)) + eps) for z, v in zip(traces, second)]
        loss = _loss(_tiny_model_at(theta), step).item()
        effect = abs(sum((g * u).sum() for g, u in zip(grads, direction)))
        bound = lr * kappa * effect / loss
        step_size = lr / max(bound, 1.0)
        active.append(bound > 1)
        theta = [t - step_size * u for t, u in zip(theta, direction)]

        optimizer.zero_grad()
        loss_tensor = _loss(model, step)
        loss_tensor.backward()
        assert optimizer.step(loss=loss_tensor).item() == pytest.approx(step_size, rel=1e-10)
        for p, t in zip(model.parameters(), theta):
            np.testing.assert_allclose(p.detach().numpy(), t, rtol=1e-9, atol=1e-12)
    assert any(active) == expect_bound_active

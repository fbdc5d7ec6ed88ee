"""Methods through the protocol: hand computations of each published rule on a tiny network,
K streams against lone learners, unit resets, and a method's state through save and load."""

import copy

import pytest
import torch

from autoencoder import StreamingAutoEncoder
from loss import reconstruction_loss
from methods import METHODS, parse_options
from model import ModelConfig, hidden_layers

# every layer a few channels wide: the float64 checks cost milliseconds an update
TINY = ModelConfig(encoder_widths=(2, 2), decoder_width=4, upsampled_width=2, latent_bits=0)


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def frames(streams: int, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * step + streams)
    return torch.rand(streams, 3, 224, 224, generator=generator)


def learners(streams: int, config: ModelConfig = TINY, **kwargs) -> StreamingAutoEncoder:
    """`streams` lone learners seeded 0.., stacked (one stream: the lone learner)."""
    models = []
    for seed in range(streams):
        torch.manual_seed(seed)
        models.append(StreamingAutoEncoder(config, **kwargs))
    return StreamingAutoEncoder.stack(models)


def plain_twin(learner: StreamingAutoEncoder) -> StreamingAutoEncoder:
    """A learner without the method, in exactly `learner`'s state."""
    twin = StreamingAutoEncoder(
        learner.config, optimizer=learner.optimizer_name, lr=learner.lr, streams=learner.streams
    )
    twin.load_state_dict(learner.state_dict())
    twin.optimizer.load_state_dict(learner.optimizer.state_dict())
    if learner.change_detector is not None:
        twin.change_detector.load_state_dict(learner.change_detector.state_dict())
        twin.change_detector.previous = learner.change_detector.previous.clone()
    twin._cut = list(learner._cut)
    return twin


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("streams", [1, 3])
def test_shrink_perturb_matches_the_rule_by_hand(streams):
    shrink, sigma = 1e-2, 1e-3
    learner = learners(streams, method="shrink-perturb", method_options={"shrink": shrink, "sigma": sigma})
    for step in range(4):
        x = frames(streams, step)
        twin = plain_twin(learner)
        twin.update_params(x if streams > 1 else x[:1])
        generators = [torch.Generator().manual_seed(0) for _ in range(streams)]
        for g, state in zip(generators, learner.method.state_dict()["generator"]):
            g.set_state(state.clone())  # a row at an offset: set_state reads from its storage start
        noise = torch.stack([torch.randn(learner.rows(learner.flat_params).shape[1], generator=g) for g in generators])
        expected = (1 - shrink) * learner.rows(twin.flat_params.detach()) + sigma * noise
        learner.update_params(x if streams > 1 else x[:1])
        assert relative(learner.rows(learner.flat_params.detach()), expected) < 1e-12


@pytest.mark.parametrize("streams", [1, 3])
def test_l2_init_matches_the_rule_by_hand(streams):
    """SGD on loss + weight * ||theta - theta_0||^2: the gradient gains 2 * weight * (theta -
    theta_0), then the whole gradient is clipped at norm 1, per stream."""
    weight, lr = 0.05, 0.1
    config = ModelConfig(**{**TINY.__dict__, "use_change_detector": False})
    learner = learners(streams, config, optimizer="sgd", lr=lr, method="l2-init", method_options={"weight": weight})
    initial = learner.rows(learner.flat_params.detach()).clone()
    for step in range(4):
        x = frames(streams, step)
        twin = plain_twin(learner)
        reconstruction, _ = twin.network(x)
        reconstruction_loss(reconstruction, x, per_image=True)["loss"].sum().backward()
        theta = learner.rows(learner.flat_params.detach()).clone()
        grad = twin.rows(twin.flat_params.grad) + 2 * weight * (theta - initial)
        norm = grad.norm(dim=1, keepdim=True)
        expected = theta - lr * grad * torch.clamp(1.0 / (norm + 1e-6), max=1.0)
        learner.update_params(x if streams > 1 else x[:1])
        assert relative(learner.rows(learner.flat_params.detach()), expected) < 1e-12
    assert torch.equal(learner.method.initial, initial)  # theta_0 stays the initial weights


@pytest.mark.parametrize(
    "method, options", [("shrink-perturb", {"shrink": 1e-3, "sigma": 1e-3}), ("l2-init", {"weight": 1e-2})]
)
def test_three_stacked_streams_equal_three_lone_learners(method, options):
    alone = [learners(1, method=method, method_options=options, optimizer="obgd-adaptive") for _ in range(3)]
    for seed, model in enumerate(alone):  # each lone learner seeded as stream `seed` of the stack
        torch.manual_seed(seed)
        fresh = StreamingAutoEncoder(TINY, method=method, method_options=options)
        model.load_state_dict(fresh.state_dict())
        model.method.load_state_dict(fresh.method.state_dict())
    stacked = learners(3, method=method, method_options=options)
    for step in range(20):
        x = frames(3, step)
        for k, model in enumerate(alone):
            model.update_params(x[k : k + 1])
        stacked.update_params(x)
    for k, model in enumerate(alone):
        assert relative(stacked.flat_params[k], model.flat_params) < 1e-9
    for k, back in enumerate(stacked.unstack()):  # and each stream's state comes back whole
        assert torch.equal(back.flat_params, stacked.flat_params[k].detach())
        for key, value in back.method.state_dict().items():
            assert torch.equal(value, model_state(alone[k], key))


def model_state(model: StreamingAutoEncoder, key: str) -> torch.Tensor:
    return model.method.state_dict()[key]


@pytest.mark.parametrize("method", ["shrink-perturb", "l2-init"])
def test_a_loaded_learner_continues_as_its_uninterrupted_twin(method):
    learner = learners(1, method=method)
    for step in range(3):
        learner.update_params(frames(1, step))
    saved = copy.deepcopy(
        {
            "model": learner.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "method": learner.method.state_dict(),
        }
    )
    torch.manual_seed(99)  # another initialisation and other draws: everything must come from the save
    loaded = StreamingAutoEncoder(TINY, method=method)
    loaded.load_state_dict(saved["model"])
    loaded.optimizer.load_state_dict(saved["optimizer"])
    loaded.method.load_state_dict(saved["method"])
    loaded.change_detector.previous = learner.change_detector.previous.clone()
    for step in range(3, 6):
        learner.update_params(frames(1, step))
        loaded.update_params(frames(1, step))
    assert torch.equal(loaded.flat_params, learner.flat_params)


@pytest.mark.parametrize("streams", [1, 2])
def test_a_unit_reset_leaves_the_output_and_other_units_state_alone(streams):
    """With layer norm off, a unit whose outgoing weights are zero is silent: re-drawing its
    incoming weights leaves the network's output on any frames as it was with those outgoing
    weights zeroed by hand, and only the chosen units' optimizer state is cleared."""
    config = ModelConfig(**{**TINY.__dict__, "use_layer_norm": False})
    learner = learners(streams, config, optimizer="obgd-adaptive")
    for step in range(3):
        learner.update_params(frames(streams, step) if streams > 1 else frames(1, step))
    state = {name: tensor.clone() for name, tensor in learner.optimizer.state[learner.flat_params].items()}
    weights = learner.flat_params.detach().clone()
    modules = dict(learner.network.named_modules())
    with torch.no_grad():
        for spec in hidden_layers(config).values():
            learner.rows(modules[spec.read_by].weight)[0, :, 0] = 0.0  # unit 0 of stream 0, silenced by hand
    probe = frames(streams, 9) if streams > 1 else frames(1, 9)
    before = learner.network(probe)[0]
    with torch.no_grad():
        learner.flat_params.copy_(weights)  # the reset itself must silence them
    for layer, spec in hidden_layers(config).items():
        units = torch.zeros(streams, learner.rows(modules[spec.read_by].weight).shape[2], dtype=torch.bool)
        units[0, 0] = True
        learner.reset_units(layer, units if streams > 1 else units[0], lambda shape, fan_in: torch.full(shape, 0.3))
    torch.testing.assert_close(learner.network(probe)[0], before, rtol=0, atol=0)
    touched = touched_mask(learner)
    for name, tensor in learner.optimizer.state[learner.flat_params].items():
        assert state[name][touched].any() and not tensor[touched].any()
        assert torch.equal(tensor[~touched], state[name][~touched])
    assert torch.equal(learner.flat_params.detach()[~touched], weights[~touched])


def touched_mask(learner: StreamingAutoEncoder) -> torch.Tensor:
    """Every element of a produced unit's incoming weights and bias and of its outgoing weights."""
    touched = torch.zeros_like(learner.flat_params, dtype=torch.bool)
    modules = dict(learner.network.named_modules())
    for spec in hidden_layers(learner.config).values():
        produced, read = modules[spec.produced_by], modules[spec.read_by]
        learner.rows(learner._flat_view(touched, produced.weight))[0, : spec.group] = True
        learner.rows(learner._flat_view(touched, produced.bias))[0, : spec.group] = True
        learner.rows(learner._flat_view(touched, read.weight))[0, :, 0] = True
    return touched


def test_options_parse_with_their_types_and_refuse_unknown_keys():
    assert parse_options("shrink-perturb", ["shrink=0.5"]).shrink == 0.5
    assert parse_options("l2-init", {"weight": "1e-3"}).weight == 1e-3
    with pytest.raises(ValueError, match="no option 'nope'"):
        parse_options("l2-init", ["nope=1"])
    with pytest.raises(ValueError, match="unknown method"):
        parse_options("nope", [])
    assert {"none", "shrink-perturb", "l2-init"} <= set(METHODS)

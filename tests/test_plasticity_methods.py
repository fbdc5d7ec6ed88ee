"""Continual backprop and ReDo: each against a hand computation of its published rule on the
tiny network over several steps, K stacked streams against lone learners, a unit reset that
leaves the output alone, and the method's state through save and load."""

import copy
import math

import pytest
import torch
from test_methods import TINY, frames, learners, plain_twin, relative

from autoencoder import StreamingAutoEncoder
from methods import METHODS, parse_options
from model import ModelConfig, hidden_layers

CBP = {"replacement_rate": 0.3, "maturity_threshold": 2, "decay_rate": 0.5}
REDO = {"threshold": 0.6, "every": 3}


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def batch(streams: int, step: int) -> torch.Tensor:
    x = frames(streams, step)
    return x if streams > 1 else x[:1]


def parts(learner: StreamingAutoEncoder) -> dict:
    """Each hidden layer's producing and reading convolution, by layer name."""
    modules = dict(learner.network.named_modules())
    return {
        name: (modules[spec.produced_by], modules[spec.read_by], spec.group)
        for name, spec in hidden_layers(learner.config).items()
    }


def step_beside_a_twin(learner: StreamingAutoEncoder, x: torch.Tensor):
    """This update's hidden activations (before the step), and a plain twin after the same
    update without the method; then the learner's own update."""
    twin = plain_twin(learner)
    with torch.no_grad():
        hidden, _ = twin.network.hidden_activations(x)
    twin.update_params(x)
    results = learner.update_params(x)
    return hidden, twin, results


def replaced_units(learner, twin) -> dict[str, torch.Tensor]:
    """(K, C) per layer: the units whose bias the reset zeroed (every other bias is the twin's)."""
    chosen = {}
    for (name, (produced, _, group)), (_, (twin_produced, _, _)) in zip(parts(learner).items(), parts(twin).items()):
        bias, twin_bias = learner.rows(produced.bias), twin.rows(twin_produced.bias)
        changed = (bias != twin_bias).view(bias.shape[0], -1, group)
        assert (bias.view_as(changed)[changed] == 0).all()
        chosen[name] = changed.all(2)
        assert torch.equal(changed.any(2), chosen[name])  # a unit's group of channels goes together
    return chosen


def check_reset(learner, twin, chosen: dict, bound, zero_wins: bool = False) -> int:
    """The chosen units' incoming weights re-drawn inside the bound, their outgoing weights zero
    (where they are also a chosen unit's incoming weights: zero if `zero_wins`, else re-drawn),
    every other weight the twin's. Returns how many units were chosen."""
    touched = torch.zeros_like(learner.flat_params, dtype=torch.bool)
    layers = parts(learner)
    producers = {layer[0]: name for name, layer in layers.items()}
    for name, (produced, read, group) in layers.items():
        units = chosen[name]
        outputs = units.repeat_interleave(group, dim=1)
        incoming = learner.rows(produced.weight)[outputs]
        fan_in = incoming[0].numel() if len(incoming) else 1
        assert (incoming.abs() <= bound(produced, fan_in)).all()
        assert incoming.flatten(1).ne(0).any(1).all()
        learner.rows(learner._flat_view(touched, produced.weight))[outputs] = True
        outgoing = learner.rows(read.weight).transpose(1, 2)[units]  # (n, out, kh, kw)
        redrawn = torch.zeros_like(learner.rows(read.weight), dtype=torch.bool)
        if (
            read in producers and not zero_wins
        ):  # the reader's rows of chosen units were re-drawn after (CBP) or before (ReDo)
            later = chosen[producers[read]].repeat_interleave(layers[producers[read]][2], dim=1)
            redrawn = later[:, :, None, None, None].expand_as(redrawn)
        kept = ~redrawn.transpose(1, 2)[units]
        assert (outgoing[kept] == 0).all()
        learner.rows(learner._flat_view(touched, read.weight)).transpose(1, 2)[units] = True
        learner.rows(learner._flat_view(touched, produced.bias))[outputs] = True
    assert torch.equal(learner.flat_params.detach()[~touched], twin.flat_params.detach()[~touched])
    return int(sum(u.sum() for u in chosen.values()))


def cbp_bound(produced, fan_in):
    return math.sqrt(1 / fan_in)


def glorot_bound(produced, fan_in):
    out, _, kh, kw = produced.weight.shape[-4:]
    return math.sqrt(6 / (fan_in + out * kh * kw))


@pytest.mark.parametrize("streams", [1, 3])
def test_continual_backprop_matches_the_rule_by_hand(streams):
    """u <- d u + (1 - d) mean|w_out| mean|h|, ranked as u / (1 - d^age); the accumulator of
    rate x mature units gives how many; the least useful mature units are replaced."""
    rate, maturity, decay = CBP["replacement_rate"], CBP["maturity_threshold"], CBP["decay_rate"]
    learner = learners(streams, method="cbp", method_options=CBP)
    names = list(hidden_layers(TINY))
    widths = {name: learner.rows(read.weight).shape[2] for name, (_, read, _) in parts(learner).items()}
    utility = {name: torch.zeros(streams, c) for name, c in widths.items()}
    age = {name: torch.zeros(streams, c, dtype=torch.long) for name, c in widths.items()}
    accumulated = [[0.0] * len(names) for _ in range(streams)]
    replaced = 0
    for step in range(8):
        x = batch(streams, step)
        hidden, twin, results = step_beside_a_twin(learner, x)
        expected_chosen, total = {}, torch.zeros(streams)
        for i, (name, (_, read, _)) in enumerate(parts(twin).items()):
            age[name] += 1
            outgoing = twin.rows(read.weight).abs().mean(dim=(1, 3, 4))
            utility[name] = decay * utility[name] + (1 - decay) * outgoing * hidden[name].abs().mean(dim=(2, 3))
            corrected = utility[name] / (1 - decay ** age[name].double())
            total += corrected.sum(1)
            mask = torch.zeros(streams, widths[name], dtype=torch.bool)
            for k in range(streams):
                mature = [u for u in range(widths[name]) if age[name][k, u] > maturity]
                accumulated[k][i] += rate * len(mature)
                n = int(accumulated[k][i])
                accumulated[k][i] -= n
                for u in sorted(mature, key=lambda u: corrected[k, u].item())[:n]:
                    mask[k, u] = True
            expected_chosen[name] = mask
        state = learner.method.state_dict()
        for name in names:
            mask = expected_chosen[name]
            torch.testing.assert_close(state[f"utility/{name}"][~mask], utility[name][~mask], rtol=1e-12, atol=0)
            utility[name][mask], age[name][mask] = 0.0, 0
            torch.testing.assert_close(state[f"utility/{name}"], utility[name], rtol=1e-12, atol=0)
            assert torch.equal(state[f"age/{name}"], age[name])
        chosen = replaced_units(learner, twin)
        for name in names:
            assert torch.equal(chosen[name], expected_chosen[name]), (step, name)
        count = check_reset(learner, twin, chosen, cbp_bound)
        replaced += count
        units_reset = learner.rows(results["method"]["units_reset"])
        assert units_reset.sum().item() == count
        torch.testing.assert_close(learner.rows(results["method"]["utility_mean"]), total / sum(widths.values()))
        assert torch.allclose(torch.tensor(accumulated), torch.tensor(learner.method.accumulated))
    assert replaced >= 4 * streams  # the rule was exercised


@pytest.mark.parametrize("streams", [1, 3])
def test_redo_matches_the_rule_by_hand(streams):
    """s_i = E|h_i| / mean_k E|h_k| over the updates since the last recycling; every F steps the
    units with s_i <= tau are recycled (Glorot-uniform incoming weights, zero outgoing)."""
    tau, every = REDO["threshold"], REDO["every"]
    learner = learners(streams, method="redo", method_options=REDO)
    names = list(hidden_layers(TINY))
    sums = {name: 0.0 for name in names}
    seen = 0
    recycled = 0
    for step in range(1, 8):
        x = batch(streams, step)
        hidden, twin, results = step_beside_a_twin(learner, x)
        seen += 1
        dormant, count = {}, torch.zeros(streams)
        for name in names:
            sums[name] = sums[name] + hidden[name].abs().mean(dim=(2, 3))
            mean = sums[name] / seen
            score = mean / mean.mean(dim=1, keepdim=True)
            dormant[name] = score <= tau
            count += dormant[name].sum(1)
        fraction = learner.rows(results["method"]["dormant_fraction"])
        torch.testing.assert_close(fraction, count / sum(d.shape[1] for d in dormant.values()))
        chosen = replaced_units(learner, twin)
        if step % every == 0:
            for name in names:
                assert torch.equal(chosen[name], dormant[name]), (step, name)
            sums, seen = {name: 0.0 for name in names}, 0
            assert learner.method.frames.eq(0).all()
        else:
            for name in names:
                assert not chosen[name].any()
            for name, score in learner.method.scores().items():
                torch.testing.assert_close(score, (sums[name] / seen) / (sums[name] / seen).mean(1, keepdim=True))
        recycled += check_reset(learner, twin, chosen, glorot_bound, zero_wins=True)
        assert learner.rows(results["method"]["units_reset"]).sum().item() == sum(
            c.sum().item() for c in chosen.values()
        )
    assert recycled >= streams  # the rule was exercised


@pytest.mark.parametrize("method, options", [("cbp", CBP), ("redo", REDO)])
def test_three_stacked_streams_equal_three_lone_learners(method, options):
    """The lone learners first learn 0, 2 and 5 frames, so their streams replace units at
    different steps once stacked."""
    alone = []
    for seed, before in enumerate([0, 2, 5]):
        torch.manual_seed(seed)
        alone.append(StreamingAutoEncoder(TINY, method=method, method_options=options))
        for step in range(before):
            alone[-1].update_params(frames(1, 100 + step))
    stacked = StreamingAutoEncoder.stack(alone)
    resets = torch.zeros(3)
    for step in range(20):
        x = frames(3, step)
        for k, model in enumerate(alone):
            model.update_params(x[k : k + 1])
        resets += stacked.update_params(x)["method"]["units_reset"]
    assert (resets > 0).all()
    for k, model in enumerate(alone):
        assert relative(stacked.flat_params[k], model.flat_params) < 1e-9
    for k, back in enumerate(stacked.unstack()):
        for key, value in back.method.state_dict().items():
            torch.testing.assert_close(value, alone[k].method.state_dict()[key], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method, options", [("cbp", CBP), ("redo", REDO)])
@pytest.mark.parametrize("streams", [1, 2])
def test_a_reset_leaves_the_output_and_other_units_optimizer_state_alone(method, options, streams):
    """With layer norm off, the reset units are silent: the output on other frames is the
    twin's with the chosen units' outgoing weights zeroed by hand, and only the chosen units'
    optimizer state is cleared."""
    config = ModelConfig(**{**TINY.__dict__, "use_layer_norm": False})
    learner = learners(streams, config, optimizer="obgd-adaptive", method=method, method_options=options)
    probe = frames(2, 99)
    checked = 0
    for step in range(6):
        twin = plain_twin(learner)
        twin.update_params(batch(streams, step))
        learner.update_params(batch(streams, step))
        chosen = replaced_units(learner, twin)
        if not any(c.any() for c in chosen.values()):
            continue
        touched = torch.zeros_like(learner.flat_params, dtype=torch.bool)
        with torch.no_grad():
            for name, (produced, read, group) in parts(twin).items():
                twin.rows(read.weight).transpose(1, 2)[chosen[name]] = 0.0
                outputs = chosen[name].repeat_interleave(group, dim=1)
                twin.rows(twin._flat_view(touched, read.weight)).transpose(1, 2)[chosen[name]] = True
                twin.rows(twin._flat_view(touched, produced.weight))[outputs] = True
                twin.rows(twin._flat_view(touched, produced.bias))[outputs] = True
        for k in range(streams):
            torch.testing.assert_close(
                learner.view(k).network(probe)[0], twin.view(k).network(probe)[0], rtol=0, atol=0
            )
        mine, theirs = learner.optimizer.state[learner.flat_params], twin.optimizer.state[twin.flat_params]
        for name, tensor in mine.items():
            if tensor.shape == learner.flat_params.shape:
                assert not tensor[touched].any()
                assert torch.equal(tensor[~touched], theirs[name][~touched])
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("method, options", [("cbp", CBP), ("redo", REDO)])
def test_a_loaded_learner_continues_as_its_uninterrupted_twin(method, options):
    learner = learners(1, method=method, method_options=options)
    for step in range(4):
        learner.update_params(frames(1, step))
    saved = copy.deepcopy(
        {
            "model": learner.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "method": learner.method.state_dict(),
        }
    )
    torch.manual_seed(99)  # another initialisation and other draws: everything must come from the save
    loaded = StreamingAutoEncoder(TINY, method=method, method_options=options)
    loaded.load_state_dict(saved["model"])
    loaded.optimizer.load_state_dict(saved["optimizer"])
    loaded.method.load_state_dict(saved["method"])
    loaded.change_detector.previous = learner.change_detector.previous.clone()
    loaded.step = learner.step
    resets = 0
    for step in range(4, 10):
        resets += learner.update_params(frames(1, step))["method"]["units_reset"].item()
        loaded.update_params(frames(1, step))
    assert resets > 0
    assert torch.equal(loaded.flat_params, learner.flat_params)
    for key, value in learner.method.state_dict().items():
        assert torch.equal(loaded.method.state_dict()[key], value)


def test_options_parse_with_their_types_and_bad_values_are_refused():
    options = parse_options("cbp", ["replacement_rate=1e-3", "maturity_threshold=50", "decay_rate=0"])
    assert (options.replacement_rate, options.maturity_threshold, options.decay_rate) == (1e-3, 50, 0.0)
    assert parse_options("redo", {"threshold": "0.05", "every": "200"}) == METHODS["redo"].Options(0.05, 200)
    with pytest.raises(ValueError, match="decay_rate"):
        StreamingAutoEncoder(TINY, method="cbp", method_options={"decay_rate": 1.0})
    with pytest.raises(ValueError, match="every"):
        StreamingAutoEncoder(TINY, method="redo", method_options={"every": 0})

"""Methods against forgetting and loss of plasticity: one file each, behind one protocol.

A method is a `Method` subclass registered under a name with `@register_method` in a
module of this package. Importing the package imports every module in it, so a new
method is one new file: `--method NAME` in main.py and `--methods` in bench.py find it,
and its `Options` dataclass gives its hyper-parameters.

The learner builds the method beside its optimizer and calls it inside every update,
on the device (no hook may wait for the host):

1. `loss(learner)`: a term per stream added to the loss learned from (None: nothing);
2. `before_step(learner, finite)`: after the gradient is clipped, before the optimizer;
3. `after_step(learner, finite, hidden)`: after the optimizer, with every hidden layer's
   activation from the update's own forward pass when `reads_activations` is set; it
   returns statistics, one value per stream (K,), logged to TensorBoard as `method/<name>`;
4. `on_cut(streams)`: a cut (a game switch) in those streams.

Every per-stream value works on rows: `learner.rows(t)` gives a tensor with its leading
stream dimension (K, ...) whatever K is. A method's state is `state_dict()`, tensors
with that leading dimension, so the checkpoint keeps it and `stack`/`unstack` concatenate
and slice it. `learner.reset_units(layer, mask, draw)` re-initialises chosen units of a
hidden layer (incoming weights re-drawn, outgoing weights zeroed, their optimizer state
cleared).
"""

import dataclasses
import importlib
import pkgutil

import torch


class Method:
    """The protocol, and the method `none`: every hook does nothing."""

    name = "none"
    reads_activations = False

    @dataclasses.dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, learner, options: "Method.Options"):
        self.options = options
        self.streams = learner.streams

    def loss(self, learner) -> torch.Tensor | None:
        return None

    def before_step(self, learner, finite: torch.Tensor) -> None:
        pass

    def after_step(self, learner, finite: torch.Tensor, hidden: dict | None) -> dict[str, torch.Tensor]:
        return {}

    def on_cut(self, streams: list[int]) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


METHODS: dict[str, type[Method]] = {"none": Method}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` available as `cls.name`."""
    METHODS[cls.name] = cls
    return cls


def parse_options(name: str, pairs: dict[str, object] | list[str] | None) -> Method.Options:
    """The method's Options from `{"key": value}` or `["key=value", ...]` (values as text are
    converted to each field's type); ValueError naming the problem otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    options = METHODS[name].Options
    fields = {f.name: f for f in dataclasses.fields(options)}
    if isinstance(pairs, (list, tuple)):
        split = [pair.partition("=") for pair in pairs]
        if any(not sep for _, sep, _ in split):
            raise ValueError(f"method options are KEY=VALUE pairs, got {' '.join(pairs)!r}")
        pairs = {key: value for key, _, value in split}
    values = {}
    for key, value in (pairs or {}).items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise ValueError(f"method {name!r} has no option {key!r} (its options: {known})")
        kind = type(fields[key].default)
        try:
            values[key] = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"method option {key}={value!r} is not a {kind.__name__}") from None
    return options(**values)


def make_method(name: str, learner, options: object = None) -> Method:
    """The method `name` for `learner`, its options an Options instance, a dict or KEY=VALUE texts."""
    if name not in METHODS or not isinstance(options, METHODS[name].Options):
        options = parse_options(name, options)
    return METHODS[name](learner, options)


def stream_generators(streams: int, device: torch.device) -> list[torch.Generator]:
    """One generator per stream, each seeded from the global RNG, so that torch.manual_seed
    makes a method's draws reproducible."""
    return [torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,)))) for _ in range(streams)]


def generator_states(generators: list[torch.Generator]) -> torch.Tensor:
    return torch.stack([g.get_state() for g in generators])


def load_generator_states(generators: list[torch.Generator], states: torch.Tensor) -> None:
    for g, saved in zip(generators, states):
        g.set_state(saved.clone())  # a row at an offset: set_state reads from its storage start


def uniform_rows(shape: tuple, bound: float, generators: list[torch.Generator], drawing) -> torch.Tensor:
    """(K, *shape[1:]) float64: uniform in +-bound for each stream k with `drawing[k]`, from its
    own generator; zeros for the others, which draw nothing (so a stream's draws do not
    depend on the other streams)."""
    rows = []
    for draws, g in zip(drawing, generators):
        if draws:
            rows.append(
                torch.rand(shape[1:], generator=g, device=g.device, dtype=torch.float64).mul_(2 * bound).sub_(bound)
            )
        else:
            rows.append(torch.zeros(shape[1:], device=g.device, dtype=torch.float64))
    return torch.stack(rows)


def stack_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K methods' states (each with a leading dimension of 1) as one K-stream state."""
    return {key: torch.cat([state[key] for state in states]) for key in states[0]}


def stream_state(state: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    return {key: value[k : k + 1].clone() for key, value in state.items()}


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

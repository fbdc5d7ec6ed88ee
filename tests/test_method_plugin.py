"""A method added as one new file in methods/, and nothing else edited, runs everywhere:
in main.py (resumed mid-run with its state intact), in bench.py continual packed two streams
to a learner, and through stack and unstack."""

import importlib
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from helpers import call_main, main_env, read_scalars, run_main

PLUGIN = '''
from dataclasses import dataclass

import torch

from methods import Method, register_method


@register_method
class StepCount(Method):
    """Counts each stream's updates, `increment` at a time (a test's method)."""

    name = "step-count"

    @dataclass(frozen=True)
    class Options:
        increment: float = 1.0

    def __init__(self, learner, options):
        super().__init__(learner, options)
        self.count = torch.zeros(self.streams, device=learner.device)

    def after_step(self, learner, finite, hidden):
        self.count += self.options.increment
        return {"count": self.count.clone()}

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count.copy_(state["count"])
'''

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin():
    path = ROOT / "methods" / "step_count_plugin.py"
    path.write_text(PLUGIN)
    try:
        yield importlib.import_module("methods.step_count_plugin")
    finally:
        path.unlink()
        sys.modules.pop("methods.step_count_plugin", None)


def test_main_runs_and_resumes_it_with_its_state(plugin, tmp_path):
    flags = [
        "--game",
        "Breakout",
        "--seed",
        "3",
        "--window",
        "off",
        "--eval-every",
        "0",
        "--checkpoint",
        "ck.pth",
        "--log-dir",
        "runs/plugin",
    ]
    first = run_main([*flags, "--steps", "4", "--method", "step-count", "--method-option", "increment=2"], tmp_path)
    assert first.returncode == 0, first.stderr
    checkpoint = torch.load(tmp_path / "ck.pth", weights_only=True)
    assert checkpoint["method_state"]["count"].tolist() == [8.0]
    assert checkpoint["architecture"]["method"] == "step-count"
    resumed = run_main([*flags, "--steps", "6"], tmp_path)  # method and options from the checkpoint
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(tmp_path / "ck.pth", weights_only=True)["method_state"]["count"].tolist() == [12.0]
    counts = {e.step: e.value for e in read_scalars(tmp_path / "runs" / "plugin").Scalars("method/count")}
    assert counts == {step: 2.0 * step for step in range(1, 7)}
    other = call_main([*flags, "--steps", "8", "--method", "none"], tmp_path)
    assert other.returncode == 2 and "contradicts the checkpoint's step-count" in other.stderr


def test_bench_continual_packs_two_of_its_streams(plugin):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench.py"),
            "continual",
            "--games",
            "Breakout",
            "Pacman",
            "--switch-every",
            "3",
            "--cycles",
            "1",
            "--seeds",
            "0",
            "1",
            "--methods",
            "step-count",
            "--method-option",
            "increment=0.5",
            "--streams",
            "2",
            "--eval-every",
            "0",
            "--probe-frames",
            "2",
            "--json",
        ],
        cwd=ROOT,
        env=main_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])["results"]
    assert [(r["method"], r["method_options"], r["seed"]) for r in rows] == [
        ("step-count", {"increment": 0.5}, 0),
        ("step-count", {"increment": 0.5}, 1),
    ]
    assert "seed 0,1" in result.stderr  # one progress bar: both seeds in one stacked learner


def test_its_state_follows_stack_and_unstack(plugin):
    from autoencoder import StreamingAutoEncoder

    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(StreamingAutoEncoder(method="step-count"))
    models[1].method.count.fill_(10)
    stacked = StreamingAutoEncoder.stack(models)
    frames = [torch.rand(1, 3, 224, 224) for _ in range(2)]
    for _ in range(3):
        results = stacked.update_params(torch.cat(frames))
    assert results["method"]["count"].tolist() == [3.0, 13.0]
    alone = stacked.unstack()
    assert [m.method.count.tolist() for m in alone] == [[3.0], [13.0]]
    assert alone[1].update_params(frames[1])["method"]["count"].item() == 14.0

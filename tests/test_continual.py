"""Schedules, probe sets, scoring without an update, plasticity metrics and forgetting summaries."""

import copy
import math
import signal

import numpy as np
import pytest
import torch
from helpers import read_scalars, run_main
from torch import nn

import continual
import main
import observers
import stream
from autoencoder import StreamingAutoEncoder, create_streaming_ae
from continual import dormant_fraction, effective_rank, forgetting_summary, scoring, upgd_plasticity
from model import PixelChangeDetector
from optim import register_optimizer
from stream import Schedule, probe_frames
from utils import preprocess_frame


def test_schedule_plays_each_game_for_its_segment_and_cycles():
    schedule = Schedule(("Breakout", "Pacman", "Assault"), 3)
    played = [schedule.game_at(t) for t in range(1, 20)]
    assert played == ["Breakout"] * 3 + ["Pacman"] * 3 + ["Assault"] * 3 + ["Breakout"] * 3 + ["Pacman"] * 3 + [
        "Assault"
    ] * 3 + ["Breakout"]
    assert schedule.position(5) == "Pacman (2/3, 2/3)"


def _events(log_dir) -> list[tuple[int, str]]:
    accumulator = read_scalars(log_dir)
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors("events/text_summary")]


@pytest.mark.slow
def test_a_schedule_resumed_mid_segment_plays_the_same_game_at_the_same_step(tmp_path):
    args = [
        "--game",
        "Breakout,Pong,Assault",
        "--switch-every",
        "10",
        "--seed",
        "3",
        "--window",
        "off",
        "--eval-every",
        "0",
        "--log-dir",
        "runs/s",
    ]
    first = run_main([*args, "--steps", "15"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert torch.load(tmp_path / "quick_demo_model.pth", weights_only=True)["game"] == "Pong"
    second = run_main(["--steps", "35", "--window", "off"], tmp_path)  # the schedule comes from the checkpoint
    assert second.returncode == 0, second.stderr
    saved = torch.load(tmp_path / "quick_demo_model.pth", weights_only=True)
    assert saved["step"] == 35 and saved["game"] == "Breakout"
    assert saved["schedule"] == {"games": ["Breakout", "Pong", "Assault"], "switch_every": 10}
    assert _events(tmp_path / "runs" / "s") == [
        (11, "switched to Pong at step 11"),
        (21, "switched to Assault at step 21"),
        (31, "switched to Breakout at step 31"),
    ]


def test_probe_sets_repeat_for_a_seed_and_differ_between_games_and_seeds():
    a, b = probe_frames("Breakout", 4, 6), probe_frames("Breakout", 4, 6)
    assert a.shape == (6, 3, 224, 224) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, probe_frames("Breakout", 5, 6))
    assert stream.probe_seed(4, "Breakout") != stream.probe_seed(4, "Pong")
    assert stream.probe_seed(4, "Breakout") not in {stream.env_seed(4, step) for step in range(100_000)}


def test_probe_frames_skip_after_each_reset_and_keep_every_eighth(monkeypatch):
    """A fake env whose frame is its step count since the last reset, ending every 100 steps."""

    class CountingEnv:
        def __init__(self):
            self.t = 0
            self.action_space = type("Space", (), {"sample": lambda self: 0})()

        def frame(self):
            return np.full((210, 160, 3), self.t, np.uint8)

        def reset(self):
            self.t = 0
            return self.frame(), {}

        def step(self, action):
            self.t += 1
            return self.frame(), 0.0, self.t == 100, False, {}

        def close(self):
            pass

    monkeypatch.setattr(stream, "make_env", lambda game, seed: (env := CountingEnv(), env.reset()[0]))
    kept = probe_frames("Breakout", 0, 8)[:, 0, 0, 0].tolist()
    assert kept == [60, 68, 76, 84, 92, 60, 68, 76]  # an episode end at 100 resets and skips 60 again


@pytest.mark.slow
def test_no_probe_frame_reaches_update_params_or_the_change_detector(tmp_path, monkeypatch):
    trained, detected, probe_raw = [], [], []
    real_make_env, real_frame_for = stream.make_env, stream.FrameStream.frame_for
    probe_seeds = {stream.probe_seed(2, g) for g in ("Breakout", "Pong")}

    def make_env(game, seed):
        env, frame = real_make_env(game, seed)
        if seed in probe_seeds:  # record every frame a probe env yields
            real_step = env.step
            env.step = lambda action: (out := real_step(action), probe_raw.append(out[0]))[0]
            probe_raw.append(frame)
        return env, frame

    served = []
    monkeypatch.setattr(stream, "make_env", make_env)
    monkeypatch.setattr(
        stream.FrameStream,
        "frame_for",
        lambda self, step: (out := real_frame_for(self, step), served.append(out[0]))[0],
    )
    real_update, real_detect = StreamingAutoEncoder.update_params, PixelChangeDetector.forward
    monkeypatch.setattr(
        StreamingAutoEncoder,
        "update_params",
        lambda self, frame, **kw: (trained.append(frame), real_update(self, frame, **kw))[1],
    )
    monkeypatch.setattr(
        PixelChangeDetector, "forward", lambda self, frame: (detected.append(frame), real_detect(self, frame))[1]
    )
    scorings = []
    real_scoring = observers.scoring
    monkeypatch.setattr(observers, "scoring", lambda *a: (scorings.append(a[0].step), real_scoring(*a))[1])
    monkeypatch.chdir(tmp_path)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main.run(
            [
                "--game",
                "Breakout,Pong",
                "--switch-every",
                "6",
                "--steps",
                "12",
                "--seed",
                "2",
                "--eval-every",
                "4",
                "--probe-frames",
                "3",
                "--window",
                "off",
                "--log-dir",
                "runs/p",
            ]
        )
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 0
    assert scorings == [0, 4, 8, 12] and len(probe_raw) >= 2 * 78  # per set: the reset frame, 60 skipped, 2 x 8 more
    assert len(trained) == len(detected) == 12  # scoring called neither
    assert all(t is s for t, s in zip(trained, served))  # every update learned a training-stream frame
    probe_ids = {id(f) for f in probe_raw}
    assert not probe_ids & {id(f) for f in trained}
    tags = read_scalars(tmp_path / "runs" / "p").Tags()["scalars"]
    assert {
        "probe/psnr/Breakout",
        "probe/psnr/Pong",
        "probe/floor/Breakout",
        "probe/floor/Pong",
        "plasticity/upgd",
        "plasticity/dormant_fraction",
        "plasticity/effective_rank",
        "plasticity/weight_l2",
        "plasticity/grad_l2",
    } <= set(tags)


@pytest.mark.slow
def test_probe_sets_are_the_same_whether_resumed_or_not(tmp_path):
    """The floors are logged once per set: at the start, and on a resume that changes the schedule."""
    args = ["--seed", "8", "--window", "off", "--eval-every", "5", "--probe-frames", "4"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert (
        run_main([*args, "--game", "Breakout", "--steps", "5", "--log-dir", "runs/a"], tmp_path / "a").returncode == 0
    )
    assert (
        run_main([*args, "--game", "Breakout,Pong", "--steps", "10", "--log-dir", "runs/a"], tmp_path / "a").returncode
        == 0
    )
    assert (
        run_main([*args, "--game", "Breakout,Pong", "--steps", "10", "--log-dir", "runs/b"], tmp_path / "b").returncode
        == 0
    )
    resumed = read_scalars(tmp_path / "a" / "runs" / "a")
    straight = read_scalars(tmp_path / "b" / "runs" / "b")
    breakout = [(e.step, e.value) for e in resumed.Scalars("probe/floor/Breakout")]
    assert [step for step, _ in breakout] == [0, 5] and breakout[0][1] == breakout[1][1]
    assert breakout[0][1] == straight.Scalars("probe/floor/Breakout")[0].value
    assert resumed.Scalars("probe/floor/Pong")[0].value == straight.Scalars("probe/floor/Pong")[0].value
    psnr_steps = [e.step for e in resumed.Scalars("probe/psnr/Breakout")]
    assert psnr_steps == [0, 5, 10]  # the resumed start (step 5) is not logged twice


def _trained(frames):
    torch.manual_seed(0)
    model = create_streaming_ae()
    for frame in frames[:5]:
        results = model.update_params(frame)
    return model, results


@pytest.fixture
def learner(breakout_frames):
    return _trained(breakout_frames)


def test_scoring_leaves_weights_optimizer_and_change_detector_untouched(learner, breakout_frames):
    model, results = learner
    twin, _ = _trained(breakout_frames)
    probes = {
        "Breakout": torch.cat([preprocess_frame(f).mul(255).round().to(torch.uint8) for f in breakout_frames[20:26]])
    }
    before = copy.deepcopy(model.state_dict()), copy.deepcopy(model.optimizer.state_dict())
    previous = model.change_detector.previous.clone()
    tags = scoring(model, probes, "Breakout", results)
    assert 5 < tags["probe/psnr/Breakout"] < 60
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before[0].values()))
    for i, state in model.optimizer.state_dict()["state"].items():
        assert all(torch.equal(v, before[1]["state"][i][k]) for k, v in state.items() if torch.is_tensor(v))
    assert torch.equal(model.change_detector.previous, previous)
    assert model.flat_params.grad.abs().sum() > 0  # the last update's gradient, not zeroed by scoring
    after, expected = model.update_params(breakout_frames[6]), twin.update_params(breakout_frames[6])
    assert torch.equal(after["loss"], expected["loss"]) and torch.equal(model.flat_params, twin.flat_params)


def test_evaluate_scores_each_frame_as_a_forward_pass_does(learner, breakout_frames):
    model, _ = learner
    frames = torch.cat([preprocess_frame(f) for f in breakout_frames[10:13]])
    with torch.no_grad():
        expected = [(model(frames[i : i + 1])[0] - frames[i : i + 1]).square().mean().item() for i in range(3)]
    np.testing.assert_allclose(model.evaluate(frames, chunk=2).numpy(), expected, rtol=1e-5)


def test_upgd_plasticity_of_a_step_that_halves_the_loss():
    """L(w) = (w - 1)^2 from w = 0; one SGD step of lr (1 - 1/sqrt 2) / 2 lands where L = 1/2."""
    w = torch.zeros((), requires_grad=True)
    before = (w - 1).square()
    before.backward()
    with torch.no_grad():
        w -= (1 - 1 / math.sqrt(2)) / 2 * w.grad
    after = (w.detach() - 1).square()
    assert after.item() == pytest.approx(0.5)
    assert upgd_plasticity(before.detach(), after).item() == pytest.approx(0.5)
    assert upgd_plasticity(torch.tensor(1.0), torch.tensor(3.0)).item() == 0.0  # a step that hurts: clamped


def test_learner_upgd_is_one_minus_the_loss_ratio_on_the_frame_just_learned(learner):
    model, results = learner
    after = model.loss_on(results["input"], results["change_mask"])
    metrics = continual.plasticity_metrics(model, results["input"].mul(255).round().to(torch.uint8), results)
    assert metrics["plasticity/upgd"] == pytest.approx(max(0.0, 1 - after.item() / results["loss"].item()), abs=1e-6)
    assert metrics["plasticity/grad_l2"] == pytest.approx(results["grad_norm"].item())
    assert metrics["plasticity/weight_l2"] == pytest.approx(
        math.sqrt(sum(p.detach().double().square().sum().item() for p in model.parameters())), rel=1e-5
    )


def test_dormant_fraction_finds_a_dead_and_a_weak_unit():
    """ReLU(conv1x1) with channel weights (1, 2, 0.1, 0) and bias (0, 0, 0, -1) on positive inputs:
    E|h| = (1, 2, 0.1, 0) E[x], so the scores are (1, 2, 0.1, 0) / 0.775 = (1.29, 2.58, 0.129, 0):
    one dead unit of 4, and the weak one dormant only at a threshold of 0.2."""
    conv = nn.Conv2d(1, 4, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, 0.1, 0.0]).view(4, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -1.0]))
    x = torch.rand(5, 1, 6, 6) + 0.5
    h = torch.relu(conv(x))
    assert dormant_fraction({"layer": h}) == pytest.approx(1 / 4)
    weak = torch.ones(2, 3, 4, 4) * torch.tensor([1.0, 1.0, 0.05]).view(1, 3, 1, 1)  # 0.05 / (2.05 / 3) = 0.073
    assert dormant_fraction({"layer": h, "weak": weak}) == pytest.approx(2 / 7)
    assert dormant_fraction({"layer": h}, threshold=0.2) == pytest.approx(2 / 4)  # 0.129 <= 0.2


def test_effective_rank_of_rank_one_and_hand_computed_spectra():
    u, v = torch.randn(3, 1, 5, 5), torch.randn(1, 4, 1, 1)
    assert effective_rank(u * v) == pytest.approx(1.0, abs=1e-4)  # every row a multiple of v: rank 1
    spectrum = torch.zeros(2, 2, 1, 2)  # rows (frame, position) x columns (channel): singular values 3 and 1
    spectrum[0, 0, 0, 0], spectrum[1, 1, 0, 1] = 3.0, 1.0
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    assert effective_rank(spectrum) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-9)


def test_forgetting_bwt_gains_and_trend_from_a_hand_made_matrix():
    """Two games A, B, two cycles: segments train A, B, A, B."""
    matrix = [
        [20.0, 10.0],  # after segment 0 (A)
        [15.0, 25.0],  # after 1 (B)
        [22.0, 18.0],  # after 2 (A)
        [17.0, 26.0],
    ]  # after 3 (B), the last
    summary = forgetting_summary(matrix, [0, 1, 0, 1], floor=[12.0, 14.0], games_per_cycle=2)
    assert summary["forgetting"] == [22.0 - 17.0, 25.0 - 26.0]  # A: best of rows 0-2; B: best of rows 1-2
    assert summary["bwt"] == pytest.approx(((17 - 20) + (26 - 25) + (17 - 22)) / 3)
    assert summary["segment_gain"] == [8.0, 11.0, 10.0, 12.0]
    assert summary["plasticity_trend"] == pytest.approx((10 + 12) / 2 - (8 + 11) / 2)
    untrained = forgetting_summary([[20.0, 10.0]], [0], floor=[12.0, 14.0], games_per_cycle=2)
    assert untrained["forgetting"] == [None, None] and untrained["bwt"] is None


class SignDescent:
    """A fifth optimizer, written only against the protocol: theta <- theta - lr * sign(grad)."""

    def __init__(self, params, lr: float = 1e-3):
        self.params, self.lr = list(params), lr

    @torch.no_grad()
    def update(self, loss, finite):
        for p in self.params:
            p.sub_(self.lr * finite.float() * p.grad.sign())
        return finite.new_full((), self.lr, dtype=torch.float32)

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass


def test_a_fifth_optimizer_registered_through_the_protocol_learns_in_update_params(monkeypatch, breakout_frames):
    import optim

    monkeypatch.setitem(optim.OPTIMIZERS, "sign-descent", None)
    register_optimizer("sign-descent", SignDescent, 1e-3, "sign of the gradient (a test)")
    torch.manual_seed(0)
    model = create_streaming_ae(optimizer="sign-descent")
    before = model.flat_params.detach().clone()
    results = model.update_params(breakout_frames[5])
    expected = before - 1e-3 * model.flat_params.grad.sign()
    assert torch.equal(model.flat_params.detach(), expected) and results["step_size"].item() == pytest.approx(1e-3)
    losses = [model.update_params(breakout_frames[5])["loss"].item() for _ in range(60)]
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])
    main.validate(main.parse_args(["--optimizer", "sign-descent"])[0])  # the flag accepts it too

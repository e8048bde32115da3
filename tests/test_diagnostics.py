"""Gradient diagnostics on the real model, objective and digits data: verdicts, tags, hooks, figures."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlpkit.data import build_data
from mlpkit.diagnostics import GradientMonitor
from mlpkit.model import build_model
from mlpkit.objective import build_objective
from mlpkit.verdicts import Thresholds
from tests.conftest import assembled

ROOT = Path(__file__).resolve().parent.parent
DEEP = [64] * 8
OK, NONFINITE = "ok", "nonfinite"


@pytest.fixture(scope="module")
def digits():
    data = build_data({"source": "digits", "val_fraction": 0.15, "test_fraction": 0.15})
    objective = build_objective("auto", "auto", data.task, data.name, data.n_classes, data.n_targets)
    return data, objective


@pytest.fixture(autouse=True)
def one_thread():
    # tiny networks: threads cost more than they give, and the suite must be quick on 2 cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(digits, activation, hidden_sizes, *, init="default", steps=20, lr=1e-3, weight_scale=1.0,
          every_n_steps=2, thresholds=Thresholds(), **monitor_options):
    """The trainer's protocol with the monitor, exactly as documented; checks the hooks on the way."""
    data, objective = digits
    torch.manual_seed(0)
    model = build_model(data.in_features, objective.out_features, hidden_sizes, activation, {}, objective.head,
                        init=init)
    with torch.no_grad():
        for layer in model.linear_layers().values():
            layer.weight.mul_(weight_scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    monitor = GradientMonitor(model, thresholds=thresholds, **monitor_options)
    statuses = []
    for step in range(steps):
        rows = torch.arange(step * 64, (step + 1) * 64) % len(data.train)
        measured = step % every_n_steps == 0
        if measured:
            monitor.watch(step)
        else:
            assert all(not m._forward_hooks for m in model.modules()), f"a hook outside log step {step}"
        loss = objective.loss(model.logits(data.train.x[rows]), data.train.y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if measured:
            statuses.append(OK if monitor.measure(step, loss).finite else NONFINITE)
            assert all(not m._forward_hooks for m in model.modules()), f"a hook left after step {step}"
            if statuses[-1] == NONFINITE:
                break
        optimizer.step()
        if measured:
            monitor.after_update(step)
    health = monitor.finish(every_n_steps)
    return health, statuses, model, monitor


def logged_trainer(digits, log_dir, activation, *overrides, histogram_every_n_steps=0, figure_every_n_steps=0):
    """A 32-16 network on digits with the monitor and a TensorBoard logger, as a run wires them."""
    from mlpkit.tensorboard import TensorBoardLogger

    data, _ = digits
    logger = TensorBoardLogger(log_dir)
    trainer = assembled("model.hidden_sizes=[32,16]", f"activation={activation}", "optimizer.fused=null",
                        f"diagnostics.histogram_every_n_steps={histogram_every_n_steps}",
                        f"diagnostics.figure_every_n_steps={figure_every_n_steps}", *overrides, data=data,
                        logger=logger).trainer
    return trainer, logger


def test_deep_sigmoid_is_vanishing_and_says_so_once(digits):
    health, statuses, _, _ = train(digits, "sigmoid", DEEP, steps=24)
    assert set(statuses) == {OK}
    assert list(health["verdicts"]) == ["vanishing"]
    verdict = health["verdicts"]["vanishing"]
    assert verdict["step"] == 8  # patience 5 intervals of 2 steps: steps 0, 2, 4, 6, 8
    assert "linear1" in verdict["message"] and "linear9" in verdict["message"]
    assert verdict["layers"]["linear1"]["grad_ratio"] < 1e-3 * verdict["layers"]["linear9"]["grad_ratio"]
    assert "\n" not in verdict["message"] and "try a relu-family activation" in verdict["message"]
    assert health["healthy"] is False and health["first_last_grad_ratio"]["median"] < 1e-4


@pytest.mark.parametrize("hidden_sizes, init", [(DEEP, "kaiming_normal"), ([128, 64], "default")],
                         ids=["deep-relu-kaiming", "shallow-relu"])
def test_relu_networks_are_not_vanishing(digits, hidden_sizes, init):
    health, statuses, _, _ = train(digits, "relu", hidden_sizes, init=init, steps=40)
    assert set(statuses) == {OK}
    assert health["healthy"] is True and health["verdicts"] == {}
    assert health["first_last_grad_ratio"]["min"] > 30 * Thresholds().vanishing_ratio


@pytest.mark.parametrize("cause", ["init", "learning_rate"])
def test_nonfinite_gradients_are_exploding_and_stop_before_the_step(digits, cause):
    options = {"weight_scale": 1e6} if cause == "init" else {"lr": 1e9}
    health, statuses, model, monitor = train(digits, "relu", DEEP, init="kaiming_normal", steps=20,
                                             every_n_steps=1, **options)
    assert statuses[-1] == NONFINITE and statuses.count(NONFINITE) == 1
    assert list(health["verdicts"]) == ["exploding"]
    assert "non-finite" in health["verdicts"]["exploding"]["message"]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was never applied
    json.dumps(health)  # metrics.json can hold it


def test_growth_past_the_threshold_for_patience_steps_is_exploding():
    from mlpkit.verdicts import Verdicts

    verdicts = Verdicts(Thresholds(exploding_growth=10.0, patience=3), "relu", "relu")

    def layers(norm):
        return {"linear1": {"grad_norm": norm, "grad_ratio": 1.0}, "linear2": {"grad_norm": norm, "grad_ratio": 1.0}}

    # the early steps set the reference (their largest total norm, 2*sqrt(2)); one spike is not enough
    for step, norm in enumerate([1.0, 2.0, 1.5, 50.0, 1.0, 50.0, 50.0]):
        assert verdicts.update(step, 0.5, layers(norm)) == []
    lines = verdicts.update(7, 0.5, layers(50.0))
    assert len(lines) == 1 and "25x its early value 2.83" in lines[0] and "lower optimizer.lr" in lines[0]
    assert verdicts.report(1)["verdicts"]["exploding"]["step"] == 7


def test_steps_without_the_statistics_neither_break_nor_make_a_dead_streak():
    from mlpkit.verdicts import Verdicts

    verdicts = Verdicts(Thresholds(patience=3), "relu", "relu")
    light = {"linear1": {"grad_norm": 1.0, "grad_ratio": 1e-6}, "linear2": {"grad_norm": 1.0, "grad_ratio": 1.0}}
    full = {name: {**entry, "dead_frac": 0.9} for name, entry in light.items()}
    lines = [verdicts.update(step, 0.5, full if step % 2 == 0 else light) for step in range(6)]
    assert lines[:4] == [[], [], [], []]  # the second step with statistics, and the steps between them
    assert len(lines[4]) == 1 and lines[4][0].startswith("dead relu units: 90%")  # the third in a row
    assert lines[5] == []  # dead units explain the small first-layer gradient: no vanishing line
    assert list(verdicts.report(1)["verdicts"]) == ["dead"]


def test_dead_relus_and_saturated_units(digits):
    dead, _, _, _ = train(digits, "relu", DEEP, init="kaiming_normal", steps=30, lr=0.1)
    assert "dead" in dead["verdicts"]
    assert max(v["dead_frac"] for v in dead["verdicts"]["dead"]["layers"].values() if "dead_frac" in v) > 0.75
    saturated, _, _, _ = train(digits, "sigmoid", [64, 64], steps=12, weight_scale=10.0,
                               thresholds=Thresholds(saturated_derivative=0.5))
    assert list(saturated["verdicts"]) == ["saturated"]
    assert saturated["last"]["layers"]["linear1"]["saturation"] > 0.2


@pytest.mark.parametrize("activation, precision", [("relu", "32"), ("leaky", "32"), ("tanh", "32"),
                                                   ("hardtanh", "32"), ("relu", "bf16-mixed")])
def test_activation_statistics_are_those_of_the_batch(digits, activation, precision):
    """act_mean, act_std, dead_frac, saturation and derivative of each hidden layer equal the same
    figures computed directly from its outputs (and inputs), on a batch of 50 rows; under bf16
    autocast too, where the outputs are bfloat16."""
    from mlpkit.acceleration import autocast
    from mlpkit.activations import SATURATED_BELOW

    data, objective = digits
    torch.manual_seed(0)
    model = build_model(data.in_features, objective.out_features, [32, 16], activation, {}, objective.head)
    with torch.no_grad():
        model.linear1.bias.sub_(2.0)  # some linear1 units below 0 for every row: dead where ReLU
    monitor = GradientMonitor(model)
    seen = {}
    for name, module in model.activation_after().items():
        module.register_forward_hook(lambda module, args, output, name=name: seen.__setitem__(
            name, (args[0].detach().float(), output.detach().float())))
    monitor.watch(0)
    with autocast(torch.device("cpu"), precision):
        loss = objective.loss(model.logits(data.train.x[:50]), data.train.y[:50])
    loss.backward()
    layers = monitor.measure(0, loss).layers
    for name, (pre, out) in seen.items():
        assert out.dtype == torch.float32 and out.shape[0] == 50
        assert layers[name]["act_mean"] == pytest.approx(out.mean().item(), rel=1e-5, abs=1e-7)
        assert layers[name]["act_std"] == pytest.approx(out.std(correction=0).item(), rel=1e-4)
        if activation in ("tanh", "hardtanh"):
            share = 1 - out * out if activation == "tanh" else ((pre > -1) & (pre < 1)).float()  # f' / max f'
            assert layers[name]["saturation"] == pytest.approx((share < SATURATED_BELOW).float().mean().item())
            assert layers[name]["derivative"] == pytest.approx(share.mean().item(), rel=1e-5)
            assert "dead_frac" not in layers[name]
        else:
            assert layers[name]["dead_frac"] == pytest.approx((out == 0).all(0).float().mean().item())
    if activation == "relu":
        assert layers["linear1"]["dead_frac"] > 0  # the test can tell a dead unit from a live one
    if activation == "hardtanh":
        assert 0 < layers["linear1"]["saturation"] < 1  # some inputs inside [-1, 1], some outside


def test_a_unit_is_dead_after_patience_batches_of_zeros_and_a_tiny_output_keeps_it_alive(digits):
    """dead_frac counts the units that output 0 for every sample of the last ``patience`` measured
    batches: a unit that output 1e-10 is alive, and one that output something on one batch of the
    window stays alive until that batch leaves it."""
    data, objective = digits
    model = build_model(data.in_features, objective.out_features, [4], "relu", {}, objective.head)
    monitor = GradientMonitor(model, thresholds=Thresholds(patience=3))
    with torch.no_grad():
        model.linear1.weight.zero_()  # each unit outputs relu(its bias) for every row
    dead = measure_dead(monitor, model, objective, data, range(6), [0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    # units 2 and 4 (bias 0 and -1) are dead, but unit 2 output 1 on the third batch
    assert dead == [0.5, 0.5, 0.25, 0.25, 0.25, 0.5]


def measure_dead(monitor, model, objective, data, steps, second_biases):
    dead = []
    for step, second_bias in zip(steps, second_biases):
        with torch.no_grad():
            model.linear1.bias.copy_(torch.tensor([1e-10, second_bias, 1.0, -1.0]))
        monitor.watch(step)
        loss = objective.loss(model.logits(data.train.x[:32]), data.train.y[:32])
        loss.backward()
        dead.append(monitor.measure(step, loss).layers["linear1"]["dead_frac"])
    return dead


def test_the_dead_unit_window_and_streaks_go_into_a_checkpoint_and_come_back(digits, tmp_path):
    """A resumed run's monitor continues the dead-unit window of the measured batches before the
    checkpoint (the batches of the same test above, split at its third); a checkpoint from before
    the window was saved starts it afresh."""

    data, objective = digits
    model = build_model(data.in_features, objective.out_features, [4], "relu", {}, objective.head)
    with torch.no_grad():
        model.linear1.weight.zero_()
    before = GradientMonitor(model, thresholds=Thresholds(patience=3))
    assert measure_dead(before, model, objective, data, range(3), [0.0, 0.0, 1.0]) == [0.5, 0.5, 0.25]
    torch.save(before.state_dict(), tmp_path / "monitor.pt")

    after = GradientMonitor(model, thresholds=Thresholds(patience=3))
    after.load_state_dict(torch.load(tmp_path / "monitor.pt", weights_only=True))  # as checkpoints are loaded
    assert measure_dead(after, model, objective, data, range(3, 6), [0.0, 0.0, 0.0]) == [0.25, 0.25, 0.5]
    assert after.verdicts.measurements == 6

    old = GradientMonitor(model, thresholds=Thresholds(patience=3))
    old.load_state_dict({"verdicts": before.verdicts.state()})  # a checkpoint from before the window was in it
    assert measure_dead(old, model, objective, data, [3], [0.0]) == [0.5]  # the window starts afresh


@pytest.mark.slow
def test_tensorboard_tags_layout_histograms_figures(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mlpkit.diagnostics import layout
    from mlpkit.figures import log_gradient_flow

    trainer, logger = logged_trainer(digits, tmp_path, "relu", "trainer.max_epochs=1", "trainer.batch_size=128",
                                     "trainer.log_every_n_steps=2", histogram_every_n_steps=4, figure_every_n_steps=4)
    logger.log_layout(layout())
    monitor = trainer.monitor
    health = trainer.fit()["gradient_health"]  # 1257 rows: 10 steps
    log_gradient_flow(logger, tmp_path, monitor, "relu")
    logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                                            "tensors": 0})
    events.Reload()
    tags = events.Tags()
    layers = ("linear1", "linear2", "linear3")
    for measure in ("grad_norm", "grad_norm_bias", "grad_ratio", "update_ratio"):
        assert {f"{measure}/{layer}" for layer in layers} <= set(tags["scalars"])
    for measure in ("act_mean", "act_std", "dead_frac"):  # hidden layers only; dead units: ReLU family
        assert {f"{measure}/linear1", f"{measure}/linear2"} <= set(tags["scalars"])
    assert not any(t.startswith(("saturation/", "derivative/")) for t in tags["scalars"])
    assert [e.step for e in events.Scalars("loss/train")] == [0, 2, 4, 6, 8]  # the loop writes the loss
    assert [e.step for e in events.Scalars("grad_norm/linear1")] == [0, 2, 4, 6, 8]
    assert [e.step for e in events.Scalars("update_ratio/linear1")] == [0, 2, 4, 6, 8]  # from the first step
    assert all(0 < e.value < 1 for e in events.Scalars("update_ratio/linear1"))
    assert {"weights/linear1", "gradients/linear3", "activations/linear2"} <= set(tags["histograms"])
    assert [e.step for e in events.Histograms("weights/linear1")] == [0, 4, 8]
    assert [e.step for e in events.Images("gradient_flow")] == [0, 4, 8]
    assert "custom_scalars__config__" in tags["tensors"]
    assert any(t.startswith("gradient_health/summary") for t in tags["tensors"])
    png = tmp_path / "gradient_flow.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert health["last"]["step"] == 8 and math.isfinite(health["last"]["layers"]["linear1"]["update_ratio"])
    assert health["judged"] is True and health["measurements"] == 5


@pytest.mark.slow
def test_matplotlib_is_imported_only_to_draw():
    code = "import sys, mlpkit.diagnostics, mlpkit.figures; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_experiment_composes_each_variant():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        sweep = compose("train", overrides=["experiment=vanishing_gradients"],
                        return_hydra_config=True)
        assert set(sweep.hydra.sweeper.params.variant.split(",")) == {"sigmoid", "tanh", "relu"}
        expected = {"sigmoid": "default", "tanh": "default", "relu": "kaiming_normal"}
        for variant, init in expected.items():
            cfg = compose("train", overrides=["experiment=vanishing_gradients",
                                              f"variant={variant}"])
            assert (cfg.activation.name, cfg.model.init) == (variant, init)
            assert list(cfg.model.hidden_sizes) == [64] * 8 and cfg.data.source == "digits"
            assert Thresholds.from_mapping(cfg.diagnostics) == Thresholds()


@pytest.mark.parametrize("key, value", [("vanishing_ratio", 0), ("patience", 0), ("dead_fraction", 1.5)])
def test_bad_threshold_names_the_key(key, value):
    from mlpkit.errors import ConfigError

    with pytest.raises(ConfigError, match=f"diagnostics.{key}={value} is not valid"):
        Thresholds.from_mapping({key: value})


@pytest.mark.parametrize("total_steps, interval", [(9, 1), (60, 1), (99, 1), (400, 8), (1000, 20), (10_000, 200)])
def test_auto_interval_gives_at_least_50_points_or_every_step(total_steps, interval):
    from mlpkit.settings import log_interval

    assert log_interval("auto", total_steps) == interval
    assert len(range(0, total_steps, interval)) >= min(50, total_steps)
    assert log_interval(7, total_steps) == 7


@pytest.mark.slow
def test_a_default_length_run_has_50_points_on_every_curve(digits, tmp_path):
    from tests.conftest import read_scalars

    trainer, logger = logged_trainer(digits, tmp_path, "tanh", "trainer.max_epochs=20",
                                     "trainer.batch_size=64")  # 400 steps, auto
    trainer.fit()
    logger.close()
    scalars = read_scalars(tmp_path)
    # the statistics (statistics_every=auto) come on every third logged step of a run that logs 50
    for prefix, points_at_least in (("loss/train", 50), ("grad_norm/", 50), ("grad_ratio/", 50),
                                    ("update_ratio/", 16), ("derivative/", 16), ("act_mean/", 16)):
        curves = [points for tag, points in scalars.items()
                  if tag == prefix or (prefix.endswith("/") and tag.startswith(prefix))]
        assert curves and all(len(points) >= points_at_least for points in curves), prefix
    assert scalars["update_ratio/linear1"][0][0] == 0  # from the first logged step
    assert [step for step, _ in scalars["act_mean/linear1"][:3]] == [0, 24, 48]  # every third of every 8th


@pytest.mark.parametrize("setting, logged_steps, interval", [("auto", 1, 1), ("auto", 31, 1), ("auto", 32, 2),
                                                             ("auto", 59, 3), ("auto", 1000, 62), (1, 400, 1),
                                                             (3, 10, 3)])
def test_statistics_as_seldom_as_gives_16_points(setting, logged_steps, interval):
    from mlpkit.diagnostics import statistics_interval

    assert statistics_interval(setting, logged_steps) == interval
    if setting == "auto":
        assert len(range(0, logged_steps, interval)) >= min(16, logged_steps)


@pytest.mark.slow
def test_a_resumed_run_keeps_its_verdicts_and_counts_on(digits, tmp_path):
    from mlpkit.checkpoint import load_checkpoint

    data, _ = digits

    def deep_sigmoid_trainer(max_epochs):
        return assembled(f"model.hidden_sizes={DEEP}", "activation=sigmoid", "optimizer.fused=null",
                         f"trainer.max_epochs={max_epochs}", "trainer.batch_size=128",
                         "diagnostics.figure_every_n_steps=0", data=data, checkpoint_dir=tmp_path).trainer

    first = deep_sigmoid_trainer(2).fit()["gradient_health"]  # 20 steps, every one measured
    assert list(first["verdicts"]) == ["vanishing"] and first["measurements"] == 20
    resumed = deep_sigmoid_trainer(3)
    resumed.resume_from(load_checkpoint(tmp_path / "last.pt"))
    health = resumed.fit()["gradient_health"]
    assert health["verdicts"]["vanishing"] == first["verdicts"]["vanishing"]  # fired before the resume
    assert health["measurements"] == 20 + 10 and health["last"]["step"] == 29

"""The trainer's remedies and sanity checks through the run function the CLI calls: learning-rate
schedules (logged as lr/group0, resumed exactly), gradient clipping (grad_norm/total_before_clip,
clip/fraction), early stopping with the best checkpoint's test metrics, overfit_batches and fast_dev_run."""
import json
import logging
import math

import pytest
import torch

import mlpkit
from mlpkit.checkpoint import load_checkpoint
from mlpkit.cli import run
from mlpkit.errors import EXIT_CONFIG, ConfigError, TrainingStopped
from tests.conftest import assembled, compose_config, read_scalars, run_cli, stop_after_saving_step

# digits, batch 64: 20 steps an epoch
SMALL = ("model.hidden_sizes=[16]", "trainer.progress=false", "trainer.device=cpu", "trainer.log_every_n_steps=1")


@pytest.fixture(autouse=True)
def info_lines(caplog):
    caplog.set_level(logging.INFO, logger="mlpkit")  # the run's summary lines


def train(run_dir, *overrides):
    """What `python train.py <overrides>` runs, in-process; returns metrics.json and the TensorBoard scalars."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run(compose_config(*SMALL, *overrides), run_dir)
    return json.loads((run_dir / "metrics.json").read_text()), read_scalars(run_dir)


def lrs(scalars):
    return [value for _, value in scalars["lr/group0"]]


def test_cosine_with_warmup_rises_linearly_then_falls_to_eta_min(tmp_path):
    metrics, scalars = train(tmp_path, "trainer.max_epochs=2", "scheduler=cosine", "scheduler.warmup_steps=9")
    lr = lrs(scalars)
    assert [step for step, _ in scalars["lr/group0"]] == list(range(40))  # every optimizer step, logged
    assert lr[:10] == pytest.approx([1e-3 * (i + 1) / 10 for i in range(10)])  # up to optimizer.lr at step 9
    assert lr[9] == pytest.approx(1e-3) and all(a > b for a, b in zip(lr[9:], lr[10:]))  # then only down
    assert lr[-1] < 1e-5
    assert metrics["steps"] == 40


def test_step_schedule_decays_every_step_size_epochs(tmp_path):
    _, scalars = train(tmp_path, "trainer.max_epochs=3", "scheduler=step", "scheduler.step_size=1",
                       "scheduler.gamma=0.5")
    lr = lrs(scalars)
    assert lr[0] == lr[19] == pytest.approx(1e-3)
    assert lr[20] == lr[39] == pytest.approx(5e-4)
    assert lr[40] == pytest.approx(2.5e-4)


def test_onecycle_peaks_at_max_lr_and_ends_far_below(tmp_path):
    _, scalars = train(tmp_path, "trainer.max_epochs=2", "scheduler=onecycle", "scheduler.max_lr=0.01")
    lr = lrs(scalars)
    assert lr[0] == pytest.approx(0.01 / 25)
    assert max(lr) == pytest.approx(0.01, rel=1e-3) and lr.index(max(lr)) in (11, 12)  # pct_start 0.3 of 40 steps
    assert lr[-1] < 1e-5


def test_plateau_cuts_the_lr_when_the_metric_stalls_after_the_warmup(tmp_path):
    # objective.mode=max on the loss: it falls every epoch, so to the scheduler it never improves
    _, scalars = train(tmp_path, "trainer.max_epochs=4", "scheduler=plateau", "scheduler.patience=0",
                       "scheduler.factor=0.5", "scheduler.warmup_steps=30", "objective.mode=max")
    lr = dict(scalars["lr/group0"])
    assert lr[0] == pytest.approx(1e-3 / 31) and lr[30] == pytest.approx(1e-3)
    # epoch 1 ended inside the warmup and did not count; epoch 2 is the first judged and sets the best
    assert lr[40] == pytest.approx(1e-3) and lr[59] == pytest.approx(1e-3)
    assert lr[60] == pytest.approx(5e-4) and lr[79] == pytest.approx(5e-4)  # epoch 3 was worse: cut at once


def test_lr_is_logged_without_a_schedule_too(tmp_path):
    _, scalars = train(tmp_path, "trainer.max_epochs=1", "optimizer.lr=0.003")
    assert lrs(scalars) == pytest.approx([0.003] * 20)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_clipping_logs_the_norm_before_clipping_and_how_often_it_acted(tmp_path, algorithm):
    clip = 0.3 if algorithm == "norm" else 0.01
    metrics, scalars = train(tmp_path, "trainer.max_epochs=1", f"trainer.gradient_clip_val={clip}",
                             f"trainer.gradient_clip_algorithm={algorithm}")
    norms = [value for _, value in scalars["grad_norm/total_before_clip"]]
    fractions = [value for _, value in scalars["clip/fraction"]]
    assert len(norms) == len(fractions) == metrics["steps"] == 20
    # every step is logged here, so each fraction is this step's: 1 where it clipped, 0 where not
    assert set(fractions) <= {0.0, 1.0}
    if algorithm == "norm":
        assert fractions == [1.0 if norm > clip else 0.0 for norm in norms]
    assert sum(fractions) > 0
    # the per-layer diagnostics see the gradients before clipping: their norms add up to the total
    layers = [sum(dict(scalars[f"{measure}/linear{i}"])[0] ** 2 for i in (1, 2)
                  for measure in ("grad_norm", "grad_norm_bias")) ** 0.5]
    assert layers[0] == pytest.approx(norms[0], rel=1e-4)


@pytest.mark.slow
def test_clipping_by_norm_bounds_how_far_sgd_moves_the_weights(tmp_path):
    """20 SGD steps of lr 0.1 with the gradient's norm clipped to 1e-3 move the weights by at most 2e-3."""
    start = _initial_weights()
    moved = {}
    for name, clip in (("free", 0), ("clipped", 1e-3)):
        train(tmp_path / name, "trainer.max_epochs=1", "optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0",
              f"trainer.gradient_clip_val={clip}", "trainer.log_every_n_steps=5")
        final = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]
        moved[name] = math.sqrt(sum(float((final[k] - start[k]).pow(2).sum()) for k in start))
    assert moved["clipped"] <= 20 * 0.1 * 1e-3 * 1.001
    assert moved["free"] > 10 * moved["clipped"]


def _initial_weights():
    """The weights a SMALL run starts from (trainer.seed=0), made as the run makes them."""
    return assembled(*SMALL).model.state_dict()


@pytest.mark.slow
def test_early_stopping_stops_reports_the_epoch_and_the_best_checkpoints_test_metrics(tmp_path, caplog):
    # a learning rate this high makes the validation loss worse after the first epochs
    metrics, _ = train(tmp_path, "trainer.max_epochs=30", "optimizer.lr=0.05", "trainer.early_stopping.patience=2")
    stopped = metrics["stopped_early"]
    assert stopped["epoch"] < 30 and stopped["metric"] == "loss" and stopped["patience"] == 2
    assert metrics["epochs"] == stopped["epoch"] == len(metrics["history"])
    assert stopped["best_epoch"] == metrics["best"]["epoch"] == stopped["epoch"] - 2
    assert set(metrics["test_best"]) == set(metrics["test"]) and metrics["test_best"] != metrics["test"]
    text = caplog.text
    assert f"stopped early after epoch {stopped['epoch']}: loss/val did not improve by more than 0 for 2 " \
           f"epochs (best epoch {stopped['best_epoch']})" in text
    best = metrics["test_best"]
    assert f"test with checkpoints/best.pt (epoch {stopped['best_epoch']}): loss {best['loss']:.4g}" in text


def test_early_stopping_counts_only_improvements_larger_than_min_delta(tmp_path):
    metrics, _ = train(tmp_path, "trainer.max_epochs=10", "trainer.early_stopping.patience=2",
                       "trainer.early_stopping.min_delta=10")
    assert metrics["stopped_early"]["epoch"] == 3  # epoch 1 sets the mark; 2 and 3 fall short of it by 10
    assert metrics["best"]["epoch"] == 3  # best.pt still follows every improvement


def test_without_early_stopping_the_run_goes_to_max_epochs(tmp_path):
    metrics, _ = train(tmp_path, "trainer.max_epochs=3", "optimizer.lr=0.05")
    assert metrics["stopped_early"] is None and metrics["epochs"] == 3
    assert "test_best" in metrics


@pytest.mark.slow
def test_overfit_batches_drives_their_loss_near_zero_and_says_so(tmp_path, caplog):
    metrics, _ = train(tmp_path, "trainer.max_epochs=60", "trainer.overfit_batches=1", "optimizer.lr=0.01",
                       "trainer.log_every_n_steps=10")
    check = metrics["overfit_batches"]
    assert check["batches"] == 1 and check["rows"] == 64 and metrics["steps"] == 60
    assert check["reached"] and check["loss"] < check["threshold"]
    assert f"overfit_batches=1 (64 rows): their loss {check['loss']:.4g} < {check['threshold']:g}, went near zero" \
           in caplog.text


def test_overfit_batches_says_when_the_loss_did_not_go_near_zero(tmp_path, caplog):
    metrics, _ = train(tmp_path, "trainer.max_epochs=2", "trainer.overfit_batches=2", "optimizer.lr=1e-5")
    check = metrics["overfit_batches"]
    assert check["rows"] == 128 and not check["reached"] and check["loss"] > check["threshold"]
    assert "did not go near zero" in caplog.text


@pytest.mark.slow
def test_fast_dev_run_takes_one_batch_through_every_path_of_the_real_cli(run_dir):
    result = run_cli(run_dir, "trainer.fast_dev_run=true", "data=moons", "trainer.progress=false")
    assert result.returncode == 0, result.stderr
    assert "fast_dev_run: one batch of train, val and test" in result.stderr
    assert "this was a dev run" in result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fast_dev_run"] is True and metrics["epochs"] == 1 and metrics["steps"] == 1
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    assert any(run_dir.glob("*.png"))  # the gradient-flow figure
    assert "decision_boundary/train" in _images(run_dir)


def _images(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events.Tags()["images"]


RESUMABLE_RUNS = {
    "cosine+warmup+clip": ["scheduler=cosine", "scheduler.warmup_steps=15", "trainer.gradient_clip_val=0.5"],
    "onecycle+clip-value": ["scheduler=onecycle", "trainer.gradient_clip_val=0.01",
                            "trainer.gradient_clip_algorithm=value"],
    "plateau+warmup+early-stop": ["scheduler=plateau", "scheduler.patience=0", "scheduler.warmup_steps=10",
                                  "optimizer.lr=0.03", "trainer.early_stopping.patience=2"],
    # 8-row batches, 3 to a step: step 50 is mid-epoch, and each checkpoint falls between accumulations
    "accumulation+ema+swa": ["trainer.batch_size=8", "trainer.accumulate_grad_batches=3", "trainer.ema_decay=0.9",
                             "trainer.swa_start=2", "scheduler=cosine"],
}


@pytest.mark.slow
@pytest.mark.parametrize("settings", list(RESUMABLE_RUNS.values()), ids=list(RESUMABLE_RUNS))
def test_an_interrupted_and_resumed_run_ends_with_the_same_lr_and_weights(tmp_path, monkeypatch, settings):
    overrides = [*SMALL, "trainer.max_epochs=6", "trainer.checkpoint_every_n_steps=25", "model.dropout=0.2",
                 "trainer.log_every_n_steps=5", *settings]
    mlpkit.train(overrides, run_dir=tmp_path / "reference")
    with monkeypatch.context() as patch:
        stop_after_saving_step(patch, 50)  # inside the third epoch
        with pytest.raises(TrainingStopped):
            mlpkit.train(overrides, run_dir=tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 50
    mlpkit.train([*overrides, f"resume={tmp_path / 'resumed'}"])

    expected, actual = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
                        for name in ("reference", "resumed"))
    assert all(torch.equal(expected["model"][name], actual["model"][name]) for name in expected["model"])
    assert actual["optimizer"]["param_groups"][0]["lr"] == expected["optimizer"]["param_groups"][0]["lr"]
    schedule, resumed_schedule = (state["extra"]["callbacks"]["scheduler"] for state in (expected, actual))
    assert schedule is not None and resumed_schedule == schedule
    reference, resumed = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("reference", "resumed"))
    assert resumed["history"] == reference["history"]
    assert resumed["stopped_early"] == reference["stopped_early"]
    assert {key: resumed[key] for key in ("val_ema", "test_swa") if key in reference} == \
        {key: reference[key] for key in ("val_ema", "test_swa") if key in reference}
    assert dict(read_scalars(tmp_path / "resumed")["lr/group0"]) == dict(read_scalars(tmp_path / "reference")["lr/group0"])


@pytest.mark.slow
def test_a_resume_of_an_early_stopped_run_stays_stopped(tmp_path):
    overrides = [*SMALL, "trainer.max_epochs=30", "optimizer.lr=0.05", "trainer.early_stopping.patience=1"]
    first = mlpkit.train(overrides, run_dir=tmp_path / "run")
    again = mlpkit.train([*overrides, f"resume={first.dir}"])
    assert again.metrics["stopped_early"] == first.metrics["stopped_early"]
    assert again.metrics["steps"] == first.metrics["steps"]



def test_a_longer_resume_of_a_cosine_run_says_the_added_steps_keep_its_last_lr(tmp_path, caplog):
    overrides = [*SMALL, "trainer.max_epochs=1", "scheduler=cosine"]
    first = mlpkit.train(overrides, run_dir=tmp_path / "run")
    mlpkit.train([*overrides, "trainer.max_epochs=2", f"resume={first.dir}"])
    assert ("scheduler=cosine spans the run's first 20 steps; steps 20 to 40 train at the lr it ended on, 0 "
            "(start a new run for a schedule over the longer run)") in caplog.text

BAD_VALUES = [
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 is not valid: expected a number >= 0 (0 = off)"),
    ("trainer.gradient_clip_algorithm=l1", "trainer.gradient_clip_algorithm=l1 is not valid: expected norm or value"),
    ("trainer.early_stopping.patience=-2", "trainer.early_stopping.patience=-2 is not valid: expected an integer >= 0"),
    ("trainer.early_stopping.min_delta=-0.1", "trainer.early_stopping.min_delta=-0.1 is not valid"),
    ("trainer.overfit_batches=1.5", "trainer.overfit_batches=1.5 is not valid: expected an integer >= 0"),
    ("trainer.fast_dev_run=maybe", "trainer.fast_dev_run=maybe is not valid: expected true or false"),
    ("scheduler.warmup_steps=-5", "scheduler.warmup_steps=-5 is not valid: expected an integer >= 0"),
    ("scheduler=step scheduler.gamma=2", "scheduler.gamma=2 is not valid: expected a number in (0, 1]"),
    ("scheduler=step scheduler.step_size=0", "scheduler.step_size=0 is not valid: expected an integer >= 1"),
    ("scheduler=cosine scheduler.eta_min=-1", "scheduler.eta_min=-1 is not valid: expected a number >= 0"),
    ("scheduler=onecycle scheduler.warmup_steps=10",
     "scheduler.warmup_steps=10 is not valid: expected 0 with scheduler=onecycle"),
    ("scheduler=onecycle scheduler.pct_start=1", "scheduler.pct_start=1 is not valid: expected a fraction in (0, 1)"),
    ("scheduler=plateau scheduler.factor=1", "scheduler.factor=1 is not valid: expected a number in (0, 1)"),
    ("trainer.fast_dev_run=true trainer.overfit_batches=2",
     "trainer.overfit_batches=2 is not valid: expected 0 with trainer.fast_dev_run=true"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_bad_values_stop_with_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as error:
        run(compose_config(*SMALL, *overrides.split()), tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert error.value.exit_code == EXIT_CONFIG
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_the_command_line_refuses_a_bad_value_with_exit_code_2_and_lists_the_scheduler_group(run_dir):
    result = run_cli(run_dir, "scheduler=cosine", "scheduler.warmup_steps=-1")
    assert result.returncode == 2
    assert "scheduler.warmup_steps=-1 is not valid" in result.stderr and "Traceback" not in result.stderr
    help_page = run_cli(run_dir, args=("--help",)).stdout
    assert "scheduler: cosine, none, onecycle, plateau, step" in help_page
    assert "trainer.gradient_clip_val" in help_page and "trainer.early_stopping.patience" in help_page

"""Schedules that contradict the run they are in: refused with one line (exit 2) before any step
when they would do the opposite of what they are for or nothing at all, warned about when they do
less than their name says; valid settings and valid resumes go on."""
import logging

import pytest
import torch

import mlpkit
from mlpkit.cli import run
from mlpkit.errors import EXIT_CONFIG, ConfigError
from mlpkit.schedules import build_schedule
from tests.conftest import compose_config, run_cli_in_one_interpreter

# digits, batch 64: 20 steps an epoch; 2 epochs: 40 optimizer steps
SMALL = ("model.hidden_sizes=[16]", "trainer.progress=false", "trainer.device=cpu", "trainer.max_epochs=2")

REFUSED = [
    ("scheduler=cosine scheduler.eta_min=0.99",
     "scheduler.eta_min=0.99 is not valid: expected a number below optimizer.lr=0.001. "
     "scheduler=cosine anneals from optimizer.lr down to it"),
    ("scheduler=cosine scheduler.eta_min=0.001", "scheduler.eta_min=0.001 is not valid: expected a number below "
     "optimizer.lr=0.001"),
    ("scheduler=plateau scheduler.min_lr=0.5", "scheduler.min_lr=0.5 is not valid: expected a number below "
     "optimizer.lr=0.001. scheduler=plateau cuts the lr down to it, never up"),
    ("scheduler=cosine scheduler.warmup_steps=5000",
     "scheduler.warmup_steps=5000 is not valid: expected an integer below 40, the run's 40 optimizer steps "
     "(2 epochs of 20). a warmup that long trains the whole run at a fraction of optimizer.lr"),
    ("scheduler=none scheduler.warmup_steps=40", "scheduler.warmup_steps=40 is not valid: expected an integer "
     "below 40"),
    ("scheduler=onecycle scheduler.pct_start=0.025",  # its rise exactly one step: torch divided by zero
     "scheduler.pct_start=0.025 is not valid: expected a fraction above 0.025, 1 of the run's 40 optimizer steps "
     "(2 epochs of 20). the rise to max_lr must span at least one step"),
    ("scheduler=step scheduler.step_size=10",
     "scheduler.step_size=10 is not valid: expected an integer below 2, the epochs the run trains (40 optimizer "
     "steps, 20 an epoch). the first decay would come after the last step and the lr would never change"),
    ("scheduler=step scheduler.step_size=1 scheduler.warmup_steps=21",
     "scheduler.step_size=1 is not valid: expected an integer below 0.95, the epochs the run trains after its "
     "warmup (19 optimizer steps, 20 an epoch)"),
]


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[case[0] for case in REFUSED])
def test_a_schedule_that_contradicts_the_run_is_refused_with_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as error:
        run(compose_config(*SMALL, *overrides.split()), tmp_path)
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value) and error.value.exit_code == EXIT_CONFIG
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()


def optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def schedule(settings, total_steps=100, steps_per_epoch=10, lr=0.1, **kind):
    return build_schedule(optimizer(lr), settings, total_steps=total_steps, steps_per_epoch=steps_per_epoch, **kind)


COSINE = {"name": "cosine", "warmup_steps": 0, "eta_min": 0.0, "t_max": None}
STEP = {"name": "step", "warmup_steps": 0, "step_size": 9, "gamma": 0.5}
ONECYCLE = {"name": "onecycle", "warmup_steps": 0, "max_lr": None, "pct_start": 0.3, "div_factor": 25.0,
            "final_div_factor": 1e4, "anneal_strategy": "linear"}
PLATEAU = {"name": "plateau", "warmup_steps": 0, "factor": 0.1, "patience": 7, "threshold": 1e-4, "min_lr": 0.0}


@pytest.mark.parametrize("settings", [
    {**COSINE, "eta_min": 0.0999, "warmup_steps": 50},  # below the lr; a warmup of half the run, not over
    {**STEP, "warmup_steps": 9},  # the first decay at step 99, the run's last
    {**PLATEAU, "min_lr": 0.099},  # patience 7: a cut after epoch 9 of 10 still trains epoch 10
    {**ONECYCLE, "max_lr": 5.0, "pct_start": 0.011, "div_factor": 1.0, "final_div_factor": 1.0},
], ids=["cosine", "step", "plateau", "onecycle"])
def test_settings_at_the_edge_of_the_run_are_built_without_a_warning(settings, caplog):
    assert schedule(settings) is not None
    assert not caplog.records


def test_a_dev_run_keeps_the_real_runs_lengths(caplog):
    # trainer.fast_dev_run trains one step through every path: the settings are for the real run
    assert schedule({**COSINE, "warmup_steps": 500}, total_steps=1, steps_per_epoch=1, dev_run=True) is not None
    for pct_start in (0.3, 0.5):  # OneCycleLR over 2 steps with pct_start 0.5 divided by zero
        sgd = optimizer()
        onecycle = build_schedule(sgd, {**ONECYCLE, "pct_start": pct_start}, total_steps=1, steps_per_epoch=1,
                                  dev_run=True)
        sgd.step()
        onecycle.after_step()
    assert not caplog.records
    with pytest.raises(ConfigError, match="scheduler.eta_min=0.5 is not valid"):  # wrong in any run
        schedule({**COSINE, "eta_min": 0.5}, total_steps=1, steps_per_epoch=1, dev_run=True)


WARNED = [
    ({**COSINE, "warmup_steps": 60}, "scheduler.warmup_steps=60 is 60% of the run's 100 optimizer steps (10 epochs "
     "of 10): the lr reaches optimizer.lr only at step 60, 40 steps before the end"),
    ({**COSINE, "t_max": 200}, "scheduler.t_max=200 is longer than the 100 steps the run has after its warmup: "
     "the lr ends at 0.05, not at scheduler.eta_min=0 (t_max=null spans the run)"),
    ({**PLATEAU, "patience": 8}, "scheduler.patience=8: scheduler=plateau cuts the lr after 9 epochs without "
     "improvement, and the run validates 10 times: the lr cannot change before the run ends"),
    ({**PLATEAU, "patience": 5, "warmup_steps": 40}, "the run validates 7 times after its warmup"),
]


@pytest.mark.parametrize("settings, line", WARNED, ids=["warmup", "t_max", "plateau", "plateau+warmup"])
def test_a_schedule_that_does_less_than_its_name_says_is_warned_about(settings, line, caplog):
    caplog.set_level(logging.WARNING, logger="mlpkit")
    assert schedule(settings) is not None
    assert line in caplog.text and len(caplog.records) == 1


@pytest.mark.slow
def test_a_longer_resume_of_a_warned_run_goes_on(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="mlpkit")
    overrides = [*SMALL, "scheduler=cosine", "scheduler.warmup_steps=25"]
    first = mlpkit.train(overrides, run_dir=tmp_path / "run")
    assert "scheduler.warmup_steps=25 is 62% of the run's 40 optimizer steps" in caplog.text
    again = mlpkit.train([*overrides, "trainer.max_epochs=4", f"resume={first.dir}"])
    assert again.metrics["steps"] == 80


@pytest.mark.slow
def test_the_command_line_refuses_it_with_exit_2_and_leaves_what_other_refused_starts_leave(tmp_path):
    # the second: another value refused once the run's data is known, when the trainer is built
    refused, other = run_cli_in_one_interpreter([  # train.py twice, in one fresh interpreter
        (tmp_path / "eta_min", ("scheduler=cosine", "scheduler.eta_min=0.99", *SMALL)),
        (tmp_path / "batch", ("trainer.compile=true", "trainer.batch_size=100000", *SMALL))])
    assert refused.returncode == 2, refused.stderr
    assert "scheduler.eta_min=0.99 is not valid: expected a number below optimizer.lr=0.001" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert other.returncode == 2, other.stderr

    def files(run_dir):
        return sorted(path.name if not path.name.startswith("events.") else "events"
                      for path in run_dir.rglob("*") if path.is_file())

    assert files(tmp_path / "eta_min") == files(tmp_path / "batch")
    assert "metrics.json" not in files(tmp_path / "eta_min") and not (tmp_path / "eta_min" / "checkpoints").exists()

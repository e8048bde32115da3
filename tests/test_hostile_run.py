"""The second hostile round on a run's own path: a checkpoint's config runs no code, a key nothing
reads is refused, a resume goes on anywhere it is pointed, times add up, and the run's end survives
Ctrl-C, a full disk and a read-only directory."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

import mlpkit
from mlpkit.config import validate
from mlpkit.errors import ConfigError, TrainingStopped, environment_fault
from tests.conftest import ROOT, compose_config, run_cli

SMALL = ["model.hidden_sizes=[8]", "trainer.progress=false", "trainer.device=cpu"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch run, trained once; tests copy it before they change anything."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    mlpkit.train([*SMALL, "trainer.max_epochs=1"], run_dir=run_dir)
    return run_dir


def train_cli(cwd, *overrides):
    """``python train.py`` with no hydra.run.dir of its own (a resume then goes on in its run's)."""
    command = [sys.executable, str(ROOT / "train.py"), *overrides]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180)


def copy_of(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def tampered_checkpoint(run_dir, tmp_path, change):
    """A copy of the run whose last.pt config was changed by ``change(config)``."""
    copy = copy_of(run_dir, tmp_path)
    last = copy / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    change(state["config"])
    torch.save(state, last)
    return copy


# --- 1. a checkpoint's config names no code -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("where", ["optimizer", "optimizer.betas", "model", "scheduler"])
def test_a_target_in_a_checkpoints_config_is_refused_and_runs_nothing(finished_run, tmp_path, where):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    evil = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}

    def plant(config):
        group, _, key = where.partition(".")
        if key:
            config[group][key] = evil
        elif group == "optimizer":
            config[group] = {**evil, "lr": 0.001}
        else:
            config[group] = {**(config.get(group) or {}), **evil}

    run_dir = tampered_checkpoint(finished_run, tmp_path, plant)
    with pytest.raises(ConfigError) as refused:
        mlpkit.train([f"resume={run_dir}", "trainer.max_epochs=2"])
    assert refused.value.exit_code == 2
    assert victim.read_text() == "precious"
    assert "_target_" in str(refused.value) or "builtins.open" in str(refused.value)


@pytest.mark.slow
def test_an_interpolation_in_a_checkpoints_config_is_refused(finished_run, tmp_path):
    run_dir = tampered_checkpoint(finished_run, tmp_path,
                                  lambda config: config["trainer"].update(device="${oc.env:HOME}"))
    with pytest.raises(ConfigError, match=r"its trainer.device=\$\{oc.env:HOME\} is an interpolation"):
        mlpkit.train([f"resume={run_dir}", "trainer.max_epochs=2"])


@pytest.mark.parametrize("override, message", [
    ("optimizer._target_=builtins.print", "optimizer._target_=builtins.print is not valid: expected one of "
     "torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD"),
    ("+optimizer.momentum=0.9", "optimizer.momentum=0.9 is not valid: expected an argument of torch.optim.Adam: lr,"),
    ("+trainer.max_epoch=3", "trainer.max_epoch=3 is not valid: expected a key the run reads (did you mean "
     "trainer.max_epochs?"),
    ("+auto_lr=true", "auto_lr=True is not valid: expected a key the run reads (nothing in the run reads it; "
     "the top-level keys: activation, data"),
    ("+loss.pos_weight=3", "loss.pos_weight=3 is not valid: expected a key the run reads"),  # loss=ce reads none
    ("+trainer.early_stopping.patiense=2", "did you mean trainer.early_stopping.patience?"),
    ("+diagnostics.vanishing=0.1", "did you mean diagnostics.vanishing_ratio?"),
])
def test_a_key_nothing_reads_is_refused_with_the_nearest_one(override, message):
    overrides = ["loss=ce", override] if override.startswith("+loss") else [override]
    with pytest.raises(ConfigError) as refused:
        validate(compose_config(*overrides))
    assert message in str(refused.value)


@pytest.mark.parametrize("overrides", [
    ["optimizer=sgd", "optimizer.momentum=0.9", "+optimizer.dampening=0.1"],  # a constructor argument
    ["+optimizer.eps=1e-6"],
    ["+loss.label_smoothing=0.1"],  # loss=auto may become ce, which reads it
    ["experiment=remedies"],  # its own top-level keys, variant and variants
    ["scheduler=onecycle", "data=breast_cancer", "loss=bce", "head=sigmoid", "loss.pos_weight=2"],
])
def test_documented_keys_are_accepted(overrides):
    validate(compose_config(*overrides))


def test_every_choice_of_every_group_holds_only_keys_the_run_reads():
    from mlpkit.config import CONFIG_DIR
    from mlpkit.config_keys import check_known_keys

    for group in ("activation", "head", "loss", "optimizer", "scheduler", "data", "model", "trainer", "diagnostics"):
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            cfg = compose_config(f"{group}={path.stem}")
            from omegaconf import OmegaConf

            check_known_keys(OmegaConf.to_container(cfg, resolve=False))


@pytest.mark.slow
def test_an_interpolation_that_does_not_resolve_is_one_line(tmp_path):
    result = run_cli(tmp_path / "run", "data=csv", "data.path=${nope}", "trainer.max_epochs=1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "data.path=${nope} is not valid: expected a value or an interpolation that resolves" in result.stderr


# --- 16. resume from elsewhere ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_bare_checkpoint_file_continues_in_a_new_run_directory(finished_run, tmp_path):
    bare = tmp_path / "shared.pt"
    shutil.copyfile(finished_run / "checkpoints" / "last.pt", bare)
    run = mlpkit.train([f"resume={bare}", "trainer.max_epochs=2"], run_dir=tmp_path / "continued")
    assert run.metrics["epochs"] == 2 and run.metrics["steps"] == 2 * json.loads(
        (finished_run / "metrics.json").read_text())["steps"]
    loaded = mlpkit.load_run(tmp_path / "continued")  # its config is the continued run's, not the defaults
    assert [layer.out_features for layer in loaded.model.linear_layers().values()][0] == 8
    assert json.loads((tmp_path / "continued" / "resumes.json").read_text())[0]["checkpoint"] == str(bare)


@pytest.mark.slow
def test_a_resume_into_another_run_directory_leaves_the_source_as_it_was(finished_run, tmp_path):
    source = copy_of(finished_run, tmp_path)
    before = {path: path.read_bytes() for path in source.rglob("*") if path.is_file()}
    run = mlpkit.train([f"resume={source}"], run_dir=tmp_path / "elsewhere")  # no epoch left: a copy
    assert (tmp_path / "elsewhere" / "checkpoints" / "last.pt").is_file()
    assert run.metrics["status"] == "completed"
    assert {path: path.read_bytes() for path in source.rglob("*") if path.is_file()} == before
    with pytest.raises(ConfigError, match="holds a run already"):  # never into a directory holding a run
        mlpkit.train([f"resume={source}"], run_dir=tmp_path / "elsewhere")


# --- 6. times add up over resumes, and a finished run is not reported twice -----------------------
@pytest.mark.slow
def test_times_add_up_over_resumes_and_a_finished_run_logs_its_end_once(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    first = json.loads((run_dir / "metrics.json").read_text())
    longer = mlpkit.train([f"resume={run_dir}", "trainer.max_epochs=2"]).metrics
    assert longer["train_seconds"] > first["train_seconds"]
    assert longer["wall_seconds"] > first["wall_seconds"]
    again = mlpkit.train([f"resume={run_dir}", "trainer.max_epochs=2"]).metrics  # nothing left to train
    assert again["train_seconds"] == pytest.approx(longer["train_seconds"])
    assert again["samples_per_second"] == pytest.approx(longer["samples_per_second"])
    assert again["wall_seconds"] > longer["wall_seconds"]
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    logged = EventMultiplexer(size_guidance={"images": 0, "tensors": 0}).AddRunsFromDirectory(str(run_dir)).Reload()
    entries = [(tag, event.step) for run, tags in logged.Runs().items() for kind in ("images", "tensors")
               for tag in tags[kind] for event in getattr(logged, kind.capitalize())(run, tag)]
    assert ("gradient_health/summary/text_summary", longer["steps"]) in entries
    assert len(entries) == len(set(entries)), sorted(entry for entry in entries if entries.count(entry) > 1)


# --- 17. batch norm with the sanity checks' few batches -------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("check", ["trainer.overfit_batches=1", "trainer.fast_dev_run=true"])
def test_batch_norm_with_a_few_whole_batches_is_accepted(tmp_path, check):
    run = mlpkit.train([*SMALL, "model.norm=batch", "trainer.batch_size=4", "trainer.max_epochs=1", check],
                       run_dir=tmp_path / "run")
    assert run.metrics["steps"] == 1


# --- 15. the end of the run under Ctrl-C, a full disk, a read-only directory -----------------------
@pytest.mark.slow
def test_ctrl_c_during_the_end_of_run_figures_still_writes_metrics(tmp_path, monkeypatch):
    from mlpkit import figures

    draw = figures.log_gradient_flow

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # as a Ctrl-C while the figures are drawn
        return draw(*args, **kwargs)

    monkeypatch.setattr(figures, "log_gradient_flow", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(TrainingStopped) as stopped:
            mlpkit.train([*SMALL, "trainer.max_epochs=1"], run_dir=tmp_path / "run")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stopped.value.exit_code == 128 + signal.SIGINT and stopped.value.completed
    assert "after the last step; the run is complete" in str(stopped.value)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


@contextmanager
def tmpfs(path, size):
    """A small filesystem of its own at ``path`` (root only: skipped elsewhere)."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_says_so_in_one_line(tmp_path):
    with tmpfs(tmp_path / "small", "420k") as small:
        result = run_cli(small / "run", "trainer.max_epochs=3", "trainer.checkpoint_min_seconds=0",
                         "trainer.progress=false", "trainer.device=cpu")
        assert result.returncode == 4, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert "could not write checkpoint last.pt (the last good one is kept): No space left on device" \
            in result.stderr
        metrics = json.loads((small / "run" / "metrics.json").read_text())
        assert metrics["status"] == "failed"
        assert torch.load(small / "run" / "checkpoints" / "last.pt", weights_only=True)["epoch"] >= 1


@pytest.mark.slow
def test_a_read_only_run_directory_refuses_a_resume_in_one_line(finished_run, tmp_path):
    with tmpfs(tmp_path / "disk", "20m") as disk:
        shutil.copytree(finished_run, disk / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = train_cli(tmp_path, f"resume={disk / 'run'}", "trainer.max_epochs=2")
        assert result.returncode == 4, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == \
            f"Error: could not write the run directory: {disk / 'run' / 'train.log'}: Read-only file system"


# --- 18. wording ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_refused_resume_leaves_the_runs_log_as_it_was(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    log_before = (run_dir / "train.log").read_bytes()
    result = train_cli(tmp_path, f"resume={run_dir}", "activation=tanh")
    assert result.returncode == 2
    assert "activation=tanh is not valid" in result.stderr
    assert (run_dir / "train.log").read_bytes() == log_before


def test_an_epoch_whose_steps_were_all_skipped_has_no_training_loss(caplog):
    import logging
    from types import SimpleNamespace

    from mlpkit.progress import EpochProgress
    from mlpkit.trainer import Trainer

    # trainer.on_nonfinite=skip: stop_nonfinite returns
    trainer = SimpleNamespace(batch_size=4, rows_per_epoch=lambda: 10, stop_nonfinite=lambda: None)
    assert math.isnan(Trainer.epoch_loss(trainer, [math.nan, math.nan, math.nan]))
    assert Trainer.epoch_loss(trainer, [1.0, math.nan, 4.0]) == pytest.approx((1.0 * 4 + 4.0 * 2) / 6)
    assert Trainer.epoch_loss(trainer, [1.0, 2.0, 4.0]) == pytest.approx((1.0 * 4 + 2.0 * 4 + 4.0 * 2) / 10)
    recorded = SimpleNamespace(epoch=0, step=3, history=[], logger=None, max_epochs=1)
    Trainer.record_epoch(recorded, math.nan, {"loss": 2.3})
    assert recorded.history == [{"epoch": 1, "step": 3, "loss/val": 2.3}]
    caplog.set_level(logging.INFO, logger="mlpkit")
    EpochProgress(bar=False).on_validation_end(recorded, {"loss": 2.3}, improved=False)  # the line per epoch
    assert "every step skipped" in caplog.text and "loss/train_epoch" not in caplog.text


def test_an_os_error_without_a_file_name_reads_cleanly():
    stop = environment_fault(OSError(28, "No space left on device"), "write checkpoint last.pt")
    assert str(stop) == "could not write checkpoint last.pt: No space left on device"


@pytest.mark.slow
def test_a_resume_never_downloads_on_its_checkpoints_word(finished_run, tmp_path):
    """data.download=true in a checkpoint would let the file choose where the run writes (data.root)."""
    from mlpkit.resume import accept_resume

    run_dir = tampered_checkpoint(finished_run, tmp_path, lambda config: config["data"].update(
        source="mnist", root=str(tmp_path / "elsewhere"), download=True))
    cfg, resume = accept_resume(compose_config(f"resume={run_dir}"), run_dir, [f"resume={run_dir}"])
    assert cfg.data.download is False and cfg.data.root == str(tmp_path / "elsewhere")
    assert resume.here

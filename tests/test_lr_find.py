"""The learning-rate range test: lr_find.run=true, optimizer.lr=auto, mlpkit.lr_find, and what it refuses."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import mlpkit
from mlpkit.config import validate
from mlpkit.errors import ConfigError
from mlpkit.lr_finder import suggest
from tests.conftest import compose_config, read_scalars, run_cli

SHORT = ["trainer.max_epochs=2", "model.hidden_sizes=[32]", "trainer.progress=false", "trainer.device=cpu"]


def test_the_range_test_from_python_sweeps_up_and_suggests_within_its_range():
    found = mlpkit.lr_find(["data=breast_cancer", "lr_find.steps=60", *SHORT])
    ratios = np.diff(np.log(found.lrs))
    assert np.allclose(ratios, ratios[0]) and found.lrs[0] == pytest.approx(1e-7)  # exponential steps
    assert found.lrs[0] < found.suggestion < found.lrs[-1] and found.rule == "minimum"
    lowest = found.lrs[5 + int(np.argmin(found.smoothed[5:]))]
    assert found.suggestion == pytest.approx(lowest / 10)


@pytest.mark.parametrize("rule, expected", [("minimum", 1e-2 / 10), ("steepest", 1e-3)])
def test_each_rule_reads_its_point_of_the_curve(rule, expected):
    lrs = np.logspace(-6, 0, 61)  # ten points a decade
    decades = np.log10(lrs)
    smoothed = np.where(decades < -2, 2.0 - 0.5 * np.tanh((decades + 3) * 3), 1.5 + (decades + 2) ** 2)
    assert suggest(lrs, smoothed, rule) == pytest.approx(expected, rel=0.3)


@pytest.mark.slow
def test_lr_auto_trains_as_the_suggested_lr_would_from_the_same_start(tmp_path, caplog):
    """The test runs on a copy: the run at lr=auto is the run at the lr it found, weight for weight."""
    caplog.set_level(logging.INFO, logger="mlpkit")
    auto = mlpkit.train(["optimizer.lr=auto", "model.dropout=0.2", *SHORT], run_dir=tmp_path / "auto")
    found = auto.metrics["lr_find"]["suggestion"]
    assert f"suggested optimizer.lr={found:.3g}" in caplog.text
    given = mlpkit.train([f"optimizer.lr={found!r}", "model.dropout=0.2", *SHORT], run_dir=tmp_path / "given")
    weights = [torch.load(run.dir / "checkpoints" / "last.pt", weights_only=True) for run in (auto, given)]
    assert weights[0]["config"]["optimizer"]["lr"] == found  # the config the run saves holds the lr found
    assert all(torch.equal(weights[0]["model"][name], weights[1]["model"][name]) for name in weights[1]["model"])
    assert {"lr_find/loss", "lr_find/loss_smoothed", "lr_find/lr"} <= set(read_scalars(auto.dir))
    assert (auto.dir / "lr_find.png").is_file()
    caplog.clear()
    mlpkit.train([f"resume={auto.dir}", "trainer.max_epochs=3"], run_dir=auto.dir)
    assert "lr_find:" not in caplog.text  # a resume trains on at the lr the run found


def test_onecycle_max_lr_auto_takes_the_suggestion(monkeypatch):
    from mlpkit.lr_finder import LRFinderResult, apply

    cfg = compose_config("scheduler=onecycle", "scheduler.max_lr=auto", "optimizer.lr=0.001")
    validate(cfg)
    apply(cfg, LRFinderResult([1e-7], [1.0], [1.0], 0.02, "minimum", "reached lr_find.max_lr"))
    assert cfg.scheduler.max_lr == 0.02 and cfg.optimizer.lr == 0.001


@pytest.mark.slow
def test_lr_find_run_writes_the_curve_and_trains_nothing(tmp_path):
    run_dir = tmp_path / "finder"
    done = run_cli(run_dir, "lr_find.run=true", "data=breast_cancer", "lr_find.steps=40")
    assert done.returncode == 0, done.stderr
    assert "suggested optimizer.lr=" in done.stderr and "train with its lr: python train.py optimizer.lr=" in done.stderr
    result = json.loads((run_dir / "lr_find.json").read_text())
    assert len(result["lrs"]) == len(result["losses"]) <= 40 and result["rule"] == "minimum"
    assert (run_dir / "lr_find.png").is_file() and not (run_dir / "checkpoints").exists()
    assert len(read_scalars(run_dir)["lr_find/loss"]) == len(result["lrs"])


@pytest.mark.parametrize("overrides, message", [
    (["lr_find.min_lr=0.1", "lr_find.max_lr=0.01"], r"lr_find.max_lr=0.01 is not valid: expected a learning rate "
                                                    r"above lr_find.min_lr=0.1"),
    (["lr_find.min_lr=0.1", "lr_find.max_lr=0.1"], r"lr_find.max_lr=0.1 is not valid: expected a learning rate above"),
    (["lr_find.steps=5"], r"lr_find.steps=5 is not valid: expected an integer >= 10"),
    (["lr_find.rule=valley"], r"lr_find.rule=valley is not valid: expected one of minimum, steepest"),
    (["lr_find.min_lr=-1"], r"lr_find.min_lr=-1 is not valid: expected a finite positive learning rate"),
])
def test_a_range_that_cannot_work_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as refused:
        validate(compose_config("optimizer.lr=auto", *overrides))
    assert "\n" not in str(refused.value)


def test_a_range_that_diverges_at_once_is_refused_naming_min_lr():
    with pytest.raises(ConfigError, match=r"lr_find.min_lr=1000.0 is not valid: expected a range whose first steps "
                                          r"train.*lower lr_find.min_lr"):
        mlpkit.lr_find(["optimizer=sgd", "lr_find.min_lr=1000.0", "lr_find.max_lr=1e9", *SHORT])

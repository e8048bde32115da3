"""Sweeps that stop hopeless trials: verdict pruning (sweep.prune_on_verdict=true) in a run, a grid and an
Optuna study; Optuna's pruner on per-epoch scores; a resumed study that numbers its trials on."""
from __future__ import annotations

import json
import logging

import pytest

from mlpkit.errors import ConfigError
from mlpkit.pruning import TRIAL_ENV, SweepPruning, pruning_callbacks
from mlpkit.sweeps import SweepCallback, write_report
from tests.conftest import assembled
from tests.test_sweep import group_override, job_dirs, multirun, needs, read_report, write_job

DEEP = "[32,32,32,32,32,32,32,32]"  # eight sigmoid layers: the gradients vanish within the first epoch
SIGMOID = ["activation=sigmoid", "optimizer.lr=0.01"]


# --- the callback in a run ------------------------------------------------------------------------
@pytest.mark.slow
def test_verdict_pruning_stops_a_deep_sigmoid_run_after_the_epoch_its_gradients_vanish(caplog):
    caplog.set_level(logging.WARNING, logger="mlpkit.pruning")
    deep = assembled(*SIGMOID, f"model.hidden_sizes={DEEP}", "trainer.max_epochs=10",
                     callbacks=[SweepPruning(on_verdict=True)]).trainer.fit()
    assert deep["epochs"] == deep["pruned"]["epoch"] == 1 < 10
    assert deep["pruned"]["verdict"] == "vanishing" and deep["pruned"]["pruner"] is None
    assert deep["pruned"]["message"].startswith("gradients are vanishing: ||g||/||W|| of linear1")
    assert "vanishing" in deep["gradient_health"]["verdicts"]
    lines = [record.getMessage() for record in caplog.records if "pruned" in record.getMessage()]
    assert lines == ["pruned after epoch 1 of 10: its gradients are judged vanishing (sweep.prune_on_verdict=true); "
                     "the run stops here"]

    # the same settings from the config (what the sweep jobs get), on a net that learns: it trains to the end
    shallow = assembled(*SIGMOID, "model.hidden_sizes=[32]", "trainer.max_epochs=3",
                        "sweep.prune_on_verdict=true").trainer.fit()
    assert shallow["epochs"] == 3 and "pruned" not in shallow and shallow["gradient_health"]["healthy"]


def test_pruning_settings_are_checked_and_cost_nothing_when_off(monkeypatch):
    monkeypatch.delenv(TRIAL_ENV, raising=False)
    assert pruning_callbacks({"prune_on_verdict": False}) == []
    assert pruning_callbacks(None) == []
    assert [type(c) for c in pruning_callbacks({"prune_on_verdict": True})] == [SweepPruning]
    with pytest.raises(ConfigError, match=r"sweep.prune_on_verdict=yes is not valid: expected true or false"):
        pruning_callbacks({"prune_on_verdict": "yes"})
    # a config names no code but a pruner of optuna.pruners
    with pytest.raises(ConfigError, match=r"sweep.pruner=.* is not valid: expected a pruner of optuna.pruners"):
        pruning_callbacks({"prune_on_verdict": False, "pruner": {"_target_": "os.system", "command": "true"}})


# --- the sweep report -----------------------------------------------------------------------------
def test_report_ranks_pruned_jobs_after_the_completed_and_counts_them(tmp_path, capsys):
    pruned = {"epoch": 2, "verdict": "vanishing", "pruner": None, "message": "gradients are vanishing: ..."}
    write_job(tmp_path, "0_activation=relu", ["activation=relu"], {"val": {"loss": 0.5}, "status": "completed"})
    # the pruned jobs' val_loss is lower, of runs stopped early: they rank after the completed one
    write_job(tmp_path, "1_activation=sigmoid", ["activation=sigmoid"],
              {"val": {"loss": 0.1}, "status": "completed", "pruned": pruned})
    write_job(tmp_path, "2_activation=tanh", ["activation=tanh"], {"val": {"loss": 0.3}, "status": "completed",
                                                                   "pruned": {**pruned, "verdict": None,
                                                                              "pruner": "MedianPruner", "epoch": 3}})
    text = write_report(tmp_path, "loss", "min")
    rows = read_report(tmp_path)
    assert [(row["overrides"], row["status"]) for row in rows] == [
        ("activation=relu", "completed"), ("activation=sigmoid", "pruned (vanishing at epoch 2)"),
        ("activation=tanh", "pruned (MedianPruner at epoch 3)")]
    assert "3 jobs, 2 pruned (stopped early, ranked after the completed), 0 not completed" in text

    # a sweep whose only unfinished jobs were pruned ends well (exit 0)
    callback = SweepCallback()
    callback.sweep_dir = tmp_path
    callback.on_multirun_end(config=None)
    assert "did not complete" not in capsys.readouterr().err


# --- the command line -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_grid_with_verdict_pruning_stops_the_deep_sigmoid_job_and_reports_it(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, *SIGMOID, "sweep.prune_on_verdict=true", f"model.hidden_sizes=[32],{DEEP}",
                      epochs=3)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "pruned after epoch 1 of 3: its gradients are judged vanishing" in result.stdout + result.stderr
    rows = read_report(sweep_dir)
    assert [(row["overrides"], row["status"]) for row in rows] == [
        ("model.hidden_sizes=[32]", "completed"), (f"model.hidden_sizes={DEEP}", "pruned (vanishing at epoch 1)")]
    assert "2 jobs, 1 pruned" in (sweep_dir / "sweep_report.md").read_text()
    deep_dir = next(name for name in job_dirs(sweep_dir) if DEEP in name)
    metrics = json.loads((sweep_dir / deep_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 1 and metrics["pruned"]["verdict"] == "vanishing"


@pytest.mark.slow
@needs["optuna"]
def test_optuna_prunes_trials_per_epoch_and_a_resumed_study_numbers_on_and_keeps_them(tmp_path):
    import optuna

    sweep_dir = tmp_path / "study"
    # TPE's first trials are its seeded random ones: with seed 6 the depths come as shallow, shallow, deep
    # and, resumed (the seed moved on by 3), deep, shallow. The median pruner may prune from the second trial on.
    study = [group_override("hparams_search", "optuna"), *SIGMOID, "model.dropout=0",
             f"model.hidden_sizes=choice([32],{DEEP})", "hydra.sweeper.sampler.seed=6",
             "sweep.pruner.n_startup_trials=1", "sweep.pruner.n_warmup_steps=0"]
    first = multirun(sweep_dir, *study, "hydra.sweeper.n_trials=3", epochs=3)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    trials = optuna.load_study(study_name="mlp_digits", storage=storage).trials
    assert [(t.params["model.hidden_sizes"], t.state.name) for t in trials] == [
        ("[32]", "COMPLETE"), ("[32]", "COMPLETE"), (DEEP, "PRUNED")]
    shallow, _, deep = trials
    assert sorted(shallow.intermediate_values) == [1, 2, 3]  # one score per epoch
    assert shallow.intermediate_values[3] == pytest.approx(shallow.value)
    assert deep.user_attrs["pruned"] == "MedianPruner at epoch 1"
    assert list(deep.intermediate_values) == [1] and deep.value == deep.intermediate_values[1] > shallow.value
    assert read_report(sweep_dir)[-1]["status"] == "pruned (MedianPruner at epoch 1)"

    # resumed with verdict pruning on as well: two more trials, numbered 3 and 4, beside the earlier three
    second = multirun(sweep_dir, *study, "hydra.sweeper.n_trials=5", "sweep.prune_on_verdict=true", epochs=3)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "has 3 finished trials of 5: running 2 more" in second.stdout + second.stderr
    study_now = optuna.load_study(study_name="mlp_digits", storage=storage)
    assert [(t.number, t.params["model.hidden_sizes"], t.state.name, t.user_attrs.get("pruned"))
            for t in study_now.trials] == [
        (0, "[32]", "COMPLETE", None), (1, "[32]", "COMPLETE", None), (2, DEEP, "PRUNED", "MedianPruner at epoch 1"),
        (3, DEEP, "PRUNED", "vanishing at epoch 1"), (4, "[32]", "COMPLETE", None)]
    assert study_now.best_trial.state.name == "COMPLETE"
    assert sorted(int(name.split("_", 1)[0]) for name in job_dirs(sweep_dir)) == [0, 1, 2, 3, 4]
    rows = read_report(sweep_dir)
    assert len(rows) == 5 and [row["status"] for row in rows].count("completed") == 3
    assert "5 jobs, 2 pruned" in (sweep_dir / "sweep_report.md").read_text()


@pytest.mark.parametrize("pruner", [
    {"_target_": "optuna.pruners._percentile.np.save", "file": "/tmp/planted", "arr": [1]},  # a path through the package
    {"_target_": "optuna.pruners.PatientPruner", "patience": 1,
     "wrapped_pruner": {"_target_": "builtins.exec", "_args_": ["print('ran')"]}},  # a nested target
    {"_target_": "optuna.pruners.PatientPruner", "patience": 1, "wrapped_pruner": [{"_target_": "os.system"}]},
])
def test_a_pruner_names_no_code_but_a_class_of_optuna_pruners(pruner):
    from omegaconf import OmegaConf

    from mlpkit.errors import ConfigError
    from mlpkit.pruning import check_pruner

    with pytest.raises(ConfigError, match="sweep.pruner=.* is not valid: expected a pruner of optuna.pruners"):
        check_pruner(OmegaConf.create(pruner))
    check_pruner(OmegaConf.create({"_target_": "optuna.pruners.PatientPruner", "patience": 1,
                                   "wrapped_pruner": {"_target_": "optuna.pruners.MedianPruner"}}))

"""data.cv_folds=k: k runs on folds of the rows outside the test split, their summary, the command line,
multiruns and an Optuna study over cross-validations."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mlpkit
from mlpkit.callbacks import Callback
from mlpkit.cross_validation import CrossValidation, FoldStopped
from mlpkit.cv_summary import mean_std
from mlpkit.errors import EXIT_NONFINITE, ConfigError, TrainingStopped
from tests.conftest import ROOT, run_in_one_interpreter
from tests.test_sweep import group_override, job_dirs, multirun, needs, read_report

FOLDS = 3
CV = ["data=breast_cancer", "trainer.max_epochs=1", "model.hidden_sizes=[8]", "trainer.progress=false",
      "trainer.device=cpu"]


@pytest.fixture(scope="module")
def cv(tmp_path_factory) -> CrossValidation:
    """One 3-fold cross-validation of breast_cancer, a one-epoch run per fold, through mlpkit.train."""
    return mlpkit.train([*CV, f"data.cv_folds={FOLDS}"], run_dir=tmp_path_factory.mktemp("cv") / "cv")


def fold_metrics(cv: CrossValidation) -> list[dict]:
    return [json.loads((cv.dir / f"fold_{fold}" / "metrics.json").read_text()) for fold in range(FOLDS)]


def source_rows(fold_dir: Path) -> dict[str, set[int]]:
    """Which rows of scikit-learn's breast_cancer table the fold trained, validated and tested on: its
    data rebuilt from its own config, each standardised row matched to the raw row it came from."""
    from sklearn.datasets import load_breast_cancer

    from mlpkit.assemble import load_data
    from mlpkit.rundir import run_config

    data = load_data(run_config(fold_dir), torch.device("cpu"))
    table = (load_breast_cancer().data - data.feature_mean) / data.feature_std
    rows = {}
    for split in ("train", "val", "test"):
        x = getattr(data, split).x.numpy().astype(np.float64)
        distance = np.abs(x[:, None, :] - table[None]).max(axis=2)
        assert distance.min(axis=1).max() < 1e-4  # every row is one of the table's
        rows[split] = set(distance.argmin(axis=1).tolist())
        assert len(rows[split]) == len(x)
    return rows


# --- in-process: the folds and their summary ----------------------------------------------------------
@pytest.mark.slow
def test_load_run_opens_a_cross_validation_as_its_folds(cv):
    opened = mlpkit.load_run(cv.dir)
    assert isinstance(opened, CrossValidation) and [run.dir for run in opened.runs] == [run.dir for run in cv.runs]


def test_a_stopped_fold_pickles_whole_for_a_launchers_worker():
    import pickle

    from mlpkit.cross_validation import FoldStopped

    stop = FoldStopped("fold 2/5 stopped", 143)
    again = pickle.loads(pickle.dumps(stop))
    assert type(again) is FoldStopped and again.exit_code == 143 and str(again) == "fold 2/5 stopped"


def test_each_fold_is_a_run_of_its_own_that_load_run_opens(cv):
    assert isinstance(cv, CrossValidation) and [run.dir.name for run in cv.runs] == ["fold_0", "fold_1", "fold_2"]
    for fold, run in enumerate(cv.runs):
        assert list(run.dir.glob("events.out.tfevents.*")) and (run.dir / "checkpoints" / "last.pt").is_file()
        assert (run.dir / "train.log").read_text().count("epoch 1/1") == 1  # its own lines only
        loaded = mlpkit.load_run(run.dir)
        assert loaded.config.data.cv_fold == fold and loaded.config.data.cv_folds == FOLDS
        # its checkpoint on its own validation rows: the loss its metrics.json reports
        assert loaded.evaluate("val")["metrics"]["loss"] == pytest.approx(loaded.metrics["val"]["loss"], rel=1e-4)
        assert loaded.predict(np.zeros((2, 30))).shape == (2,)
    assert not list(cv.dir.glob("fold_*/.hydra/overrides.yaml"))  # a sweep report counts the CV once


@pytest.mark.slow
def test_validation_folds_are_disjoint_cover_the_rows_outside_the_test_split_and_share_its_test(cv):
    folds = [source_rows(cv.dir / f"fold_{fold}") for fold in range(FOLDS)]
    test = folds[0]["test"]
    assert all(rows["test"] == test for rows in folds)
    assert all(rows["train"] | rows["val"] == set(range(569)) - test and not rows["train"] & rows["val"]
               for rows in folds)
    vals = [rows["val"] for rows in folds]
    assert all(not vals[i] & vals[j] for i in range(FOLDS) for j in range(i + 1, FOLDS))
    assert set().union(*vals) == set(range(569)) - test


@pytest.mark.slow
def test_summary_holds_numpys_mean_and_population_std_of_every_metric_of_the_folds(cv):
    folds, summary, metrics = fold_metrics(cv), cv.summary, cv.metrics
    assert summary["std_ddof"] == 0 and summary["fold_dirs"] == ["fold_0", "fold_1", "fold_2"]
    for split in ("train", "val", "test"):
        names = set(folds[0][split])
        assert set(summary["mean"][split]) == names and "loss" in names
        for name in names:
            values = [fold[split][name] for fold in folds]
            assert summary["mean"][split][name] == pytest.approx(np.mean(values), rel=1e-12)
            assert summary["std"][split][name] == pytest.approx(np.std(values), rel=1e-9, abs=1e-15)
            assert metrics[split][name] == summary["mean"][split][name]  # the sweep report reads these
            assert metrics["cv"]["std"][split][name] == summary["std"][split][name]
    assert summary["objective"]["mean"] == summary["mean"]["val"]["loss"]
    assert metrics["status"] == "completed" and metrics["cv"]["fold_dirs"] == summary["fold_dirs"]
    # the history the sweep report draws: each epoch's mean over the folds
    assert metrics["history"][0]["loss/val"] == pytest.approx(np.mean([f["history"][0]["loss/val"] for f in folds]))


@pytest.mark.slow
def test_verdict_counts_add_up_to_the_folds_and_the_end_line_says_them(cv):
    folds, summary = fold_metrics(cv), cv.summary
    counts = summary["verdicts"]
    with_verdicts = sum(bool(fold["gradient_health"].get("verdicts")) for fold in folds
                        if fold["gradient_health"].get("judged"))
    assert counts["healthy"] + counts["not_judged"] + with_verdicts == FOLDS
    assert counts["healthy"] == sum(fold["gradient_health"].get("judged") is True
                                    and fold["gradient_health"]["healthy"] is True for fold in folds)
    assert cv.metrics["cv"]["verdicts"] == counts
    log = (cv.dir / "train.log").read_text()
    assert "fold 1/3" in log and "fold 3/3" in log
    mean, std = summary["mean"]["val"]["loss"], summary["std"]["val"]["loss"]
    assert f"cross-validation, 3 folds: val loss {mean_std(mean, std)}, accuracy" in log
    assert f"; gradients: {summary['verdicts_text']}" in log and summary["verdicts_text"]


@pytest.mark.slow
def test_the_figure_and_the_table_show_each_fold(cv):
    figure = cv.dir / "cv_val_curves.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    table = cv.table
    assert list(table.index) == ["fold_0", "fold_1", "fold_2", "mean", "std"]
    folds = fold_metrics(cv)
    assert list(table["val_loss"][:3]) == [fold["val"]["loss"] for fold in folds]
    assert table.loc["std", "test_accuracy"] == pytest.approx(np.std([fold["test"]["accuracy"] for fold in folds]))
    page = cv._repr_html_()
    assert "cross-validation, 3 folds" in page and "<table" in page and str(cv.dir) in page


def test_mean_std_shows_the_mean_to_the_stds_second_digit():
    assert mean_std(0.12345, 0.01032) == "0.123 ± 0.010"
    assert mean_std(0.95, 0.0) == "0.95 ± 0"
    assert mean_std(1234.6, 56.7) == "1235 ± 57"


class PoisonSecondFit(Callback):
    """The second fold's weights turn NaN when it starts: its loss is non-finite."""

    def __init__(self):
        self.fits = 0

    def on_fit_start(self, trainer):
        self.fits += 1
        if self.fits == 2:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


@pytest.mark.slow
def test_a_fold_with_a_non_finite_loss_stops_the_cross_validation_and_names_the_fold(tmp_path):
    run_dir = tmp_path / "cv"
    with pytest.raises(FoldStopped) as stopped:
        mlpkit.train([*CV, "data.cv_folds=3"], run_dir=run_dir, callbacks=[PoisonSecondFit()])
    message = str(stopped.value)
    assert isinstance(stopped.value, TrainingStopped) and stopped.value.exit_code == EXIT_NONFINITE
    assert message.startswith(f"cross-validation stopped in fold 2/3 ({run_dir / 'fold_1'}): ") and "fold_0 finished" in message
    assert json.loads((run_dir / "fold_0" / "metrics.json").read_text())["status"] == "completed"
    assert json.loads((run_dir / "fold_1" / "metrics.json").read_text())["status"] == "failed"
    assert not (run_dir / "fold_2").exists() and not (run_dir / "cv_summary.json").exists()
    top = json.loads((run_dir / "metrics.json").read_text())
    assert top["status"] == "failed" and top["error"] == message and top["cv"]["failed_fold"] == 1
    assert mlpkit.load_run(run_dir / "fold_0").metrics["status"] == "completed"


# --- the command line ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_cross_validation_ends_with_its_summary_and_a_fold_resumes_alone(tmp_path, monkeypatch):
    run_dir = tmp_path / "cv"
    # train.py twice, one after the other in one fresh interpreter: the cross-validation, then a fold's resume
    # as a user types it: no hydra.run.dir, the fold goes on in its own directory
    result, resumed = run_in_one_interpreter([
        ([ROOT / "train.py", f"hydra.run.dir={run_dir}", *CV, "data.cv_folds=2"], tmp_path),
        ([ROOT / "train.py", f"resume={run_dir / 'fold_1'}", "trainer.max_epochs=2"], tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    summary = json.loads((run_dir / "cv_summary.json").read_text())
    assert lines[-3].startswith("cross-validation, 2 folds: val loss ") and "; test loss " in lines[-3]
    assert lines[-3].endswith(f"; gradients: {summary['verdicts_text']}")
    assert lines[-1] == f"view them: tensorboard --logdir {run_dir}"

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fold = json.loads((run_dir / "fold_1" / "metrics.json").read_text())
    assert fold["epochs"] == 2 and fold["resumes"][0]["changes"] == {"trainer.max_epochs": 2}
    assert json.loads((run_dir / "fold_0" / "metrics.json").read_text())["epochs"] == 1  # the other fold as it was
    assert "resumed from" in (run_dir / "fold_1" / "train.log").read_text()

    # the cross-validation's own directory does not resume: one line naming its folds, no new directory
    # (mlpkit.train: the command line's run function and its run-directory rule, in this process)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        mlpkit.train([f"resume={run_dir}"])
    assert f"holds a cross-validation, which resumes fold by fold: resume={run_dir}/fold_<i> (fold_0, fold_1)" \
        in str(refused.value)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("folds, message", [
    (1, "data.cv_folds=1 is not valid"),
    (500, "data.cv_folds=500 is not valid: expected at most "),  # breast_cancer's smaller class: 180 rows
])
def test_bad_fold_counts_are_one_line_and_leave_no_fold(tmp_path, folds, message):
    """Through the command line's run function (mlpkit.train), in this process: exit 2 is ConfigError's."""
    run_dir = tmp_path / "cv"
    with pytest.raises(ConfigError) as refused:
        mlpkit.train([*CV, f"data.cv_folds={folds}"], run_dir=run_dir)
    assert message in str(refused.value) and "\n" not in str(refused.value) and refused.value.exit_code == 2
    assert not list(run_dir.glob("fold_*")) and not (run_dir / "metrics.json").exists()
    assert not (run_dir / "cv_summary.json").exists()


# --- sweeps ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@needs["optuna"]
def test_an_optuna_study_minimises_the_folds_mean_validation_loss_and_its_report_has_a_row_per_job(tmp_path):
    """A multirun of cross-validations (here an Optuna study's): each trial's value and each report row are
    its job's mean over its folds; the report counts the jobs, not the folds."""
    import optuna

    sweep_dir = tmp_path / "study"
    result = multirun(sweep_dir, group_override("hparams_search", "optuna"), "hydra.sweeper.n_trials=2",
                      "data=breast_cancer", "data.cv_folds=2", "model.hidden_sizes=choice([8],[8,8])")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="mlp_breast_cancer", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    trials = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    means = sorted(json.loads((job / "cv_summary.json").read_text())["mean"]["val"]["loss"]
                   for job in sweep_dir.glob("*/cv_summary.json") for job in [job.parent])
    assert sorted(trial.value for trial in trials) == pytest.approx(means, rel=1e-6)
    rows = read_report(sweep_dir)
    assert len(rows) == 2 and all(row["status"] == "completed" for row in rows), rows  # the jobs, not the folds
    assert all(sorted(p.name for p in (sweep_dir / name).glob("fold_*")) == ["fold_0", "fold_1"]
               for name in job_dirs(sweep_dir))
    assert sorted(float(row["val_loss"]) for row in rows) == pytest.approx(means, rel=1e-3)

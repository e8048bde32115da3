"""Predictions and regression outputs keep the digits of a column like 1e8 + noise (float32 holds 1e8 in
steps of 8): the saved standardisation is applied in float64, as training applied it, and values
leave mlpkit in float64. Also: the sweep report's CSV cells cannot start a spreadsheet formula."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mlpkit
from mlpkit.objective import build_objective
from mlpkit.prediction import predict_csv
from tests.conftest import script

TINY = ["model.hidden_sizes=[16]", "trainer.device=cpu", "trainer.progress=false", "trainer.max_epochs=2",
        "trainer.batch_size=8", "optimizer.lr=0.01"]
BIG = 1e8  # float32 steps by 8 here: noise below 4 vanishes in a float32 cast


def write_rows(path: Path, noise: np.ndarray, other: np.ndarray, target: np.ndarray, target_format: str) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["big", "other", "target"])
        writer.writerows([[f"{BIG + u:.6f}", f"{o:.6f}", format(t, target_format)]
                          for u, o, t in zip(noise, other, target)])
    return path


def tables(base: Path, seed: int, target: callable, target_format: str) -> tuple[Path, Path]:
    """A training file and a test file (data.test_path: the test split is that file, row for row)."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, rows in (("train", 400), ("test", 100)):
        noise = rng.uniform(0.1, 1.0, rows) * rng.choice([-1.0, 1.0], rows)  # no row near the boundary
        paths.append(write_rows(base / f"{name}.csv", noise, rng.normal(size=rows), target(noise), target_format))
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def big_runs(tmp_path_factory) -> dict[str, tuple[mlpkit.Run, Path]]:
    """A binary run whose class is the sign of the noise on 1e8, and a regression of 1e8 + 3 * noise."""
    base = tmp_path_factory.mktemp("precision")
    made = {}
    for name, target, target_format, task in (("binary", lambda u: (u > 0).astype(int), "d", "binary"),
                                              ("regression", lambda u: BIG + 3 * u, ".6f", "regression")):
        (base / name).mkdir()
        train, test = tables(base / name, 0, target, target_format)
        run = mlpkit.train([*TINY, "data=csv", f"data.path={train}", f"data.test_path={test}",
                            "data.target=target", f"data.task={task}"], run_dir=base / name / "run")
        made[name] = (run, test)
    return made


def pipeline_test_logits(run: mlpkit.Run) -> torch.Tensor:
    """The model's logits on the test split as training's own pipeline built it (float64 centring)."""
    from omegaconf import OmegaConf

    from mlpkit.data import build_data

    data = build_data(OmegaConf.to_container(run.config.data, resolve=True))
    with torch.no_grad():
        return run.model.logits(data.test.x)


@pytest.mark.slow
def test_a_class_decided_by_noise_on_1e8_is_predicted_as_the_model_sees_it(big_runs, tmp_path):
    run, test = big_runs["binary"]
    frame = pd.read_csv(test)
    expected = (pipeline_test_logits(run)[:, 0] > 0).long().numpy()
    accuracy = run.evaluate("test")["metrics"]["accuracy"]
    assert accuracy > 0.9  # the run learned the noise: training kept its digits
    assert np.array_equal(run.predict(frame[["big", "other"]]), expected)
    assert np.array_equal(run.predict(frame[["big", "other"]].to_numpy()), expected)
    assert np.mean(run.predict(frame) == frame["target"].to_numpy()) == pytest.approx(accuracy)
    # scripts/predict.py, a process of its own, through mlpkit.prediction
    result = script("predict", f"run={run.dir}", f"input={test}", "output=pred.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    predicted = pd.read_csv(tmp_path / "pred.csv")["prediction"].to_numpy()
    assert np.array_equal(predicted, expected)


@pytest.mark.slow
def test_a_regression_target_of_1e8_plus_small_values_comes_back_in_its_units(big_runs, tmp_path, monkeypatch):
    run, test = big_runs["regression"]
    frame = pd.read_csv(test)
    true = frame["target"].to_numpy()
    report = run.evaluate("test")["metrics"]
    assert report["r2"] > 0.5  # the model follows the noise...
    predicted = run.predict(frame)
    assert predicted.dtype == np.float64 and len(np.unique(predicted)) > 50  # ...in steps far below 8
    logits = pipeline_test_logits(run)[:, 0].double().numpy()
    standardized = (true - run.preprocessing["target_mean"]) / run.preprocessing["target_std"]
    assert np.abs(predicted - true) == pytest.approx(np.abs(logits - standardized) * run.preprocessing["target_std"],
                                                     abs=1e-3)
    # the metrics in original units are those of the values a user gets
    assert np.mean(np.abs(predicted - true)) == pytest.approx(report["mae"], rel=1e-3)
    assert np.sqrt(np.mean((predicted - true) ** 2)) == pytest.approx(report["rmse"], rel=1e-3)
    assert run.metrics["test"]["mae"] == pytest.approx(report["mae"], rel=1e-3)
    # predict's CSV writes as many digits as the values hold
    monkeypatch.chdir(tmp_path)
    predict_csv(run.dir, str(test), "pred.csv")
    written = pd.read_csv(tmp_path / "pred.csv")["prediction"].to_numpy()
    assert written == pytest.approx(predicted, abs=1e-3)


def test_regression_outputs_and_metrics_at_1e8_keep_their_units():
    objective = build_objective("identity", "mse", "regression", "d", target_mean=BIG, target_std=1.0)
    logits = torch.tensor([[0.5], [-1.25], [2.0]])
    assert objective.predict(logits)[:, 0].tolist() == [BIG + 0.5, BIG - 1.25, BIG + 2.0]
    metrics = objective.metrics(logits, torch.tensor([[0.0], [-1.0], [3.0]]))  # errors 0.5, -0.25, -1
    assert metrics["mae"].item() == pytest.approx(1.75 / 3)
    assert metrics["rmse"].item() == pytest.approx(np.sqrt(1.3125 / 3))
    true = np.array([0.0, -1.0, 3.0])
    assert metrics["r2"].item() == pytest.approx(1 - 1.3125 / np.sum((true - true.mean()) ** 2))


def test_sweep_report_csv_cells_cannot_start_a_formula(tmp_path):
    from mlpkit.sweeps import write_csv

    path = tmp_path / "sweep_report.csv"
    write_csv(path, ["rank", "overrides", "val_loss", "status"],
              [["1", "=HYPERLINK(\"http://x\",\"y\")", "-0.25", "completed"],
               ["2", "+experiment=x,@sum(A1)", "1e-05", "-failed"],
               ["3", "\tlr=1", "-3", "\rx"]])
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["rank", "overrides", "val_loss", "status"]
    assert rows[1] == ["1", "'=HYPERLINK(\"http://x\",\"y\")", "-0.25", "completed"]
    assert rows[2] == ["2", "'+experiment=x,@sum(A1)", "1e-05", "'-failed"]
    assert rows[3] == ["3", "'\tlr=1", "-3", "'\rx"]


def test_a_value_the_saved_standardisation_carries_beyond_float32_is_one_line_naming_it(tmp_path):
    from mlpkit.errors import DataError
    from mlpkit.model_inputs import features
    from mlpkit.prediction import read_feature_rows

    preprocessing = {"feature_names": ["a", "b"], "feature_mean": [BIG, 0.0], "feature_std": [1e-36, 1.0]}
    path = tmp_path / "new.csv"
    path.write_text(f"a,b\n{BIG!r},1\n{BIG + 1e3!r},2\n")
    with pytest.raises(DataError) as error:
        read_feature_rows(path, ["a", "b"], ",", preprocessing, standardize=True)
    assert str(error.value) == (f"input={path}: line 3, column 'a': '100001000.0' standardised with the run's "
                                "feature_std 1e-36 is beyond float32's range; expected values of the scale the "
                                "run trained on")
    with pytest.raises(DataError) as error:
        features(np.array([[BIG, 1.0], [BIG + 1e3, 2.0]]), preprocessing)
    assert str(error.value).startswith("x=an array of shape (2, 2): row 1, feature 'a' is 1.00001e+08, which "
                                       "standardised with the run's mean 1e+08 and std 1e-36 is beyond float32's range")
    # a row on the mean is standardised to 0 in float64, whatever the std
    assert features(np.array([[BIG, 1.0]]), preprocessing).tolist() == [[0.0, 1.0]]
    path.write_text(f"a,b\n{BIG!r},1\n")
    assert read_feature_rows(path, ["a", "b"], ",", preprocessing, standardize=True).tolist() == [[0.0, 1.0]]

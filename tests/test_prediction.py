"""scripts/predict.py on real tiny runs: what it prints, writes and exits with."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mlpkit.errors import ConfigError
from mlpkit.evaluation import evaluate_run
from mlpkit.prediction import predict_csv
from tests.conftest import script


def write_test_rows_as_csv(run_dir: Path, path: Path) -> dict:
    """Write the run's test split back in raw units, with the target as an extra column; return the
    split's metadata. Rebuilt from the run's own config, as evaluate does."""
    from omegaconf import OmegaConf

    from mlpkit.data import build_data

    data = build_data(OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml").data))
    raw = data.test.x.numpy() * data.feature_std + data.feature_mean
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["target", *data.feature_names])  # the target first: extra columns are ignored
        targets = data.test.y.numpy().reshape(len(raw), -1)[:, 0]
        writer.writerows([[float(y), *(f"{v:.9g}" for v in row)] for y, row in zip(targets, raw)])
    return {"feature_names": data.feature_names, "class_names": data.class_names, "y": data.test.y.numpy(),
            "target": data.target_mean + data.target_std * data.test.y.numpy().reshape(-1)}


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.mark.slow
def test_predict_a_bundled_run_gives_labels_and_one_probability_per_class(runs, tmp_path):
    run_dir = runs["cancer"]
    split = write_test_rows_as_csv(run_dir, tmp_path / "new.csv")
    assert split["feature_names"][0] == "mean radius"  # columns are found by name, spaces and all
    result = script("predict", f"run={run_dir}", "input=new.csv", "output=out/pred.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote 86 predictions to out/pred.csv" in result.stdout
    header, rows = read_csv(tmp_path / "out" / "pred.csv")
    assert header == ["prediction", "probability_malignant", "probability_benign"]
    probabilities = np.array([[float(p) for p in row[1:]] for row in rows])
    assert probabilities.sum(axis=1) == pytest.approx(1.0, abs=1e-5)
    labels = [row[0] for row in rows]
    assert labels == [split["class_names"][i] for i in probabilities.argmax(axis=1)]
    # The saved standardisation and label mapping give what evaluate got from the rebuilt data.
    if not (run_dir / "evaluation.json").exists():
        evaluate_run(run_dir)
    report = json.loads((run_dir / "evaluation.json").read_text())
    predicted_counts = np.array(report["confusion_matrix"]).sum(axis=0).tolist()
    assert [labels.count(name) for name in report["class_names"]] == predicted_counts
    correct = sum(label == split["class_names"][y] for label, y in zip(labels, split["y"]))
    assert correct / len(labels) == pytest.approx(report["metrics"]["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_predict_a_csv_regression_run_gives_values_in_the_target_units(runs, tmp_path, monkeypatch, capsys):
    run_dir = runs["iris"]
    split = write_test_rows_as_csv(run_dir, tmp_path / "new.csv")
    monkeypatch.chdir(tmp_path)
    assert predict_csv(run_dir, "new.csv") is None  # no output: stdout (what the script runs, in-process)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "prediction" and len(lines) == 1 + len(split["target"])
    predicted = np.array([float(value) for value in lines[1:]])
    rmse = float(np.sqrt(np.mean((predicted - split["target"]) ** 2)))
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert rmse == pytest.approx(trained["test"]["rmse"], rel=1e-4)


BAD_INPUT = {
    "missing column": "input=new.csv: line 1: no column mean texture; the run was trained on 30 feature columns",
    "not a number": "input=new.csv: line 3, column 'mean area': missing value 'n/a'; fill it in or remove the row",
}


def write_bad_input(run_dir: Path, path: Path, problem: str) -> None:
    """The run's test rows with one problem: a feature column renamed, or a cell that is not a number."""
    write_test_rows_as_csv(run_dir, path)
    header, rows = read_csv(path)
    if problem == "missing column":
        header[header.index("mean texture")] = "texture"
    else:
        rows[1][header.index("mean area")] = "n/a"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])


@pytest.mark.slow
@pytest.mark.parametrize("problem", sorted(BAD_INPUT))
def test_predict_bad_input_is_one_line_naming_file_line_and_column(runs, tmp_path, monkeypatch, problem):
    write_bad_input(runs["cancer"], tmp_path / "new.csv", problem)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        predict_csv(runs["cancer"], "new.csv", "pred.csv")
    assert str(error.value).startswith(BAD_INPUT[problem]) and "\n" not in str(error.value)
    assert not (tmp_path / "pred.csv").exists()


@pytest.mark.slow
def test_predict_bad_input_stops_the_script_with_one_line_and_exit_code_2(runs, tmp_path):
    write_bad_input(runs["cancer"], tmp_path / "new.csv", "missing column")
    result = script("predict", f"run={runs['cancer']}", "input=new.csv", "output=pred.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Config error: {BAD_INPUT['missing column']}")
    assert not (tmp_path / "pred.csv").exists()

"""scripts/evaluate.py and scripts/predict.py on real tiny runs: what they print, write and exit with."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

TINY = ("trainer.max_epochs=2", "model.hidden_sizes=[16]", "trainer.progress=false")
IRIS = ROOT / "examples" / "iris.csv"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs trained once, side by side: a bundled binary set whose classes have names (sigmoid
    head), and a regression on the user's own CSV file."""
    base = tmp_path_factory.mktemp("runs")
    commands = {
        "cancer": ("data=breast_cancer",),
        "iris": ("data=csv", f"data.path={IRIS}", "data.target=petal_width",
                 "data.features=[sepal_length,sepal_width,petal_length]"),
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        done = {name: pool.submit(run_cli, base / name, *overrides, *TINY)
                for name, overrides in commands.items()}
    for name, future in done.items():
        assert future.result().returncode == 0, f"{name}: {future.result().stderr}"
    return {name: base / name for name in commands}


def script(name: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_rows_as_csv(run_dir: Path, path: Path) -> dict:
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


test_rows_as_csv.__test__ = False  # a helper, not a test


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


# --- evaluate -------------------------------------------------------------------------------------
def test_evaluate_classification_prints_and_saves_the_test_metrics_and_confusion_matrix(runs, tmp_path):
    run_dir = runs["cancer"]
    result = script("evaluate", f"run={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["best"]["epoch"] == trained["epochs"]  # best.pt is the final model here
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert report["checkpoint"].endswith("best.pt") and "best.pt" in result.stdout
    assert report["split"] == "test" and report["samples"] == 86
    # The rebuilt test split is the run's own: the same numbers the training run reported.
    assert report["metrics"]["accuracy"] == pytest.approx(trained["test"]["accuracy"], abs=1e-6)
    assert report["metrics"]["loss"] == pytest.approx(trained["test"]["loss"], rel=1e-5)
    assert f"accuracy {report['metrics']['accuracy']:.4g}" in result.stdout

    matrix = np.array(report["confusion_matrix"])
    assert report["class_names"] == ["malignant", "benign"] and matrix.sum() == 86
    assert np.trace(matrix) / 86 == pytest.approx(report["metrics"]["accuracy"], abs=1e-6)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("true \\ predicted"))
    assert header.split()[-3:] == ["malignant", "benign", "recall"]
    for name, row in zip(report["class_names"], matrix):
        printed = next(line for line in lines if line.startswith(name + " "))
        assert [int(count) for count in printed.split()[1:3]] == row.tolist()
    assert any(line.startswith("precision ") for line in lines)
    assert (run_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()  # writes only the run dir


def test_evaluate_regression_reports_metrics_in_original_units_and_a_figure(runs, tmp_path):
    run_dir = runs["iris"]
    result = script("evaluate", f"run={run_dir}", "checkpoint=last", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "evaluation.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert report["checkpoint"].endswith("last.pt") and report["task"] == "regression"
    for name in ("rmse", "mae", "r2"):
        assert report["metrics"][name] == pytest.approx(trained["test"][name], rel=1e-4, abs=1e-6)
    assert "confusion" not in result.stdout and "rmse" in result.stdout
    assert (run_dir / "predicted_vs_true.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_is_best_then_last(tmp_path):
    from mlpkit.config import ConfigError
    from mlpkit.evaluation import find_checkpoint

    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="checkpoints/best.pt or checkpoints/last.pt"):
        find_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "last.pt").touch()
    assert find_checkpoint(tmp_path).name == "last.pt"
    (tmp_path / "checkpoints" / "best.pt").touch()
    assert find_checkpoint(tmp_path).name == "best.pt"
    assert find_checkpoint(tmp_path, "last").name == "last.pt"


def test_evaluate_errors_are_one_line_with_exit_code_2(runs, tmp_path):
    missing = script("evaluate", f"run={tmp_path / 'nope'}", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"Config error: run={tmp_path / 'nope'} is not valid: expected a run directory written by python "
        f"train.py, e.g. run=outputs/2024-05-01/12-00-00. {tmp_path / 'nope'} does not exist"]

    unfinished = tmp_path / "unfinished"  # a run stopped before its first checkpoint
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "config.yaml").write_text((runs["cancer"] / ".hydra" / "config.yaml").read_text())
    no_checkpoint = script("evaluate", f"run={unfinished}", cwd=tmp_path)
    assert no_checkpoint.returncode == 2 and "Traceback" not in no_checkpoint.stderr
    assert len(no_checkpoint.stderr.strip().splitlines()) == 1
    assert "checkpoints/best.pt or checkpoints/last.pt" in no_checkpoint.stderr

    not_given = script("evaluate", cwd=tmp_path)
    assert not_given.returncode == 2 and not_given.stderr.startswith("Config error: run=??? is not valid")
    typo = script("evaluate", f"run={runs['cancer']}", "chekpoint=last", cwd=tmp_path)
    assert typo.returncode == 2
    assert typo.stderr.strip() == ("Config error: chekpoint=last is not valid: 'chekpoint' is not a config "
                                   "key; expected one of run, checkpoint, device")


# --- predict --------------------------------------------------------------------------------------
def test_predict_a_bundled_run_gives_labels_and_one_probability_per_class(runs, tmp_path):
    run_dir = runs["cancer"]
    split = test_rows_as_csv(run_dir, tmp_path / "new.csv")
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
        assert script("evaluate", f"run={run_dir}", cwd=tmp_path).returncode == 0
    report = json.loads((run_dir / "evaluation.json").read_text())
    predicted_counts = np.array(report["confusion_matrix"]).sum(axis=0).tolist()
    assert [labels.count(name) for name in report["class_names"]] == predicted_counts
    correct = sum(label == split["class_names"][y] for label, y in zip(labels, split["y"]))
    assert correct / len(labels) == pytest.approx(report["metrics"]["accuracy"], abs=1e-6)


def test_predict_a_csv_regression_run_gives_values_in_the_target_units(runs, tmp_path):
    run_dir = runs["iris"]
    split = test_rows_as_csv(run_dir, tmp_path / "new.csv")
    result = script("predict", f"run={run_dir}", "input=new.csv", cwd=tmp_path)  # no output: stdout
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "prediction" and len(lines) == 1 + len(split["target"])
    predicted = np.array([float(value) for value in lines[1:]])
    rmse = float(np.sqrt(np.mean((predicted - split["target"]) ** 2)))
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert rmse == pytest.approx(trained["test"]["rmse"], rel=1e-4)


@pytest.mark.parametrize("problem", ["missing column", "not a number"])
def test_predict_bad_input_is_one_line_naming_file_line_and_column(runs, tmp_path, problem):
    run_dir = runs["cancer"]
    test_rows_as_csv(run_dir, tmp_path / "new.csv")
    header, rows = read_csv(tmp_path / "new.csv")
    if problem == "missing column":
        header[header.index("mean texture")] = "texture"
        expected = "input=new.csv: line 1: no column mean texture; the run was trained on 30 feature columns"
    else:
        rows[1][header.index("mean area")] = "n/a"
        expected = "input=new.csv: line 3, column 'mean area': 'n/a' is not a finite number"
    with open(tmp_path / "new.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    result = script("predict", f"run={run_dir}", "input=new.csv", "output=pred.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Config error: {expected}")
    assert not (tmp_path / "pred.csv").exists()


def test_installed_console_scripts_are_the_same_commands(runs, tmp_path):
    bin_dir = Path(sys.executable).parent
    evaluate = subprocess.run([str(bin_dir / "mlpkit-evaluate"), f"run={runs['cancer']}", "checkpoint=last"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert evaluate.returncode == 0, evaluate.stderr
    assert "last.pt" in evaluate.stdout and "true \\ predicted" in evaluate.stdout
    missing = subprocess.run([str(bin_dir / "mlpkit-predict"), f"run={tmp_path / 'nowhere'}", "input=x.csv"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr

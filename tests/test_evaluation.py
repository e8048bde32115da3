"""scripts/evaluate.py on real tiny runs: what it prints, writes and exits with (and both console scripts)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mlpkit.errors import ConfigError
from mlpkit.evaluation import evaluate_run
from tests.conftest import compose_config, hydra_error, script


# --- evaluate -------------------------------------------------------------------------------------
@pytest.mark.slow
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


@pytest.mark.slow
def test_evaluate_regression_reports_metrics_in_original_units_and_a_figure(runs, capsys):
    run_dir = runs["iris"]
    evaluate_run(run_dir, "last")  # what the script runs, in-process
    printed = capsys.readouterr().out
    report = json.loads((run_dir / "evaluation.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert report["checkpoint"].endswith("last.pt") and report["task"] == "regression"
    for name in ("rmse", "mae", "r2"):
        assert report["metrics"][name] == pytest.approx(trained["test"][name], rel=1e-4, abs=1e-6)
    assert "confusion" not in printed and "rmse" in printed
    assert (run_dir / "predicted_vs_true.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_is_best_then_last(tmp_path):
    from mlpkit.errors import ConfigError
    from mlpkit.rundir import find_checkpoint

    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="checkpoints/best.pt or checkpoints/last.pt"):
        find_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "last.pt").touch()
    assert find_checkpoint(tmp_path).name == "last.pt"
    (tmp_path / "checkpoints" / "best.pt").touch()
    assert find_checkpoint(tmp_path).name == "best.pt"
    assert find_checkpoint(tmp_path, "last").name == "last.pt"


RUN_HINT = "expected a run directory written by python train.py, e.g. run=outputs/2024-05-01/12-00-00"
TYPO = ("chekpoint=last is not valid: 'chekpoint' is not a config key; expected one of run, checkpoint, device, "
        "allow_changed_data (did you mean checkpoint?)")


def test_evaluate_errors_name_the_run_and_what_is_allowed(tmp_path):
    nope = tmp_path / "nope"
    with pytest.raises(ConfigError) as missing:
        evaluate_run(nope)
    assert str(missing.value) == f"run={nope} is not valid: {RUN_HINT}. {nope} does not exist"

    unfinished = tmp_path / "unfinished"  # a run stopped before its first checkpoint
    (unfinished / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config("data=breast_cancer"), unfinished / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="checkpoints/best.pt or checkpoints/last.pt") as no_checkpoint:
        evaluate_run(unfinished)
    assert "\n" not in str(no_checkpoint.value)

    with pytest.raises(ConfigError) as not_given:
        evaluate_run("???")  # what the script passes for a run= it was not given
    assert str(not_given.value).startswith("run=??? is not valid")
    assert hydra_error("run=x", "chekpoint=last", config_name="evaluate") == TYPO


@pytest.mark.slow
def test_evaluate_errors_are_one_line_with_exit_code_2(tmp_path):
    nope = tmp_path / "nope"
    missing = script("evaluate", f"run={nope}", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"Config error: run={nope} is not valid: {RUN_HINT}. {nope} does not exist"]

    not_given = script("evaluate", cwd=tmp_path)
    assert not_given.returncode == 2 and not_given.stderr.startswith("Config error: run=??? is not valid")
    typo = script("evaluate", f"run={tmp_path}", "chekpoint=last", cwd=tmp_path)
    assert typo.returncode == 2
    assert typo.stderr.strip() == f"Config error: {TYPO}"


@pytest.mark.slow
def test_installed_console_scripts_are_the_same_commands(runs, tmp_path):
    bin_dir = Path(sys.executable).parent
    evaluate = subprocess.run([str(bin_dir / "mlpkit-evaluate"), f"run={runs['cancer']}", "checkpoint=last"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert evaluate.returncode == 0, evaluate.stderr
    assert "last.pt" in evaluate.stdout and "true \\ predicted" in evaluate.stdout
    missing = subprocess.run([str(bin_dir / "mlpkit-predict"), f"run={tmp_path / 'nowhere'}", "input=x.csv"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr

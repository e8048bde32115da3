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


# --- output= may not destroy what it must not ------------------------------------------------------
def fake_run(base: Path) -> Path:
    """A run directory as far as predict looks before it loads anything: config, checkpoints,
    preprocessing.json and the other files a run writes; an input file with its feature columns."""
    run_dir = base / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("data: {source: moons}\n")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"weights")
    (run_dir / "checkpoints" / "last.pt").hardlink_to(run_dir / "checkpoints" / "best.pt")
    (run_dir / "preprocessing.json").write_text(json.dumps({
        "task": "binary", "feature_names": ["x1", "x2"], "feature_mean": [0, 0], "feature_std": [1, 1],
        "target_mean": 0.0, "target_std": 1.0, "class_names": ["upper", "lower"]}))
    for name in ("metrics.json", "labels.json", "train.log", "events.out.tfevents.1.host.0"):
        (run_dir / name).write_text(name)
    (base / "new.csv").write_text("x1,x2\n0.5,1.5\n")
    return run_dir


def snapshot(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def protected_outputs(base: Path, run_dir: Path) -> dict[str, str]:
    """name -> an output= that must be refused, made on disk as the case needs."""
    (base / "hard_link.csv").hardlink_to(base / "new.csv")
    (base / "sym_link.csv").symlink_to(base / "new.csv")
    (base / "ckpt_link.pt").hardlink_to(run_dir / "checkpoints" / "best.pt")
    (base / "ckpt_dir").symlink_to(run_dir / "checkpoints")
    (base / "sub").mkdir()
    (base / "a_file").write_text("mine")
    return {
        "the input through a hard link": "hard_link.csv",
        "the input through a symlink": "sym_link.csv",
        "the input spelled another way": "sub/../new.csv",
        "the run's best checkpoint": f"{run_dir}/checkpoints/best.pt",
        "a new file among the checkpoints": f"{run_dir}/checkpoints/pred.csv",
        "a hard link of a checkpoint": "ckpt_link.pt",
        "the checkpoints through a symlinked folder": "ckpt_dir/pred.csv",
        "metrics.json": f"{run_dir}/metrics.json",
        "labels.json": f"{run_dir}/labels.json",
        "preprocessing.json": f"{run_dir}/./preprocessing.json",
        "the run's config": f"{run_dir}/.hydra/config.yaml",
        "an event file": f"{run_dir}/events.out.tfevents.1.host.0",
        "evaluation.json, not yet written": f"{run_dir}/evaluation.json",
        "the run directory": str(run_dir),
        "a directory": "sub",
        "a folder that does not exist yet": "new_folder/",
        "a path under a file": "a_file/pred.csv",
    }


@pytest.mark.parametrize("case", [
    "the input through a hard link", "the input through a symlink", "the input spelled another way",
    "the run's best checkpoint", "a new file among the checkpoints", "a hard link of a checkpoint",
    "the checkpoints through a symlinked folder", "metrics.json", "labels.json", "preprocessing.json",
    "the run's config", "an event file", "evaluation.json, not yet written", "the run directory", "a directory",
    "a folder that does not exist yet", "a path under a file"])
def test_predict_refuses_an_output_it_must_not_write_and_writes_nothing(tmp_path, monkeypatch, case):
    run_dir = fake_run(tmp_path)
    output = protected_outputs(tmp_path, run_dir)[case]
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        predict_csv(run_dir, "new.csv", output)
    message = str(error.value)
    assert message.startswith(f"output={output} is not valid: expected ") and "\n" not in message
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "new_folder").exists()


@pytest.mark.parametrize("damage, message", [
    ("no checkpoints", "has none; did the run stop before its first epoch ended?"),
    ("no preprocessing.json", "a run directory holding preprocessing.json"),
    ("damaged preprocessing.json", "preprocessing.json is not valid JSON"),
])
def test_predict_on_a_damaged_or_unfinished_run_is_one_line(tmp_path, monkeypatch, damage, message):
    import shutil

    run_dir = fake_run(tmp_path)
    if damage == "no checkpoints":
        shutil.rmtree(run_dir / "checkpoints")
    elif damage == "no preprocessing.json":
        (run_dir / "preprocessing.json").unlink()
    else:
        (run_dir / "preprocessing.json").write_text('{"task": "bin')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        predict_csv(run_dir, "new.csv", "pred.csv")
    assert str(error.value).startswith("run=") and message in str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "pred.csv").exists()


@pytest.mark.slow
def test_predict_refuses_the_runs_own_checkpoint_from_the_command_line(runs, tmp_path):
    run_dir = runs["cancer"]
    write_test_rows_as_csv(run_dir, tmp_path / "new.csv")
    best = run_dir / "checkpoints" / "best.pt"
    weights = best.read_bytes()
    result = script("predict", f"run={run_dir}", "input=new.csv", f"output={best}", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"Config error: output={best} is not valid: expected ")
    assert len(result.stderr.strip().splitlines()) == 1 and best.read_bytes() == weights
    (tmp_path / "linked.csv").hardlink_to(tmp_path / "new.csv")
    rows = (tmp_path / "new.csv").read_bytes()
    result = script("predict", f"run={run_dir}", "input=new.csv", "output=linked.csv", cwd=tmp_path)
    assert result.returncode == 2 and "it is the input file" in result.stderr
    assert (tmp_path / "new.csv").read_bytes() == rows


@pytest.mark.slow
def test_predict_replaces_an_existing_output_in_one_step(runs, tmp_path, monkeypatch):
    import os

    write_test_rows_as_csv(runs["cancer"], tmp_path / "new.csv")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pred.csv").write_text("an earlier table\n")
    (tmp_path / "earlier.csv").hardlink_to(tmp_path / "pred.csv")  # another name of the old file
    predict_csv(runs["cancer"], "new.csv", "pred.csv")  # an unprotected output is replaced, as before
    assert read_csv(tmp_path / "pred.csv")[0][0] == "prediction"
    assert (tmp_path / "earlier.csv").read_text() == "an earlier table\n"  # a new file, not rewritten in place

    good = (tmp_path / "pred.csv").read_bytes()

    def disk_full(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(ConfigError, match=r"^output=pred.csv is not valid: .*No space left on device"):
        predict_csv(runs["cancer"], "new.csv", "pred.csv")
    assert (tmp_path / "pred.csv").read_bytes() == good  # the good table stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier.csv", "new.csv", "pred.csv"]


@pytest.mark.slow
def test_predict_without_labels_json_and_on_a_header_only_input(runs, tmp_path, monkeypatch):
    import shutil

    run_dir = Path(shutil.copytree(runs["cancer"], tmp_path / "run"))
    write_test_rows_as_csv(run_dir, tmp_path / "new.csv")
    monkeypatch.chdir(tmp_path)
    predict_csv(run_dir, "new.csv", "with.csv")
    (run_dir / "labels.json").unlink()  # the class names are in preprocessing.json too
    predict_csv(run_dir, "new.csv", "without.csv")
    assert (tmp_path / "with.csv").read_bytes() == (tmp_path / "without.csv").read_bytes()
    (tmp_path / "header.csv").write_text((tmp_path / "new.csv").read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match="^input=header.csv: has a header but no data rows"):
        predict_csv(run_dir, "header.csv", "none.csv")
    assert not (tmp_path / "none.csv").exists()


# --- labels that a spreadsheet would run as formulas ----------------------------------------------
def test_spreadsheet_cells_prefix_text_that_starts_a_formula_and_leave_numbers():
    from mlpkit.prediction import spreadsheet_cell

    for text in ('=HYPERLINK("http://x","y")', "+cmd", "-foo", "@sum(A1)", "\tx", "\rx", "-1+1", "-"):
        assert spreadsheet_cell(text) == "'" + text
    for text in ("-1", "-0.25", "+3", "-1e-05", "setosa", "", "a=b", "3"):
        assert spreadsheet_cell(text) == text


@pytest.mark.slow
def test_predict_csv_quotes_labels_that_would_be_formulas(tmp_path, monkeypatch):
    import mlpkit
    from tests.test_run_api_hostile import LEARNS_CORNERS, corner_rows, write_table

    labels = ['=HYPERLINK("http://x","y")', "-1", "+cmd", "@sum(A1)"]
    path = write_table(tmp_path / "evil.csv", *corner_rows(labels))
    run = mlpkit.train([*LEARNS_CORNERS, "data=csv", f"data.path={path}", "data.target=label"],
                       run_dir=tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    predict_csv(run.dir, "evil.csv", "pred.csv")
    header, rows = read_csv(tmp_path / "pred.csv")
    assert header == ["prediction", *(f"probability_{name}" for name in sorted(labels))]
    cells = [row[0] for row in rows]
    assert set(cells) == {'\'=HYPERLINK("http://x","y")', "-1", "'+cmd", "'@sum(A1)"}
    assert cells == ["-1" if label == "-1" else "'" + label for label in run.predict(corner_rows(labels)[0])]

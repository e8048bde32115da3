"""data=csv: the user's own table, read as the user wrote it, and one clear line per bad file."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlpkit.data import DataError, build_data, save_label_mapping
from mlpkit.errors import ConfigError
from tests.conftest import run_cli_in_one_interpreter


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def iris_like(path: Path, n: int = 30) -> Path:
    """Three string classes; each feature tells the class apart."""
    species = ["setosa", "virginica", "versicolor"]
    rows = [f"{i % 3 + 0.1 * i:.2f},{10 * (i % 3)},{species[i % 3]}" for i in range(n)]
    return write_csv(path, "petal,sepal,species", rows)


def load(path: Path | str, **keys) -> object:
    return build_data({"source": "csv", "path": None if path is None else str(path),
                       "target": "species", "features": None,
                       "task": "auto", "delimiter": ",", "val_fraction": 0.2, "test_fraction": 0.2,
                       "split_seed": 0, **keys})


def test_string_labels_become_sorted_class_indices(tmp_path):
    data = load(iris_like(tmp_path / "iris.csv"))
    assert (data.task, data.in_features) == ("multiclass", 2)
    assert data.feature_names == ["petal", "sepal"]
    assert data.class_names == ["setosa", "versicolor", "virginica"]
    # sepal is 0 for setosa, 10 for virginica, 20 for versicolor: recover it and check the labels.
    for split in (data.train, data.val, data.test):
        sepal = split.x[:, 1].numpy() * data.feature_std[1] + data.feature_mean[1]
        expected = {0: 0, 10: 2, 20: 1}
        assert [expected[round(v)] for v in sepal] == split.y.tolist()
    assert len(data.train) + len(data.val) + len(data.test) == 30  # nothing dropped


def test_label_mapping_is_saved_for_predictions(tmp_path):
    data = load(iris_like(tmp_path / "iris.csv"))
    path = save_label_mapping(data, tmp_path)
    assert path == tmp_path / "labels.json"
    assert json.loads(path.read_text()) == {
        "dataset": "csv", "task": "multiclass", "target": "species",
        "class_names": ["setosa", "versicolor", "virginica"]}


def test_integer_labels_are_classes_in_numeric_order(tmp_path):
    rows = [f"{i},{[-1, 10, 2][i % 3]}" for i in range(30)]
    data = load(write_csv(tmp_path / "t.csv", "a,species", rows))
    assert data.task == "multiclass" and data.class_names == ["-1", "2", "10"]


def test_two_classes_make_a_binary_task(tmp_path):
    rows = [f"{i},{'yes' if i % 2 else 'no'}" for i in range(20)]
    data = load(write_csv(tmp_path / "t.csv", "a,species", rows))
    assert data.task == "binary" and data.class_names == ["no", "yes"]


def test_numeric_target_is_regression_in_original_units(tmp_path):
    rows = [f"{i},{i * 0.5 + 0.25}" for i in range(40)]
    data = load(write_csv(tmp_path / "t.csv", "a,price", rows), target="price")
    assert data.task == "regression" and data.class_names == []
    assert save_label_mapping(data, tmp_path) is None
    y = data.train.y.numpy()[:, 0] * data.target_std + data.target_mean
    x = data.train.x.numpy()[:, 0] * data.feature_std[0] + data.feature_mean[0]
    np.testing.assert_allclose(y, x * 0.5 + 0.25, rtol=1e-5)


def test_many_distinct_integers_read_as_regression_and_task_overrides(tmp_path):
    path = write_csv(tmp_path / "t.csv", "a,count", [f"{i},{i * 3}" for i in range(60)])
    assert load(path, target="count").task == "regression"
    few = write_csv(tmp_path / "few.csv", "a,count", [f"{i},{i % 4}" for i in range(60)])
    assert load(few, target="count").task == "multiclass"
    assert load(few, target="count", task="regression").task == "regression"


def test_features_picks_columns(tmp_path):
    data = load(iris_like(tmp_path / "iris.csv"), features=["sepal"])
    assert data.feature_names == ["sepal"] and data.in_features == 1


def test_relative_path_is_read_from_the_launch_directory(tmp_path, monkeypatch):
    iris_like(tmp_path / "iris.csv")
    monkeypatch.chdir(tmp_path)
    assert load("iris.csv").n_classes == 3


def test_delimiter(tmp_path):
    rows = [f"{i};{'ab'[i % 2]}" for i in range(20)]
    assert load(write_csv(tmp_path / "t.csv", "a;species", rows), delimiter=";").in_features == 1


def error_line(tmp_path, header: str, rows: list[str], **keys) -> str:
    with pytest.raises(ConfigError) as error:
        load(write_csv(tmp_path / "bad.csv", header, rows), **keys)
    message = str(error.value)
    assert "\n" not in message
    return message


GOOD = [f"{i},{i % 3},{'abc'[i % 3]}" for i in range(12)]


@pytest.mark.parametrize("bad_row, expected", [
    ("1,,a", r"line 4, column 'y': empty cell; fill it in or remove the row (nothing is dropped"),
    ("1,nan,a", r"line 4, column 'y': missing value 'nan'"),
    ("1,NA,a", r"line 4, column 'y': missing value 'NA'"),
    ("1,inf,a", r"line 4, column 'y': 'inf' is not a finite number"),
    ("1,red,a", r"line 4, column 'y': 'red' is not a number; feature columns must be numeric"),
    ("1,2,", r"line 4, column 'species': empty cell"),
    ("1,2", r"line 4 has 2 fields, the header has 3"),
])
def test_bad_cells_name_file_line_and_column(tmp_path, bad_row, expected):
    message = error_line(tmp_path, "x,y,species", GOOD[:2] + [bad_row] + GOOD[2:])
    assert str(tmp_path / "bad.csv") in message
    assert expected in message


def test_missing_file_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = f"data.path=nope.csv: {tmp_path / 'nope.csv'} does not exist"
    with pytest.raises(DataError, match=expected):
        load("nope.csv")


def test_missing_target_column_lists_the_columns(tmp_path):
    message = error_line(tmp_path, "x,y,species", GOOD, target="label")
    assert message == (f"data.target=label: {tmp_path / 'bad.csv'} has no column 'label'; "
                       "its columns are: x, y, species")


def test_missing_feature_column(tmp_path):
    assert "has no column 'z'" in error_line(tmp_path, "x,y,species", GOOD, features=["x", "z"])


def test_single_class(tmp_path):
    message = error_line(tmp_path, "x,species", [f"{i},yes" for i in range(10)])
    assert "holds a single class (yes) in all 10 rows; classification needs at least 2" in message


def test_binary_task_with_three_classes(tmp_path):
    assert "holds 3 classes (a, b, c)" in error_line(tmp_path, "x,y,species", GOOD, task="binary")


def test_regression_on_text_names_the_cell(tmp_path):
    message = error_line(tmp_path, "x,y,species", GOOD, task="regression")
    assert "line 2, column 'species': 'a' is not a number; data.task=regression" in message


@pytest.mark.parametrize("text, expected", [
    ("", "is empty: expected a header line"),
    ("x,species\n", "has a header but no data rows"),
    ("x,x,species\n1,2,a\n", "column 'x' appears twice"),
])
def test_empty_or_malformed_files(tmp_path, text, expected):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=expected):
        load(path)


def test_path_and_target_are_required(tmp_path):
    with pytest.raises(ConfigError, match="data.path=None is not valid: expected the table file to train on"):
        load(None)
    with pytest.raises(ConfigError,
                       match="data.target=None is not valid: expected the column to predict"):
        load(iris_like(tmp_path / "iris.csv"), target=None)


CSV_RUN = ("data=csv", "trainer.max_epochs=1", "trainer.progress=false", "trainer.device=cpu")


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """train.py on a good and on a bad CSV file, one after another in one fresh interpreter: each run's
    directory and output."""
    base = tmp_path_factory.mktemp("cli")
    (base / "good").mkdir(), (base / "bad").mkdir()
    files = {"good": iris_like(base / "good" / "iris.csv").name,
             "bad": write_csv(base / "bad" / "bad.csv", "x,species", ["1,a", "2,b", ",a"]).name}
    commands = [(base / name / "run", (*CSV_RUN, f"data.path={file}", "data.target=species"))
                for name, file in files.items()]
    return {name: (run_dir, result)
            for name, (run_dir, _), result in zip(files, commands, run_cli_in_one_interpreter(commands))}


@pytest.mark.slow
def test_cli_trains_on_a_csv_with_one_override_each(cli_runs):
    _, result = cli_runs["good"]
    assert result.returncode == 0, result.stderr
    assert "data=csv: multiclass, train 20, val 5, test 5, 2 features, 3 classes" in result.stderr


@pytest.mark.slow
def test_cli_stops_with_one_line_on_a_bad_file(cli_runs):
    _, result = cli_runs["bad"]
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "line 4, column 'x': empty cell" in lines[0], result.stderr


def test_tab_delimiter_from_the_command_line(tmp_path):
    rows = [f"{i}\t{'ab'[i % 2]}" for i in range(20)]
    path = write_csv(tmp_path / "t.tsv", "a\tspecies", rows)
    assert load(path, delimiter="\\t").feature_names == ["a"]  # as Hydra passes data.delimiter='\t'


def test_wrong_delimiter_is_named(tmp_path):
    path = write_csv(tmp_path / "t.csv", "a;species", ["1;a", "2;b"])
    with pytest.raises(DataError, match=r"line 1 reads as one column 'a;species'; set "
                       r"data.delimiter=';' to split it"):
        load(path)

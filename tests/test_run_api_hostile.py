"""Run.predict under hostile use: labels in the type the targets had, and every wrong input one
ValueError (mlpkit.errors.DataError) naming ``x``, what was given and what the run expects."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mlpkit
from mlpkit.errors import DataError
from mlpkit.trained_model import label_array

TINY = ["model.hidden_sizes=[16]", "trainer.device=cpu", "trainer.progress=false"]
LEARNS_CORNERS = [*TINY, "trainer.max_epochs=10", "trainer.batch_size=8", "optimizer.lr=0.01"]
CORNERS = np.array([[-3.0, -3.0], [-3.0, 3.0], [3.0, -3.0], [3.0, 3.0]])


def corner_rows(labels: list, rows_per_corner: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four well separated clusters, the i-th labelled labels[i]: a tiny run learns them all."""
    rng = np.random.default_rng(seed)
    points = np.concatenate([corner + 0.3 * rng.normal(size=(rows_per_corner, 2)) for corner in CORNERS])
    return points, np.repeat(np.asarray(labels, dtype=object), rows_per_corner)


def write_table(path: Path, points: np.ndarray, labels: np.ndarray) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x1", "x2", "label"])
        writer.writerows([[f"{a:.5f}", f"{b:.5f}", label] for (a, b), label in zip(points, labels)])
    return path


LABEL_SETS = {  # name -> the target column's cells
    "signed": [-2, -1, 0, 1],
    "fractions": [0.5, 1.5, 2.5, -0.25],
    "text": ['=HYPERLINK("http://x","y")', "-1", "+cmd", "@sum(A1)"],
}


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory) -> dict[str, mlpkit.Run]:
    base = tmp_path_factory.mktemp("label_runs")
    made = {}
    for name, labels in LABEL_SETS.items():
        path = write_table(base / f"{name}.csv", *corner_rows(labels))
        made[name] = mlpkit.train([*LEARNS_CORNERS, "data=csv", f"data.path={path}", "data.target=label",
                                   "data.task=multiclass"], run_dir=base / name)
    return made


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> mlpkit.Run:
    return mlpkit.train([*TINY, "trainer.max_epochs=3"], run_dir=tmp_path_factory.mktemp("hostile") / "digits")


def test_label_array_reads_the_type_back_from_the_saved_class_names():
    # labels.json and preprocessing.json hold class names as JSON strings; runs written before the
    # type mattered load the same way: whole numbers -> int64, other numbers -> float64, else text.
    assert label_array(["0", "1", "10"]).dtype == np.int64
    assert label_array(["-1", "0", "1"]).tolist() == [-1, 0, 1]
    assert label_array(["0.5", "1", "-2.25"]).dtype == np.float64
    assert label_array(["setosa", "versicolor"]).dtype.kind == "U"
    for text in (["nan", "inf"], ["1", "x"], ["007", "8"], ["1e3", "2"], [" 1", "2"]):
        assert label_array(text).tolist() == text, text  # only canonical numbers are numbers
    assert label_array(["99999999999999999999", "1"]).dtype == np.float64  # past int64: read as float64


@pytest.mark.slow
def test_digits_predict_gives_integer_labels_that_compare_with_the_targets(digits_run):
    from sklearn.datasets import load_digits

    digits = load_digits()
    predicted = digits_run.predict(digits.data)
    assert predicted.dtype == np.int64
    assert digits_run.classes.tolist() == list(range(10))
    assert np.array_equal(predicted, digits_run.predict_proba(digits.data).argmax(axis=1))
    assert (predicted == digits.target).mean() > 0.3  # was 0.0: '3' == 3 is False


@pytest.mark.slow
@pytest.mark.parametrize("name, kind", [("signed", "i"), ("fractions", "f"), ("text", "U")])
def test_table_runs_predict_in_the_type_of_their_target_column(table_runs, name, kind):
    run = table_runs[name]
    points, labels = corner_rows(LABEL_SETS[name], seed=1)
    predicted = run.predict(pd.DataFrame({"x1": points[:, 0], "x2": points[:, 1]}))
    assert predicted.dtype.kind == kind
    assert sorted(run.classes.tolist(), key=str) == sorted(LABEL_SETS[name], key=str)
    assert (predicted == labels.astype(predicted.dtype)).mean() > 0.9
    assert np.array_equal(predicted, run.classes[run.predict_proba(points).argmax(axis=1)])


# --- wrong inputs: one DataError (a ValueError) naming x, what was given and the shape expected ------
def frame_with(**changed) -> pd.DataFrame:
    frame = pd.DataFrame({f"pixel_{r}_{c}": [0.0, 1.0] for r in range(8) for c in range(8)})
    for column, cells in changed.items():
        frame[column] = cells
    return frame


BAD_X = {  # name -> (x, what the message must say after "x=")
    "too few features": (np.zeros((2, 3)), "an array of shape (2, 3): expected rows of the run's 64 features, "
                         "shape (n, 64)"),
    "1-D, wrong length": (np.zeros(5), "an array of shape (5,): expected rows of the run's 64 features, shape (n, 64)"),
    "3-D": (np.zeros((2, 8, 8)), "an array of shape (2, 8, 8): expected rows of the run's 64 features"),
    "NaN": (np.full((3, 64), np.nan), "an array of shape (3, 64): row 0, feature 'pixel_0_0' is nan; "
            "expected finite numbers"),
    "text cells": (np.full((2, 64), "a"), "an array of shape (2, 64) and dtype <U1: expected numbers "
                   "(bool, int or float), shape (n, 64)"),
    "complex": (np.zeros((2, 64), complex), "an array of shape (2, 64) and dtype complex128: expected numbers"),
    "ragged rows": ([[1.0] * 64, [1.0] * 3], "rows of different lengths: expected rows of the run's 64 features"),
    "object cell": (np.array([[1.0] * 63 + [{"a": 1}]], dtype=object),
                    "an array of shape (1, 64) and dtype object: row 0, feature 'pixel_7_7' holds {'a': 1}, "
                    "not a number"),
    "None": (None, "None: expected rows of the run's 64 features, shape (n, 64)"),
    "a string": ("1,2,3", "'1,2,3': expected rows of the run's 64 features, shape (n, 64)"),
    "frame, text column": (frame_with(pixel_3_4=["1", "dark"]),
                           "a DataFrame of shape (2, 64): row 1, column 'pixel_3_4' holds 'dark', not a number"),
    "frame, missing columns": (frame_with().drop(columns=["pixel_0_0"]),
                               "a DataFrame of shape (2, 63): no column pixel_0_0; the run was trained on 64 "
                               "feature columns"),
    "frame, column twice": (pd.concat([frame_with(), frame_with()[["pixel_1_1"]]], axis=1),
                            "a DataFrame of shape (2, 65): column 'pixel_1_1' appears 2 times"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_X))
def test_wrong_input_is_one_data_error_naming_x_the_given_and_the_expected(digits_run, case):
    x, message = BAD_X[case]
    with pytest.raises(DataError) as error:
        digits_run.predict(x)
    assert isinstance(error.value, ValueError) and error.value.key == "x"
    assert str(error.value).startswith(f"x={message}"), str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError):
        digits_run.predict_proba(x)


@pytest.mark.slow
def test_other_array_kinds_and_no_rows_predict(digits_run):
    import scipy.sparse

    rows = np.random.default_rng(0).uniform(0, 16, size=(4, 64))
    expected = digits_run.predict(rows)
    assert np.array_equal(digits_run.predict(scipy.sparse.csr_matrix(rows)), expected)
    assert np.array_equal(digits_run.predict(torch.tensor(rows, dtype=torch.bfloat16)).shape, (4,))
    assert np.array_equal(digits_run.predict(rows.astype(object)), expected)
    assert np.array_equal(digits_run.predict(rows.tolist()), expected)
    empty = digits_run.predict(np.zeros((0, 64)))
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert digits_run.predict_proba(np.zeros((0, 64))).shape == (0, 10)


@pytest.mark.slow
def test_a_damaged_preprocessing_json_is_one_config_error(digits_run, tmp_path):
    import shutil

    copy = mlpkit.load_run(shutil.copytree(digits_run.dir, tmp_path / "copy"))
    (copy.dir / "preprocessing.json").write_text('{"task": "multiclass", "feature_na')
    with pytest.raises(mlpkit.ConfigError, match=r"preprocessing.json is not valid JSON") as error:
        copy.predict(np.zeros((1, 64)))
    assert str(error.value).startswith("run=") and "\n" not in str(error.value)
    json.loads((digits_run.dir / "preprocessing.json").read_text())  # the original is untouched

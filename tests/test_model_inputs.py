"""A user's rows as a run's model inputs (mlpkit.model_inputs), without training a run: a DataFrame's
categories encoded by the encoder that encoded the training file, one float64 standardisation, and
the one rule that turns a sigmoid's output into two class probabilities."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import mlpkit.data  # noqa: F401  (imports torch at collection: a first import inside a test starts ldconfig)
from mlpkit.errors import DataError
from mlpkit.model_inputs import features, standardize_columns
from mlpkit.prediction import read_feature_rows
from mlpkit.trained_model import class_probabilities

PREPROCESSING = {  # a run trained on x and a color column one-hot encoded
    "feature_names": ["x", "color=blue", "color=red"], "input_columns": ["x", "color"],
    "categories": {"color": ["blue", "red"]}, "feature_mean": [10.0, 0.5, 0.5], "feature_std": [2.0, 0.5, 0.5],
}


def test_a_frame_and_a_file_of_the_same_rows_give_the_same_inputs(tmp_path):
    path = tmp_path / "new.csv"
    path.write_text("x,color\n12, red\n8,blue \n10,red\n")  # the file reader trims the cells
    from_file = read_feature_rows(path, PREPROCESSING["feature_names"], ",", PREPROCESSING, standardize=True)
    frame = pd.DataFrame({"color": [" red", "blue ", "red"], "x": [12, 8, 10]})  # columns by name, any order
    assert features(frame, PREPROCESSING).tolist() == from_file.tolist() == [[1, -1, 1], [-1, 1, -1], [0, -1, 1]]


def test_a_frame_category_a_number_is_read_as_the_training_file_read_it():
    # pyarrow writes the float 1.0 as "1", as the training file's reader wrote its categories
    preprocessing = {**PREPROCESSING, "categories": {"color": ["1", "2"]},
                     "feature_names": ["x", "color=1", "color=2"]}
    frame = pd.DataFrame({"x": [10.0, 10.0], "color": [2.0, 1.0]})
    assert features(frame, preprocessing)[:, 1:].tolist() == [[-1, 1], [1, -1]]


@pytest.mark.parametrize("cells, problem", [
    (["red", "green"], "row 1, column 'color': category 'green' is not one the training file holds (blue, red)"),
    (["red", None], "row 1, column 'color': missing value 'nan'; fill it in or remove the row"),
])
def test_a_frame_cell_the_run_cannot_encode_is_one_data_error_naming_x(cells, problem):
    with pytest.raises(DataError) as error:
        features(pd.DataFrame({"x": [1.0, 2.0], "color": cells}), PREPROCESSING)
    assert str(error.value).startswith(f"x=a DataFrame of shape (2, 2): {problem}"), str(error.value)


def test_standardisation_divides_in_float64_and_names_the_first_value_beyond_float32():
    centred = np.array([[3.0, 1e-30], [1.0, 1.0]])
    assert standardize_columns(centred, [3.0, 1e-10], np.empty((2, 2), np.float32),
                               ValueError).tolist() == [[1.0, np.float32(1e-20)], [np.float32(1 / 3), 1e10]]
    with pytest.raises(ValueError) as error:
        standardize_columns(np.array([[1.0, 1.0], [1e30, 1.0]]), [1e-30, 1e-300], np.empty((2, 2), np.float32),
                            lambda problems: ValueError(problems))
    assert error.value.args[0] == [(1, 0), (0, 1)]  # each column's first, in column order: the caller picks


def test_a_sigmoid_output_is_the_probability_of_the_second_class():
    sigmoid, softmax = SimpleNamespace(head="sigmoid"), SimpleNamespace(head="softmax")
    assert class_probabilities(sigmoid, np.array([[0.25], [1.0]])).tolist() == [[0.75, 0.25], [0.0, 1.0]]
    assert class_probabilities(sigmoid, np.array([0.25])).tolist() == [[0.75, 0.25]]
    assert class_probabilities(softmax, np.array([[0.2, 0.8]])).tolist() == [[0.2, 0.8]]

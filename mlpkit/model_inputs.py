"""A user's rows as a run's model inputs: arrays, tensors, sparse matrices and DataFrames, checked,
one-hot encoded, filled in (a run trained with a data.missing fill strategy) and standardised as
training did.

The one-hot encoding is the data package's own (mlpkit.data.columns, which encoded the training
file), and so is the filling (mlpkit.data.missing); the standardisation is ``standardize_columns``,
which the predict command's file reader uses too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpkit.errors import DataError

Problems = list[tuple[int, int]]  # (row, column) of each column's first value beyond float32, by column


def standardize_columns(centred: np.ndarray, std: Any, out: np.ndarray,
                        beyond: Callable[[Problems], Exception]) -> np.ndarray:
    """``centred`` (N, F): raw values less the run's feature_mean, subtracted in float64 (float32 holds
    1e8 in steps of 8: 1e8 + noise cast first would lose its noise), divided by the run's feature_std
    in float64, column by column, into float32 ``out`` (which may be ``centred`` itself). A value
    float32 cannot hold is ``beyond(problems)``, raised."""
    from mlpkit.data.precision import FLOAT32_MAX  # mlpkit.data imports torch: only a prediction needs it

    problems = []
    for column, scale in enumerate(np.asarray(std, dtype=np.float64)):
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = centred[:, column] / scale  # a float64 scale: divided in float64
        bad = np.flatnonzero(~(np.abs(scaled) <= FLOAT32_MAX))  # NaN, inf, or beyond float32
        if bad.size:
            problems.append((int(bad[0]), column))
        else:
            out[:, column] = scaled
    if problems:
        raise beyond(problems)
    return out


def features(x: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """Raw rows as the model's inputs: the feature columns (by name for a DataFrame), missing values
    filled as training filled them (the run's data.missing), standardised. An array gives the run's
    features less its indicator columns (``<column>__missing``), which are made here."""
    from mlpkit.data.missing import complete_rows, input_features  # mlpkit.data imports torch

    names = list(preprocessing["feature_names"])
    record = preprocessing.get("missing")
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):  # a pandas DataFrame: its columns by name
        given, values = f"a DataFrame of shape {x.shape}", frame_values(x, preprocessing)
    else:
        given, values = array_values(x, input_features(names, record))
    values = complete_rows(values, input_features(names, record), record)
    if not np.isfinite(values).all():
        row, column = np.argwhere(~np.isfinite(values))[0]
        strategy = (record or {}).get("strategy", "error")
        raise DataError("x", given, f"row {row}, feature '{names[column]}' is {values[row, column]}; expected "
                        f"finite numbers (fill in or drop the missing values: the run was trained with "
                        f"data.missing={strategy}, which fills none in this feature)")
    mean = np.asarray(preprocessing["feature_mean"], dtype=np.float64)
    std = np.asarray(preprocessing["feature_std"], dtype=np.float64)

    def beyond(problems: Problems) -> DataError:
        row, column = min(problems)  # the first in reading order
        return DataError("x", given, f"row {row}, feature '{names[column]}' is {values[row, column]:.6g}, which "
                         f"standardised with the run's mean {mean[column]:.6g} and std {std[column]:.6g} is "
                         "beyond float32's range; expected values of the scale the run trained on")

    return standardize_columns(values - mean, std, np.empty(values.shape, dtype=np.float32), beyond)


def expected_rows(names: list[str]) -> str:
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return (f"expected rows of the run's {len(names)} features, shape (n, {len(names)}), or a DataFrame with "
            f"the columns {shown}")


def array_values(x: Any, names: list[str]) -> tuple[str, np.ndarray]:
    """An array-like's rows as float64 (n, features), and how to name it in a message."""
    if x is None or isinstance(x, (str, bytes)):
        raise DataError("x", repr(x)[:60], expected_rows(names))
    if hasattr(x, "detach"):  # a torch tensor, wherever it lives; numpy has no bfloat16
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()
    if hasattr(x, "toarray") and hasattr(x, "nnz"):  # a scipy sparse matrix
        x = x.toarray()
    try:
        array = np.asarray(x)
    except ValueError:  # numpy's message for rows of different lengths
        raise DataError("x", "rows of different lengths", expected_rows(names)) from None
    given = f"an array of shape {array.shape}"
    rows = array[None] if array.ndim == 1 else array  # one row
    if rows.ndim != 2 or rows.shape[1] != len(names):
        raise DataError("x", given, expected_rows(names))
    if rows.dtype.kind in "biuf":
        return given, rows.astype(np.float64)
    given += f" and dtype {array.dtype}"
    if rows.dtype.kind != "O":  # text, complex, dates: nothing the run can read as a feature
        raise DataError("x", given, f"expected numbers (bool, int or float), shape (n, {len(names)})")
    return given, numbers(rows, lambda row, column: f"row {row}, feature '{names[column]}'", given)


def numbers(cells: np.ndarray, where: Any, given: str) -> np.ndarray:
    """Object cells (n, columns) as float64; the first that is not a number is one DataError."""
    try:
        return cells.astype(np.float64)
    except (ValueError, TypeError):
        for (row, column), cell in np.ndenumerate(cells):
            try:
                float(cell)
            except (ValueError, TypeError):
                raise DataError("x", given, f"{where(row, column)} holds {cell!r}, not a number") from None
        raise


def frame_values(frame: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """A DataFrame's feature columns, by name, as float64 (n, features)."""
    names = list(preprocessing["feature_names"])
    columns = list(preprocessing.get("input_columns") or names)  # before one-hot encoding
    given = f"a DataFrame of shape {frame.shape}"
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise DataError("x", given, f"no column {', '.join(map(str, missing[:5]))}"
                        f"{' and more' if len(missing) > 5 else ''}; the run was trained on {len(columns)} "
                        f"feature columns: {', '.join(map(str, columns[:6]))}{', ...' if len(columns) > 6 else ''}")
    counts = {name: list(frame.columns).count(name) for name in columns}
    twice = next((name for name, count in counts.items() if count > 1), None)
    if twice is not None:
        raise DataError("x", given, f"column '{twice}' appears {counts[twice]} times; expected each feature "
                        "column once")
    categories = dict(preprocessing.get("categories") or {})
    record = preprocessing.get("missing") or {}
    strategy, tokens = record.get("strategy", "error"), record.get("missing_values")
    return np.concatenate([one_hot_column(frame, name, categories[name], given, strategy, tokens)
                           if name in categories else frame_column(frame, name, given, tokens)[:, None]
                           for name in columns], axis=1)


def frame_column(frame: Any, name: str, given: str, tokens: list[str] | None = None) -> np.ndarray:
    """One numeric column of a DataFrame as float64 (n,); a missing cell (None, pandas' NA, or text
    among ``tokens``, the run's data.missing_values) is NaN."""
    cells = frame[name].to_numpy()
    if cells.dtype.kind in "biuf":
        return cells.astype(np.float64)
    if cells.dtype.kind != "O":
        raise DataError("x", given, f"column '{name}' has dtype {cells.dtype}; expected numbers (bool, int or float)")
    cells = np.array([np.nan if missing_object(cell, tokens) else cell for cell in cells], dtype=object)
    return numbers(cells[:, None], lambda row, _column: f"row {row}, column '{name}'", given)[:, 0]


def missing_object(cell: Any, tokens: list[str] | None) -> bool:
    """A DataFrame cell that means "no value": None, pandas' NA, or (``tokens``) such text."""
    return cell is None or type(cell).__name__ == "NAType" or (
        tokens is not None and isinstance(cell, str) and cell.strip() in tokens)


@dataclass
class FrameSource:
    """A DataFrame where the data package's encoder expects a table file: its messages name ``x``."""

    frame: Any
    given: str

    def cell(self, row: int, column: str) -> tuple[str, str]:
        value = self.frame[column].iloc[row]
        return f"row {row}", "" if value is None else str(value)

    def fail(self, problem: str) -> DataError:
        return DataError("x", self.given, problem)


def one_hot_column(frame: Any, name: str, known: list[str], given: str, missing: str = "error",
                   tokens: list[str] | None = None) -> np.ndarray:
    """A categorical column of ``frame`` one-hot encoded, (n, categories) float64, by the encoder
    that encoded the training file (the same text for a cell, the training file's categories; a
    missing cell, text among ``tokens`` too, as the run's data.missing says)."""
    import pyarrow as pa

    from mlpkit.data.columns import Rows, encode_features

    column = frame[name]
    if tokens is not None:
        column = [None if missing_object(cell, tokens) else cell for cell in column]
    try:
        cells = pa.array(column, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # cells of mixed types: each as its text
        cells = pa.array([None if cell is None else str(cell) for cell in column], pa.string())
    rows = Rows([FrameSource(frame, given)], [pa.table({name: cells})])
    values, _names, _plan = encode_features(rows, [name], categories={name: known},
                                            hint=lambda column: "the run reads it as a category", missing=missing)
    return values.astype(np.float64)

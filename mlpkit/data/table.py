"""The user's own CSV table: numeric feature columns and a named target column.

Every problem in the file stops the run with one line naming the file, the line and the column;
no row or cell is dropped or filled in silently.
"""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlpkit.data.dataset import RawData, launch_path
from mlpkit.errors import ConfigError, DataError, show_value

log = logging.getLogger(__name__)
TASKS = ("auto", "binary", "multiclass", "regression")
MISSING = {"", "na", "n/a", "nan", "null"}  # cells that mean "no value" (compared lower-case)
MAX_AUTO_CLASSES = 20  # task=auto reads an integer target with at most this many values as classes
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: features and targets are float32 tensors

Row = tuple[int, list[str]]  # (line number in the file, cells)


def load_csv(path: str | None = None, target: str | None = None,
             features: Sequence[str] | str | None = None, task: str = "auto",
             delimiter: str = ",") -> RawData:
    """Numeric feature columns (``features``, default all but ``target``) and the target column."""
    if task not in TASKS:
        raise ConfigError("data.task", task, f"one of {', '.join(TASKS)}")
    if delimiter == "\\t":  # data.delimiter='\t' on the command line arrives as two characters
        delimiter = "\t"
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ConfigError("data.delimiter", delimiter, 'one character, e.g. "," or ";"')
    file = csv_file(path)
    header, rows = read_rows(file, delimiter)
    target_column, feature_columns = pick_columns(file, header, target, features)
    values = parse_features(file, header, rows, feature_columns)
    target_cells = [row[target_column] for _, row in rows]
    task, labels, class_names = parse_target(file, header[target_column], target_cells,
                                             [line for line, _ in rows], task)
    return RawData(values, labels, task, [header[c] for c in feature_columns], class_names,
                   extra={"path": str(file), "target": header[target_column]},
                   lines=np.asarray([line for line, _ in rows]))


def csv_file(path: str | None) -> Path:
    if path is None or str(path).strip() == "":
        raise ConfigError("data.path", path, "the CSV file to train on, e.g. data.path=my.csv")
    file = launch_path(path)
    if file.is_dir():
        raise DataError("data.path", path, f"{file} is a directory: expected a CSV file")
    if file.exists() and not file.is_file():
        raise DataError("data.path", path, f"{file} is not a regular file (a device, pipe or socket): "
                        "expected a CSV file")
    if not file.exists():
        raise DataError("data.path", path, f"{file} does not exist; relative paths are read from the "
                        f"directory you launched from")
    return file


def read_rows(file: Path, delimiter: str, key: str = "data.path",
              delimiter_key: str = "data.delimiter") -> tuple[list[str], list[Row]]:
    """The header (stripped column names) and the data rows with their line numbers.

    ``key`` and ``delimiter_key`` are the settings named in the errors (for training, data.path and
    data.delimiter; for prediction, input and delimiter).
    """
    rows: list[Row] = []
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if row]  # blank lines hold no data
    except UnicodeDecodeError as error:
        raise DataError(key, file, f"is not UTF-8 text ({error.reason} at byte "
                        f"{error.start})") from None
    except csv.Error as error:
        raise DataError(key, file, f"line {reader.line_num}: {error}") from None
    if not header:
        raise DataError(key, file, "is empty: expected a header line naming the columns")
    other = next((sep for sep in (",", ";", "\t", "|") if sep in header[0]), None)
    if len(header) == 1 and other is not None:
        shown = "'\\t'" if other == "\t" else repr(other)
        raise DataError(delimiter_key, repr(delimiter), f"{file} line 1 reads as one column "
                        f"{header[0]!r}; set {delimiter_key}={shown} to split it")
    for position, name in enumerate(header, start=1):
        if not name:
            raise DataError(key, file, f"line 1: column {position} has no name")
        if header.index(name) != position - 1:
            raise DataError(key, file, f"line 1: column '{name}' appears twice")
    if not rows:
        raise DataError(key, file, "has a header but no data rows")
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(key, file, f"line {line} has {len(row)} fields, the header has "
                            f"{len(header)}")
    return header, rows


def pick_columns(file: Path, header: list[str], target: str | None,
                 features: Sequence[str] | str | None) -> tuple[int, list[int]]:
    """Indices of the target column and of the feature columns."""
    columns = ", ".join(header)
    if target is None or str(target).strip() == "":
        raise ConfigError("data.target", target, f"the column to predict, one of: {columns}")
    if str(target) not in header:
        raise DataError("data.target", target, f"{file} has no column '{target}'; its columns are: "
                        f"{columns}")
    target_column = header.index(str(target))
    if features is None:
        feature_columns = [c for c in range(len(header)) if c != target_column]
    else:
        names = [features] if isinstance(features, str) else [str(name) for name in features]
        for name in names:
            if name not in header:
                raise DataError("data.features", show_value(names),
                                f"{file} has no column '{name}'; its columns are: {columns}")
            if name == header[target_column]:
                raise DataError("data.features", show_value(names), f"'{name}' is the target column")
        if len(set(names)) != len(names):
            raise DataError("data.features", show_value(names), "lists a column twice")
        feature_columns = [header.index(name) for name in names]
    if not feature_columns:
        raise DataError("data.features", show_value([header[c] for c in feature_columns]),
                        f"no feature columns: {file} holds only the target '{target}'")
    return target_column, feature_columns


def _cell_problem(cell: str, what: str) -> str:
    if cell.strip() == "":
        return "empty cell; fill it in or remove the row (nothing is dropped silently)"
    if cell.strip().lower() in MISSING:
        return f"missing value {cell!r}; fill it in or remove the row (nothing is dropped silently)"
    if cell.strip().lower().lstrip("+-") in ("inf", "infinity"):
        return f"{cell!r} is not a finite number"
    if _beyond_float32(cell):
        return f"{cell!r} is beyond float32's range (magnitude at most {FLOAT32_MAX:.4g}); rescale the column"
    return f"{cell!r} is not a number; {what}"


def finite_number(cell: str) -> float | None:
    """The cell as a float that float32 holds finite (the tensors are float32), or None."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) <= FLOAT32_MAX else None


def _beyond_float32(cell: str) -> bool:
    """A number (infinite or finite) that float32 cannot hold: 1e39, 1e308, inf."""
    try:
        return abs(float(cell)) > FLOAT32_MAX
    except ValueError:
        return False


def parse_features(file: Path, header: list[str], rows: list[Row], columns: list[int]
                   ) -> np.ndarray:
    values = np.empty((len(rows), len(columns)), dtype=np.float32)
    for index, (line, row) in enumerate(rows):
        for position, column in enumerate(columns):
            value = finite_number(row[column])
            if value is None:
                problem = _cell_problem(row[column], "feature columns must be numeric; choose them "
                                        "with data.features=[...]")
                raise DataError("data.path", file,
                                f"line {line}, column '{header[column]}': {problem}")
            values[index, position] = value
    return values


def parse_target(file: Path, name: str, cells: list[str], lines: list[int], task: str
                 ) -> tuple[str, np.ndarray, list[str]]:
    """The task, the targets (class indices or values) and the class names, from the cells."""
    numbers = [finite_number(cell) for cell in cells]
    for line, cell, number in zip(lines, cells, numbers):
        if cell.strip().lower() in MISSING or (number is None and _beyond_float32(cell)):
            raise DataError("data.path", file, f"line {line}, column '{name}': "
                            f"{_cell_problem(cell, '')}")
    numeric = all(number is not None for number in numbers)
    if task == "auto":
        task = _guess_task(name, numbers, numeric)
    if task == "regression":
        if not numeric:
            line, cell = next((ln, c) for ln, c, n in zip(lines, cells, numbers) if n is None)
            raise DataError("data.path", file, f"line {line}, column '{name}': {cell!r} is not a "
                            "number; data.task=regression needs a numeric target (data.task=auto "
                            "reads it as class labels)")
        if len(set(numbers)) == 1:
            raise DataError("data.target", name, f"column '{name}' of {file}: all {len(numbers)} values "
                            f"are {_label(numbers[0])}: nothing to learn")
        return task, np.asarray(numbers, dtype=np.float32), []
    return _classes(file, name, cells, numbers if numeric else None, task)


def _guess_task(name: str, numbers: list[float | None], numeric: bool) -> str:
    if not numeric:
        return "classification"
    if not all(float(n).is_integer() for n in numbers):
        return "regression"
    distinct = len(set(numbers))
    task = "classification" if distinct <= MAX_AUTO_CLASSES else "regression"
    other = "regression" if task == "classification" else "multiclass"
    log.info("data.task=auto: column '%s' holds %d distinct integers, read as %s; set data.task=%s "
             "to override", name, distinct, "class labels" if task == "classification" else
             "a numeric target (regression)", other)
    return task


def _classes(file: Path, name: str, cells: list[str], numbers: list[Any] | None, task: str
             ) -> tuple[str, np.ndarray, list[str]]:
    """Labels -> class indices in sorted order (numeric order for numbers, text order otherwise)."""
    keys: list[Any] = numbers if numbers is not None else [cell.strip() for cell in cells]
    values = sorted(set(keys))
    index = {value: position for position, value in enumerate(values)}
    class_names = [_label(value) for value in values]
    shown = ", ".join(class_names[:5]) + (", ..." if len(values) > 5 else "")
    if len(values) < 2:
        raise DataError("data.target", name, f"column '{name}' of {file} holds a single class "
                        f"({shown}) in all {len(cells)} rows; classification needs at least 2")
    if task == "binary" and len(values) != 2:
        raise DataError("data.task", task, f"column '{name}' holds {len(values)} classes "
                        f"({shown}); use data.task=multiclass or auto")
    if task == "classification":
        task = "binary" if len(values) == 2 else "multiclass"
    return task, np.asarray([index[key] for key in keys], dtype=np.int64), class_names


def _label(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)

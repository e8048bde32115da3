"""pyarrow columns -> one float32 feature array (categorical columns one-hot) and the targets.

Whole columns at a time: no pandas, no per-row Python. A cell that cannot be used is found with
vectorised compute (first null, first non-number, first non-finite value) and reported by
``Rows.problem`` with the file, line (or row) and column it came from.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpkit.data.formats import TableFile
from mlpkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)
NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"  # a finite decimal number, as the cell is written
MAX_AUTO_CLASSES = 20  # task=auto reads an integer target with at most this many values as classes
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Rows:
    """The rows of one or more table files stacked in order (train, then val, then test)."""

    files: list[TableFile]
    tables: list[Any]  # pyarrow Tables, one per file

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [table.num_rows for table in self.tables])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, row: int) -> tuple[TableFile, int]:
        index = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.files[index], row - int(self.offsets[index])

    def where(self, row: int) -> tuple[str, str, str]:
        """(key, file, "line N") of a stacked row, for messages outside this module."""
        table_file, local = self.locate(row)
        column = table_file.schema().names[0]  # the tables may be gone: read the file again
        return table_file.key, str(table_file.file), table_file.cell(local, column)[0]

    def problem(self, row: int, column: str, describe: Callable[[str], str]) -> DataError:
        table_file, local = self.locate(row)
        where, text = table_file.cell(local, column)
        return table_file.fail(f"{where}, column '{column}': {describe(text)}")


def numeric(column: Any) -> Any | None:
    """The column as numbers (a pyarrow ChunkedArray), or None if a cell is not a number. Text
    columns whose every cell is a number (" 1.5", "2e3") are cast."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind) \
            or pa.types.is_decimal(kind):
        return column
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        trimmed = pc.utf8_trim_whitespace(column)
        if pc.all(pc.match_substring_regex(trimmed, NUMBER)).as_py() is not False:
            return pc.cast(trimmed, pa.float64())
    return None


def text(column: Any) -> Any:
    """The column's cells as trimmed strings (numbers as written by pyarrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return pc.utf8_trim_whitespace(pc.cast(column, pa.string()))


def first(mask: Any) -> int:
    """The first row where a boolean pyarrow array is true (-1 if none)."""
    import pyarrow.compute as pc

    return int(pc.index(mask.fill_null(True), True).as_py())


def check_nulls(rows: Rows, column: str, columns: Sequence[Any], describe: Callable[[str], str]) -> None:
    import pyarrow.compute as pc

    for offset, values in zip(rows.offsets, columns):
        if values.null_count:
            raise rows.problem(int(offset) + first(pc.is_null(values)), column, describe)


def check_numbers(rows: Rows, column: str, columns: Sequence[Any], describe: Callable[[str], str]) -> list[Any]:
    """Each file's column as numbers; the first cell that is not one is reported."""
    import pyarrow.compute as pc

    converted = []
    for offset, values in zip(rows.offsets, columns):
        number = numeric(values)
        if number is None:
            bad = pc.invert(pc.match_substring_regex(text(values), NUMBER))
            raise rows.problem(int(offset) + first(bad), column, describe)
        converted.append(number)
    check_nulls(rows, column, converted, describe)
    return converted


def categories_of(column: Any) -> list[str]:
    import pyarrow.compute as pc

    return sorted(pc.unique(text(column)).drop_null().to_pylist())


def plan_features(rows: Rows, names: Sequence[str], categorical: Any,
                  categories: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """The columns to one-hot encode and their categories (fitted on the first file, training)."""
    if categories is not None:  # prediction: the run's own encoding
        return {name: list(values) for name, values in categories.items() if name in names}
    listed = [] if categorical in (None, "auto", "none") else [str(name) for name in categorical]
    for name in listed:
        if name not in names:
            raise ConfigError("data.categorical", listed, f"feature columns; '{name}' is not one of: "
                              f"{', '.join(names)}")
    return {name: categories_of(rows.tables[0].column(name)) for name in names
            if name in listed or (categorical == "auto" and numeric(rows.tables[0].column(name)) is None)}


def encode_features(rows: Rows, names: Sequence[str], categorical: Any = "none",
                    categories: dict[str, list[str]] | None = None,
                    hint: Callable[[str], str] = lambda column: "feature columns must be numeric") -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """(N, F) float32 features, their names (``color=red`` for one-hot columns) and the categories.

    Numeric columns are copied chunk by chunk into one preallocated array; a categorical column
    becomes one 0/1 column per category of the training file (sorted); a category the training
    file did not hold is an error naming its cell.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    plan = plan_features(rows, names, categorical, categories)
    feature_names = [f"{name}={value}" if name in plan else name
                     for name in names for value in (plan.get(name) or [None])]
    # Column-major, so filling column j touches only its own pages while the pyarrow column it
    # came from is released: the load peaks near one copy of the data, not two.
    values = np.empty((len(rows), len(feature_names)), dtype=np.float32, order="F")
    position = 0
    for name in names:
        columns = [table.column(name) for table in rows.tables]
        rows.tables = [table.drop_columns([name]) for table in rows.tables]
        describe = functools.partial(cell_problem, what=hint(name))
        if name in plan:
            known = plan[name]
            check_nulls(rows, name, columns, describe)
            values[:, position:position + len(known)] = 0
            for offset, column in zip(rows.offsets, columns):
                codes = pc.index_in(text(column), value_set=pa.array(known, pa.string()))
                if codes.null_count:
                    shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
                    raise rows.problem(int(offset) + first(pc.is_null(codes)), name, functools.partial(
                        unseen_category, shown=shown))
                codes = codes.to_numpy().astype(np.int64) if codes.num_chunks else np.zeros(0, np.int64)
                values[np.arange(offset, offset + len(codes)), position + codes] = 1
            position += len(known)
            continue
        for offset, column in zip(rows.offsets, check_numbers(rows, name, columns, describe)):
            start, part, chunk = int(offset), None, None
            for chunk in column.chunks:
                part = chunk.to_numpy(zero_copy_only=False)
                values[start:start + len(part), position] = part
                if not np.isfinite(values[start:start + len(part), position]).all():
                    bad = int(np.flatnonzero(~np.isfinite(values[start:start + len(part), position]))[0])
                    raise rows.problem(start + bad, name, describe)
                start += len(part)
            del part, chunk
        del column, columns  # the last references to this pyarrow column: its memory goes back
        position += 1
    return values, feature_names, plan


def unseen_category(cell: str, shown: str) -> str:
    return f"category {cell.strip()!r} is not one the training file holds ({shown})"


def encode_target(rows: Rows, name: str, task: str, file_label: str) -> tuple[str, np.ndarray, list[str]]:
    """The task, the targets (class indices or float32 values) and the class names."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = [table.column(name) for table in rows.tables]
    check_nulls(rows, name, columns, lambda cell: cell_problem(cell, ""))
    numbers = [numeric(column) for column in columns]
    if all(number is not None for number in numbers):
        values = np.concatenate([number.to_numpy() for number in numbers]).astype(np.float64)
        if not (np.isfinite(values) & (np.abs(values) <= FLOAT32_MAX)).all():
            bad = int(np.flatnonzero(~(np.isfinite(values) & (np.abs(values) <= FLOAT32_MAX)))[0])
            raise rows.problem(bad, name, lambda cell: cell_problem(cell, ""))
    else:
        values = None
    if task == "auto":
        task = guess_task(name, values)
    if task == "regression":
        if values is None:
            offset, column = next((o, c) for o, c, n in zip(rows.offsets, columns, numbers) if n is None)
            bad = pc.invert(pc.match_substring_regex(text(column), NUMBER))
            raise rows.problem(int(offset) + first(bad), name, lambda cell: (
                f"{cell!r} is not a number; data.task=regression needs a numeric target (data.task=auto "
                "reads it as class labels)"))
        if values.min() == values.max():
            raise DataError("data.target", name, f"column '{name}' of {file_label}: all {len(values)} values "
                            f"are {label(float(values[0]))}: nothing to learn")
        return task, values.astype(np.float32), []
    if values is not None:
        distinct, labels = np.unique(values, return_inverse=True)
        class_names = [label(float(value)) for value in distinct]
    else:
        strings = pa.chunked_array([chunk for column in columns for chunk in text(column).chunks], pa.string())
        class_names = sorted(pc.unique(strings).to_pylist())
        labels = pc.index_in(strings, value_set=pa.array(class_names, pa.string())).to_numpy()
    shown = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
    if len(class_names) < 2:
        raise DataError("data.target", name, f"column '{name}' of {file_label} holds a single class "
                        f"({shown}) in all {len(rows)} rows; classification needs at least 2")
    if task == "binary" and len(class_names) != 2:
        raise DataError("data.task", task, f"column '{name}' holds {len(class_names)} classes ({shown}); "
                        "use data.task=multiclass or auto")
    if task == "classification":
        task = "binary" if len(class_names) == 2 else "multiclass"
    return task, np.asarray(labels, dtype=np.int64), class_names


def guess_task(name: str, values: np.ndarray | None) -> str:
    if values is None:
        return "classification"
    if not (values == np.round(values)).all():
        return "regression"
    distinct = len(np.unique(values))
    task = "classification" if distinct <= MAX_AUTO_CLASSES else "regression"
    other = "regression" if task == "classification" else "multiclass"
    log.info("data.task=auto: column '%s' holds %d distinct integers, read as %s; set data.task=%s "
             "to override", name, distinct, "class labels" if task == "classification" else
             "a numeric target (regression)", other)
    return task


def cell_problem(cell: str, what: str) -> str:
    """Why a cell cannot be used, in words a user acts on."""
    stripped = cell.strip().lower()
    if stripped == "":
        return "empty cell; fill it in or remove the row (nothing is dropped silently)"
    if stripped in {"na", "n/a", "nan", "null", "none"}:
        return f"missing value {cell!r}; fill it in or remove the row (nothing is dropped silently)"
    if stripped.lstrip("+-") in ("inf", "infinity"):
        return f"{cell!r} is not a finite number"
    try:
        if abs(float(cell)) > FLOAT32_MAX:
            return f"{cell!r} is beyond float32's range (magnitude at most {FLOAT32_MAX:.4g}); rescale the column"
    except ValueError:
        pass
    return f"{cell!r} is not a number; {what}"


def label(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)

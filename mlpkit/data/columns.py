"""pyarrow columns -> one float32 feature array (categorical columns one-hot); targets.py: the targets.

Whole columns at a time: no pandas, no per-row Python. A cell that cannot be used is found with
vectorised compute (first null, first non-number, first non-finite value) and reported by
``Rows.problem`` with the file, line (or row) and column it came from.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpkit.data.formats import TableFile
from mlpkit.data.precision import FLOAT32_MAX, SAMPLE_ROWS, offsets_of
from mlpkit.errors import ConfigError, DataError

NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"  # a finite decimal number, as the cell is written


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
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        return column
    if pa.types.is_decimal(kind):  # as float64: numpy would hold Decimal objects
        return pc.cast(column, pa.float64())
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
    """Each file's column as numbers; the first cell that is not one is reported (a column of dates
    or times, whose cells may print as numbers, by its type)."""
    import pyarrow.compute as pc

    converted = []
    for offset, table_file, values in zip(rows.offsets, rows.files, columns):
        number = numeric(values)
        if temporal(values.type):
            raise table_file.fail(f"column '{column}' holds dates or times ({values.type}); feature "
                                  "columns must be numbers: convert it in the file (e.g. to days since a "
                                  f"start date), one-hot encode it with data.categorical=[{column}], or "
                                  "leave it out with data.features=[...]")
        if number is None:
            bad = first(pc.invert(pc.match_substring_regex(text(values), NUMBER)))
            if bad < 0:  # every cell prints as a number, yet the type is none pyarrow reads as one
                raise table_file.fail(f"column '{column}' holds {values.type} values; feature columns "
                                      "must be numbers or text")
            raise rows.problem(int(offset) + bad, column, describe)
        converted.append(number)
    check_nulls(rows, column, converted, describe)
    return converted


def temporal(kind: Any) -> bool:
    """A date, time, timestamp or duration type (a dictionary of them too)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_temporal(kind)


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
            if name in listed or (categorical == "auto" and is_text(rows.tables[0].column(name)))}


def is_text(column: Any) -> bool:
    """What data.categorical=auto one-hot encodes: a column that is not numbers, nor dates or times
    (one category per day would be no encoding; those are refused by name)."""
    return numeric(column) is None and not temporal(column.type)


def encode_features(rows: Rows, names: Sequence[str], categorical: Any = "none",
                    categories: dict[str, list[str]] | None = None,
                    hint: Callable[[str], str] = lambda column: "feature columns must be numeric",
                    offsets: Sequence[float] | None = None) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """(N, F) float32 features, their names (``color=red`` for one-hot columns) and the categories.

    Numeric columns are copied chunk by chunk into one preallocated array; a categorical column
    becomes one 0/1 column per category of the training file (sorted); a category the training
    file did not hold is an error naming its cell. ``offsets`` (F,) are subtracted from the features
    in float64, before their float32 cast: a run's feature_mean keeps the digits of 1e8 + noise.
    """
    values, feature_names, plan, _offsets, _sample = _encode(rows, names, categorical, categories, hint,
                                                             offsets, fit=False)
    return values, feature_names, plan


def encode_training_features(rows: Rows, names: Sequence[str], categorical: Any, hint: Callable[[str], str]
                             ) -> tuple[np.ndarray, list[str], dict[str, list[str]], np.ndarray, np.ndarray]:
    """As encode_features, each numeric column centred in float64 (on the median of the training
    file's first rows) before its float32 cast; also those offsets and the first rows in float64 (NaN for one-hot columns),
    RawData's ``feature_offsets`` and ``feature_sample``."""
    return _encode(rows, names, categorical, None, hint, None, fit=True)


def _encode(rows: Rows, names: Sequence[str], categorical: Any, categories: dict[str, list[str]] | None,
            hint: Callable[[str], str], offsets: Sequence[float] | None, fit: bool
            ) -> tuple[np.ndarray, list[str], dict[str, list[str]], np.ndarray, np.ndarray]:
    """The features, names, categories, the offsets subtracted (``fit``: each numeric column's
    training mean; else ``offsets``, or none) and float64 sample rows."""
    plan = plan_features(rows, names, categorical, categories)
    feature_names = [f"{name}={value}" if name in plan else name
                     for name in names for value in (plan.get(name) or [None])]
    offsets = np.zeros(len(feature_names)) if offsets is None else np.asarray(offsets, dtype=np.float64)
    sample = np.full((min(SAMPLE_ROWS, int(rows.offsets[1])), len(feature_names)), np.nan)
    # Column-major, so filling column j touches only its own pages while the pyarrow column it
    # came from is released: the load peaks near one copy of the data, not two.
    values = np.empty((len(rows), len(feature_names)), dtype=np.float32, order="F")
    position = 0
    for name in names:
        columns = [table.column(name) for table in rows.tables]
        rows.tables = [table.drop_columns([name]) for table in rows.tables]
        describe = functools.partial(cell_problem, what=hint(name))
        if name in plan:
            width = len(plan[name])
            fill_one_hot(rows, name, columns, plan[name], values[:, position:position + width], describe)
            if offsets[position:position + width].any():
                values[:, position:position + width] -= offsets[position:position + width].astype(np.float32)
            position += width
        else:
            offsets[position], sample[:, position] = fill_numbers(
                rows, name, columns, values[:, position], describe, None if fit else offsets[position])
            position += 1
        del columns  # the last references to this pyarrow column: its memory goes back
    return values, feature_names, plan, offsets, sample


def fill_one_hot(rows: Rows, name: str, columns: Sequence[Any], known: list[str], block: np.ndarray,
                 describe: Callable[[str], str]) -> None:
    """``block`` (N, categories): 1 where a row holds the category, else 0."""
    import pyarrow as pa
    import pyarrow.compute as pc

    check_nulls(rows, name, columns, describe)
    block[:] = 0
    for offset, column in zip(rows.offsets, columns):
        codes = pc.index_in(text(column), value_set=pa.array(known, pa.string()))
        if codes.null_count:
            shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            raise rows.problem(int(offset) + first(pc.is_null(codes)), name, functools.partial(
                unseen_category, shown=shown))
        codes = codes.to_numpy().astype(np.int64) if codes.num_chunks else np.zeros(0, np.int64)
        block[np.arange(offset, offset + len(codes)), codes] = 1


def fill_numbers(rows: Rows, name: str, columns: Sequence[Any], column_values: np.ndarray,
                 describe: Callable[[str], str], offset: float | None) -> tuple[float, np.ndarray]:
    """Fill ``column_values`` (N,) with the column's numbers less ``offset`` (None: the training file's
    rows' median), subtracted in float64 before the float32 cast; the offset and the first rows in float64."""
    converted = check_numbers(rows, name, columns, describe)
    first_rows = np.asarray(converted[0].slice(0, SAMPLE_ROWS).to_numpy(zero_copy_only=False), dtype=np.float64)
    if offset is None:
        offset = float(offsets_of(first_rows[:, None])[0])
    for start, column in zip(rows.offsets, converted):
        start = int(start)
        for chunk in column.chunks:
            part = np.asarray(chunk.to_numpy(zero_copy_only=False), dtype=np.float64)
            bad = np.flatnonzero(~(np.abs(part) <= FLOAT32_MAX))  # NaN, inf, or beyond float32
            if bad.size:
                raise rows.problem(start + int(bad[0]), name, describe)
            column_values[start:start + len(part)] = part - offset
            start += len(part)
    return offset, first_rows


def unseen_category(cell: str, shown: str) -> str:
    return f"category {cell.strip()!r} is not one the training file holds ({shown})"


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

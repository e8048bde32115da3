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
from mlpkit.data.missing import FILLS, MISSING_CATEGORY, TRAINING_REMEDY
from mlpkit.data.precision import FLOAT32_MAX, SAMPLE_ROWS, offsets_of
from mlpkit.errors import ConfigError, DataError

NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"  # a finite decimal number, as the cell is written


@dataclass
class Rows:
    """The rows of one or more table files stacked in order (train, then val, then test);
    ``file_rows``: each file's data row of each table row, once rows were dropped (``keep``)."""

    files: list[TableFile]
    tables: list[Any]  # pyarrow Tables, one per file
    file_rows: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [table.num_rows for table in self.tables])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def keep(self, kept: list[np.ndarray]) -> None:
        """Keep rows ``kept[i]`` (ascending) of table i: the others are dropped; messages still name
        each kept row's line in its file."""
        import pyarrow as pa

        self.tables = [table.take(pa.array(rows)) for table, rows in zip(self.tables, kept)]
        self.file_rows = [rows if self.file_rows is None else self.file_rows[i][rows] for i, rows in enumerate(kept)]
        self.__post_init__()

    def locate(self, row: int) -> tuple[TableFile, int]:
        index = int(np.searchsorted(self.offsets, row, side="right")) - 1
        local = row - int(self.offsets[index])
        return self.files[index], local if self.file_rows is None else int(self.file_rows[index][local])

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


class MissingCell(str):
    """A cell's text that read as missing (one of data.missing_values), whatever it says: "?" too."""


def check_nulls(rows: Rows, column: str, columns: Sequence[Any], describe: Callable[[str], str]) -> None:
    """The first null (missing) cell of ``column`` (each file's ``columns``), reported."""
    import pyarrow.compute as pc

    for offset, values in zip(rows.offsets, columns):
        if values.null_count:
            raise rows.problem(int(offset) + first(pc.is_null(values)), column,
                               lambda cell: describe(MissingCell(cell)))


def check_numbers(rows: Rows, column: str, columns: Sequence[Any], describe: Callable[[str], str],
                  allow_missing: bool = False) -> list[Any]:
    """Each file's column as numbers; the first cell that is not one (nor, ``allow_missing``, a
    missing cell) is reported (a column of dates or times, whose cells may print as numbers, by its type)."""
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
            not_number = pc.invert(pc.match_substring_regex(text(values), NUMBER))
            bad = first(not_number.fill_null(False) if allow_missing else not_number)
            if bad < 0:  # every cell prints as a number, yet the type is none pyarrow reads as one
                raise table_file.fail(f"column '{column}' holds {values.type} values; feature columns "
                                      "must be numbers or text")
            raise rows.problem(int(offset) + bad, column, describe)
        converted.append(number)
    if not allow_missing:
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
                  categories: dict[str, list[str]] | None, allow_missing: bool = False) -> dict[str, list[str]]:
    """The columns to one-hot encode and their categories (fitted on the first file, training; with
    ``allow_missing``, '<missing>' last for a column with a missing cell there)."""
    if categories is not None:  # prediction: the run's own encoding
        return {name: list(values) for name, values in categories.items() if name in names}
    listed = [] if categorical in (None, "auto", "none") else [str(name) for name in categorical]
    for name in listed:
        if name not in names:
            raise ConfigError("data.categorical", listed, f"feature columns; '{name}' is not one of: "
                              f"{', '.join(names)}")
    return {name: fitted_categories(rows, name, allow_missing) for name in names
            if name in listed or (categorical == "auto" and is_text(rows.tables[0].column(name)))}


def fitted_categories(rows: Rows, name: str, allow_missing: bool) -> list[str]:
    """The training file's categories of column ``name``, '<missing>' last if a cell is missing
    (``allow_missing``); a column missing in every training row is one line."""
    column = rows.tables[0].column(name)
    known = categories_of(column)
    if allow_missing and column.null_count:
        if not known:
            raise rows.files[0].fail(f"column '{name}' is missing in all {column.length()} rows: nothing to "
                                     "encode; leave it out with data.features=[...]")
        known.append(MISSING_CATEGORY)
    return known


def is_text(column: Any) -> bool:
    """What data.categorical=auto one-hot encodes: a column that is not numbers, nor dates or times
    (one category per day would be no encoding; those are refused by name)."""
    return numeric(column) is None and not temporal(column.type)


def encode_features(rows: Rows, names: Sequence[str], categorical: Any = "none",
                    categories: dict[str, list[str]] | None = None,
                    hint: Callable[[str], str] = lambda column: "feature columns must be numeric",
                    offsets: Sequence[float] | None = None, missing: str = "error"
                    ) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """(N, F) float32 features, their names (``color=red`` for one-hot columns) and the categories.

    Numeric columns are copied chunk by chunk into one preallocated array; a categorical column
    becomes one 0/1 column per category of the training file (sorted); a category the training
    file did not hold is an error naming its cell. ``offsets`` (F,) are subtracted from the features
    in float64, before their float32 cast: a run's feature_mean keeps the digits of 1e8 + noise.
    ``missing``: the run's data.missing; with a fill strategy a numeric column's missing cell is NaN
    (mlpkit.data.missing fills it) and a categorical one's is '<missing>' (no category if the
    training file had none), else it is refused.
    """
    values, feature_names, plan, _offsets, _sample = _encode(rows, names, categorical, categories, hint,
                                                             offsets, fit=False, missing=missing)
    return values, feature_names, plan


def encode_training_features(rows: Rows, names: Sequence[str], categorical: Any, hint: Callable[[str], str],
                             missing: str = "error"
                             ) -> tuple[np.ndarray, list[str], dict[str, list[str]], np.ndarray, np.ndarray]:
    """As encode_features, each numeric column centred in float64 (on the median of the training
    file's first rows) before its float32 cast; also those offsets and the first rows in float64 (NaN for one-hot columns),
    RawData's ``feature_offsets`` and ``feature_sample``."""
    return _encode(rows, names, categorical, None, hint, None, fit=True, missing=missing)


def _encode(rows: Rows, names: Sequence[str], categorical: Any, categories: dict[str, list[str]] | None,
            hint: Callable[[str], str], offsets: Sequence[float] | None, fit: bool, missing: str = "error"
            ) -> tuple[np.ndarray, list[str], dict[str, list[str]], np.ndarray, np.ndarray]:
    """The features, names, categories, the offsets subtracted (``fit``: each numeric column's
    training mean; else ``offsets``, or none) and float64 sample rows."""
    allow_missing = missing in FILLS
    remedy = TRAINING_REMEDY if fit else f"(the run was trained with data.missing={missing}: it fills no cell in)"
    plan = plan_features(rows, names, categorical, categories, allow_missing)
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
        describe = functools.partial(cell_problem, what=hint(name), remedy=remedy)
        if name in plan:
            width = len(plan[name])
            fill_one_hot(rows, name, columns, plan[name], values[:, position:position + width], describe,
                         allow_missing)
            if offsets[position:position + width].any():
                values[:, position:position + width] -= offsets[position:position + width].astype(np.float32)
            position += width
        else:
            offsets[position], sample[:, position] = fill_numbers(
                rows, name, columns, values[:, position], describe, None if fit else offsets[position],
                allow_missing)
            position += 1
        del columns  # the last references to this pyarrow column: its memory goes back
    return values, feature_names, plan, offsets, sample


def fill_one_hot(rows: Rows, name: str, columns: Sequence[Any], known: list[str], block: np.ndarray,
                 describe: Callable[[str], str], allow_missing: bool = False) -> None:
    """``block`` (N, categories): 1 where a row holds the category, else 0; ``allow_missing``: a
    missing cell is the category '<missing>' (all 0 where the training file had no missing cell)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not allow_missing:
        check_nulls(rows, name, columns, describe)
    block[:] = 0
    for offset, column in zip(rows.offsets, columns):
        cells = text(column)
        codes = pc.index_in(cells.fill_null(MISSING_CATEGORY) if allow_missing else cells,
                            value_set=pa.array(known, pa.string()))
        unseen = pc.is_null(codes)
        if allow_missing:  # a missing cell the training file never had: no category
            unseen = pc.and_(unseen, pc.is_valid(cells))
        if pc.any(unseen).as_py():
            shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            raise rows.problem(int(offset) + first(unseen), name, functools.partial(unseen_category, shown=shown))
        codes = codes.to_numpy(zero_copy_only=False) if codes.num_chunks else np.zeros(0)
        encoded = np.flatnonzero(~np.isnan(codes)) if codes.dtype.kind == "f" else np.arange(len(codes))
        block[offset + encoded, codes[encoded].astype(np.int64)] = 1


def fill_numbers(rows: Rows, name: str, columns: Sequence[Any], column_values: np.ndarray,
                 describe: Callable[[str], str], offset: float | None, allow_missing: bool = False
                 ) -> tuple[float, np.ndarray]:
    """Fill ``column_values`` (N,) with the column's numbers less ``offset`` (None: the training file's
    rows' median), subtracted in float64 before the float32 cast (``allow_missing``: NaN where a cell
    is missing); the offset and the first rows in float64."""
    converted = check_numbers(rows, name, columns, describe, allow_missing)
    first_rows = np.asarray(converted[0].slice(0, SAMPLE_ROWS).to_numpy(zero_copy_only=False), dtype=np.float64)
    if offset is None:
        offset = float(offsets_of(first_rows[:, None])[0])
    for start, column in zip(rows.offsets, converted):
        start = int(start)
        for chunk in column.chunks:
            part = np.asarray(chunk.to_numpy(zero_copy_only=False), dtype=np.float64)
            beyond = np.abs(part) > FLOAT32_MAX if allow_missing else ~(np.abs(part) <= FLOAT32_MAX)
            bad = np.flatnonzero(beyond)  # inf, beyond float32, or (missing not allowed) NaN
            if bad.size:
                raise rows.problem(start + int(bad[0]), name, describe)
            column_values[start:start + len(part)] = part - offset
            start += len(part)
    return offset, first_rows


def target_problem(cell: str) -> str:
    """Why a target cell cannot be used: a missing one cannot be filled in."""
    missing = missing_cell(cell)
    if missing is not None:
        return (f"{missing}: a row needs its target value; fill it in or remove the row, or set "
                "data.missing=drop to drop such rows")
    return cell_problem(cell, "")


def unseen_category(cell: str, shown: str) -> str:
    return f"category {cell.strip()!r} is not one the training file holds ({shown})"


def missing_cell(cell: str) -> str | None:
    """"empty cell" or "missing value 'NA'" for a cell that reads as missing, else None."""
    stripped = cell.strip().lower()
    if stripped == "":
        return "empty cell"
    if isinstance(cell, MissingCell) or stripped in {"na", "n/a", "nan", "null", "none"}:
        return f"missing value {str(cell)!r}"
    return None


def cell_problem(cell: str, what: str, remedy: str = TRAINING_REMEDY) -> str:
    """Why a cell cannot be used, in words a user acts on; ``remedy``: what a missing cell can do."""
    stripped = cell.strip().lower()
    missing = missing_cell(cell)
    if missing is not None:
        return f"{missing}; fill it in or remove the row {remedy}"
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

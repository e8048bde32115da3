"""The user's own table: CSV/TSV (plain or compressed), Parquet or Feather, chosen by suffix.

Numeric feature columns (and, with data.categorical, one-hot encoded text columns) and a named target
column; data.val_path and data.test_path give the validation and test rows in files of their own.
Every problem in a file stops the run with one line naming the file, the line (or row) and the
column; no row or cell is dropped or filled in silently: data.missing says what a missing cell does
(mlpkit.data.missing), and the start line counts the rows dropped or the cells filled.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlpkit.data.batches import read_numeric
from mlpkit.data.columns import Rows, encode_training_features
from mlpkit.data.formats import SUFFIXES, TableFile
from mlpkit.data.missing import (
    NUMERIC_ONLY,
    MissingSettings,
    drop_incomplete_rows,
    drop_note,
    missing_settings,
)
from mlpkit.data.raw import RawData, launch_path
from mlpkit.data.targets import encode_target
from mlpkit.errors import ConfigError, DataError, show_value

TASKS = ("auto", "binary", "multiclass", "regression")
CATEGORICAL = "auto (one-hot encode every text feature column), none, or a list of columns, e.g. [color]"
log = logging.getLogger(__name__)


def load_csv(path: str | None = None, target: str | None = None,
             features: Sequence[str] | str | None = None, task: str = "auto",
             delimiter: str = ",", test_path: str | None = None, val_path: str | None = None,
             categorical: Any = "none", missing: str = "error", fill_value: float = 0.0,
             missing_indicator: bool = False, missing_values: Sequence[str] | None = None) -> RawData:
    """Feature columns (``features``, default all but ``target``) and the target column of
    ``path``; with ``val_path``/``test_path``, those files hold the validation/test rows. The
    ``missing*`` keys: what a missing cell does (mlpkit.data.missing)."""
    if task not in TASKS:
        raise ConfigError("data.task", task, f"one of {', '.join(TASKS)}")
    delimiter = check_delimiter(delimiter)
    if not (categorical in ("auto", "none") or isinstance(categorical, (list, tuple))):
        raise ConfigError("data.categorical", categorical, CATEGORICAL)
    import pyarrow.compute as pc  # pyarrow: only table files need it

    settings = missing_settings(missing, fill_value, missing_indicator, missing_values)
    files = [TableFile(table_path(path, "data.path"), "data.path", delimiter, missing_values=list(settings.tokens))]
    for key, value in (("val", val_path), ("test", test_path)):
        if value is not None and str(value).strip() != "":
            files.append(TableFile(table_path(value, f"data.{key}_path"), f"data.{key}_path", delimiter,
                                   missing_values=list(settings.tokens)))
            warn_if_training_file(files[0].file, files[-1].file, f"data.{key}_path", value)
    header = list(files[0].schema().names)
    target_column, feature_columns = pick_columns(files[0].file, header, target, features)
    names, target_name = [header[c] for c in feature_columns], header[target_column]
    streamed = read_numeric(files, names, target_name, settings.fills) if categorical in (
        "none", "auto", [], ()) else None
    if streamed is not None and settings.strategy == "drop" and any(
            pc.any(pc.is_null(table.column(target_name), nan_is_null=True)).as_py() for table in streamed[1]):
        streamed = None  # rows to drop: the column-wise path drops them
    record = settings.record()
    if streamed is not None:  # every feature numeric and clean: read batch by batch
        values, target_tables, offsets, sample = streamed
        rows, feature_names, categories = Rows(files, target_tables), names, {}
        if settings.strategy == "drop":
            record["note"] = drop_note([f.file for f in files], [0] * len(files), len(values))
    else:  # the column-wise path: categories, and the exact cell behind any problem
        rows = Rows(files, [read_columns(table_file, [*names, target_name]) for table_file in files])
        if settings.strategy == "drop":
            total = len(rows)
            record["note"] = drop_note([f.file for f in files], drop_incomplete_rows(rows, [*names, target_name]),
                                       total)
        values, feature_names, categories, offsets, sample = encode_training_features(
            rows, names, categorical, functools.partial(_hint, settings=settings), settings.strategy)
    task, labels, class_names = encode_target(rows, target_name, task, str(files[0].file))
    splits, origin = given_splits(rows)
    rows.tables = []  # the pyarrow columns go: the float32 array holds the data now
    return RawData(values, labels, task, feature_names, class_names,
                   extra={"path": str(files[0].file), "target": target_name, "input_columns": names,
                          "categories": categories, "missing": record},
                   locate=rows.where, splits=splits, split_origin=origin, feature_offsets=offsets,
                   feature_sample=sample)


def warn_if_training_file(train: Path, other: Path, key: str, value: Any) -> None:
    """One warning line when data.val_path or data.test_path is data.path's file (under any spelling
    or link): its metrics would be measured on rows the model trains on."""
    if os.path.samefile(train, other):
        split = "validation" if key == "data.val_path" else "test"
        log.warning("%s=%s is the training file data.path=%s: the %s metrics are measured on rows the "
                    "model trains on", key, value, train, split)


def _hint(column: str, settings: MissingSettings | None = None) -> str:
    if settings is not None and settings.strategy in NUMERIC_ONLY:
        return (f"data.missing={settings.strategy} fills numeric columns only: one-hot encode this one with "
                f"data.categorical=[{column}] (or auto; a missing cell becomes the category '<missing>'), or "
                "leave it out with data.features=[...]")
    return (f"feature columns must be numeric; choose them with data.features=[...], or one-hot "
            f"encode this one with data.categorical=[{column}] (or data.categorical=auto)")


def given_splits(rows: Rows) -> tuple[tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None, str]:
    """The row ranges data.val_path/test_path gave (None where a split is carved from data.path)."""
    if len(rows.files) == 1:
        return None, ""
    ranges = {f.key: np.arange(rows.offsets[i], rows.offsets[i + 1]) for i, f in enumerate(rows.files)}
    val, test = ranges.get("data.val_path"), ranges.get("data.test_path")
    origin = ", ".join(f"{split} from {Path(f.file).name}" for split, f in
                       zip(("train", *(s for s in ("val", "test") if f"data.{s}_path" in ranges)), rows.files))
    origin += "".join(f", {split} carved from {Path(rows.files[0].file).name}"
                      for split, part in (("test", test), ("val", val)) if part is None)
    return (ranges["data.path"], val, test), origin


def check_delimiter(delimiter: Any, key: str = "data.delimiter") -> str:
    if delimiter == "\\t":  # data.delimiter='\t' on the command line arrives as two characters
        delimiter = "\t"
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ConfigError(key, delimiter, 'one character, e.g. "," or ";"')
    return delimiter


def read_columns(table_file: TableFile, columns: list[str]) -> Any:
    """The named columns of a file; a text file's numeric columns (judged on its first block) are
    parsed into float64 (centred before their float32 cast: mlpkit.data.precision), the others as text."""
    import pyarrow as pa

    schema = table_file.schema()
    missing = [name for name in columns if name not in schema.names]
    if missing:
        raise table_file.fail(f"has no column '{missing[0]}'; its columns are: {', '.join(schema.names)}")
    if table_file.kind != "text":
        return table_file.read(columns)
    types = {}
    for name in columns:
        kind = schema.field(name).type
        number = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)
        types[name] = pa.float64() if number else pa.string()
    return table_file.read(columns, types)


def table_path(path: str | None, key: str = "data.path") -> Path:
    if path is None or str(path).strip() == "":
        raise ConfigError(key, path, f"the table file to train on, e.g. {key}=my.csv ({SUFFIXES})")
    file = launch_path(path)
    if file.is_dir():
        raise DataError(key, path, f"{file} is a directory: expected a table file ({SUFFIXES}); a directory (or "
                        "glob) of Parquet files is read with data.stream=true")
    if file.exists() and not file.is_file():
        raise DataError(key, path, f"{file} is not a regular file (a device, pipe or socket): "
                        "expected a table file")
    if not file.exists():
        raise DataError(key, path, f"{file} does not exist; relative paths are read from the "
                        f"directory you launched from")
    return file


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



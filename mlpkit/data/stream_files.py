"""A streamed table's files (data.stream=true): data.path's Parquet files opened through
``pyarrow.dataset``, their row groups, the columns a run reads, and what a stream cannot do."""
from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpkit.data.raw import launch_path
from mlpkit.errors import ConfigError, DataError


def stream_files(path: Any) -> list[Path]:
    """data.path's Parquet files: the file, a directory's ``*.parquet`` (recursively) or a glob's matches."""
    if path is None or str(path).strip() == "":
        raise ConfigError("data.path", path, "a Parquet file, a directory of them or a glob, e.g. data/*.parquet")
    text = str(launch_path(path)) if not glob.has_magic(str(path)) else str(path)
    if glob.has_magic(text):
        files = sorted(Path(match) for match in glob.glob(str(launch_path(".") / text) if not Path(text).is_absolute()
                                                             else text, recursive=True))
    elif Path(text).is_dir():
        files = sorted(Path(text).rglob("*.parquet"))
    else:
        files = [Path(text)] if Path(text).exists() else []
    if not files:
        raise ConfigError("data.path", path, "an existing Parquet file, a directory holding *.parquet files or a "
                          "glob matching some (data.stream=true)")
    other = next((file for file in files if file.suffix != ".parquet"), None)
    if other is not None:
        raise ConfigError("data.path", path, "Parquet files only with data.stream=true",
                          f"{other} is not one; convert it, or read it in memory with data.stream=false")
    return files


@dataclass(frozen=True)
class RowGroup:
    fragment: Any  # a pyarrow.dataset fragment holding one row group
    file: str
    first_in_file: int  # its first row's number in its file
    first: int  # its first row's number in the dataset
    rows: int


def open_row_groups(files: list[Path]) -> tuple[list[RowGroup], Any]:
    """Every row group of the files, in order, and the schema they share; a file whose schema differs
    from the first file's is one line naming it."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        fragments = list(ds.dataset([str(file) for file in files], format="parquet").get_fragments())
        schemas = [fragment.physical_schema for fragment in fragments]
    except (pa.ArrowException, OSError):
        raise unreadable(files) from None
    schema = schemas[0]
    groups, first = [], 0
    for fragment in fragments:
        if not fragment.physical_schema.equals(schema):
            raise DataError("data.path", fragment.path, f"its schema differs from the first file's ({files[0]}): "
                            f"{schema_difference(schema, fragment.physical_schema)}; every file of a streamed "
                            "table must have the same columns and types")
        in_file = 0
        for part in fragment.split_by_row_group():
            rows = part.metadata.row_group(part.row_groups[0].id).num_rows
            groups.append(RowGroup(part, fragment.path, in_file, first, rows))
            in_file, first = in_file + rows, first + rows
    return groups, schema


def unreadable(files: list[Path]) -> DataError:
    """One line naming the first file that is not a Parquet file pyarrow can read, and why."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in files:
        try:
            pq.read_metadata(file)
        except (pa.ArrowException, OSError) as error:
            return DataError("data.path", str(file), f"not a readable Parquet file: {str(error).splitlines()[0]}")
    return DataError("data.path", str(files[0]), "pyarrow.dataset cannot open these Parquet files together")


def schema_difference(first: Any, other: Any) -> str:
    missing = [name for name in first.names if name not in other.names]
    if missing:
        return f"no column '{missing[0]}'"
    extra = [name for name in other.names if name not in first.names]
    if extra:
        return f"an extra column '{extra[0]}'"
    changed = next(name for name in first.names if not first.field(name).equals(other.field(name)))
    return f"column '{changed}' is {other.field(changed).type}, not {first.field(changed).type}"


def pick_stream_columns(schema: Any, target: Any, features: Any) -> tuple[list[str], str]:
    """The numeric feature columns and the target column, each checked against the schema."""
    import pyarrow as pa

    if target is None or target not in schema.names:
        raise ConfigError("data.target", target, f"a column of the table: {', '.join(schema.names)}")
    names = [name for name in schema.names if name != target] if features is None else list(features)
    for name in names:
        if name not in schema.names:
            raise ConfigError("data.features", list(names), f"columns of the table: {', '.join(schema.names)}")
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise ConfigError("data.features", list(names), "numeric columns with data.stream=true (categories are "
                              "not encoded in a stream)", f"column '{name}' is {kind}")
    return names, str(target)


def feature_values(batch: Any, width: int, rows: np.ndarray | None = None) -> np.ndarray:
    """A record batch's first ``width`` columns (at ``rows``, a mask: those rows only) as (n, width)
    float64, NaN where a cell is missing: one gather per column, no copy of the batch."""
    count = batch.num_rows if rows is None else int(rows.sum())
    values = np.empty((count, width), dtype=np.float64)
    for position in range(width):
        column = batch.column(position).to_numpy(zero_copy_only=False)
        values[:, position] = column if rows is None else column[rows]
    return values



def check_stream_keys(cfg: Mapping[str, Any]) -> None:
    """What a stream cannot do, each in one line naming its key."""
    if cfg.get("source") != "csv":
        raise ConfigError("data.stream", "true", "false with data.source=" f"{cfg.get('source')}: a stream reads "
                          "Parquet files through data=csv (data.path=<dir or glob>)")
    for key, allowed, fine in (("categorical", "none", ("none", "auto", None)), ("val_path", "null", (None, "")),
                               ("test_path", "null", (None, "")), ("cv_folds", "0", (0, None))):
        if cfg.get(key) not in fine:
            raise ConfigError(f"data.{key}", cfg.get(key), f"{allowed} with data.stream=true",
                              {"categorical": "a stream's feature columns are numeric",
                               "cv_folds": "folds would read the whole table once per fold"}.get(
                                  key, "a stream carves its splits with data.val_fraction and data.test_fraction"))
    for key, default, what in (("shuffle_buffer", 100_000, "the rows the stream's shuffle holds"),
                               ("eval_rows", 200_000, "the rows an evaluation samples from each split (null: all)")):
        value = cfg.get(key, default)
        if (value is not None or key == "shuffle_buffer") and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"data.{key}", value, f"an integer >= 1: {what}")

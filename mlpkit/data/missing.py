"""Missing cells of a table: data.missing, data.fill_value, data.missing_indicator, data.missing_values.

The table's reader (mlpkit.data.table) reads the cells data.missing_values names as missing. With
data.missing=error (the default) the first one stops the run, naming its file, line and column;
with drop, the rows holding one are dropped before the split (``drop_incomplete_rows``); with a fill
strategy (mean, median, most_frequent, constant) a numeric feature keeps NaN there and a one-hot
encoded text column gets the category '<missing>'. build_data then fills the NaN after the split,
before standardisation, with statistics of the training rows alone (``fill_missing``), and
preprocessing.json keeps the strategy, the fill values and the indicator columns, so a prediction
fills new rows the same way (``complete_rows``). This module imports nothing of the data package.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpkit.errors import ConfigError, DataError

STRATEGIES = ("error", "drop", "mean", "median", "most_frequent", "constant")
FILLS = ("mean", "median", "most_frequent", "constant")  # strategies that fill a cell in
NUMERIC_ONLY = ("mean", "median")  # a statistic a text column has none of
MISSING_CATEGORY = "<missing>"  # a one-hot column's category for a missing cell
INDICATOR_SUFFIX = "__missing"  # feature <column>__missing: 1 where the column's cell was missing
# What a text file's cell reads as missing by default (pyarrow compares them case-sensitively).
DEFAULT_MISSING_VALUES = ("", "na", "NA", "Na", "n/a", "N/A", "nan", "NaN", "NAN", "Nan", "null", "NULL", "Null",
                          "?")
# What a user can do about a missing cell in a training file.
TRAINING_REMEDY = ("(nothing is dropped silently), or set data.missing=drop (drop such rows), mean, median, "
                   "most_frequent or constant (fill them in)")


@dataclass(frozen=True)
class MissingSettings:
    """What a table's missing cells do (the data.missing* keys, checked)."""

    strategy: str = "error"
    fill_value: float = 0.0
    indicator: bool = False
    tokens: tuple[str, ...] = DEFAULT_MISSING_VALUES

    @property
    def fills(self) -> bool:
        return self.strategy in FILLS

    def record(self) -> dict[str, Any]:
        """The run's record (preprocessing.json's "missing"), before build_data adds what it fitted."""
        return {"strategy": self.strategy, "fill_value": self.fill_value, "indicator": self.indicator,
                "missing_values": list(self.tokens)}


def missing_settings(missing: Any = "error", fill_value: Any = 0.0, missing_indicator: Any = False,
                     missing_values: Any = None) -> MissingSettings:
    """The data.missing* keys checked, each refused in one line naming it and what it allows."""
    if missing not in STRATEGIES:
        raise ConfigError("data.missing", missing, f"one of {', '.join(STRATEGIES)}")
    if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)) or not math.isfinite(fill_value):
        raise ConfigError("data.fill_value", fill_value, "a finite number: what data.missing=constant writes "
                          "into a numeric column's missing cells")
    if not isinstance(missing_indicator, bool):
        raise ConfigError("data.missing_indicator", missing_indicator, "true or false")
    if missing_indicator and missing not in FILLS:
        raise ConfigError("data.missing_indicator", "true", "false with data.missing="
                          f"{missing} (no cell is filled); true needs data.missing=mean, median, most_frequent "
                          "or constant")
    if missing_values is None:
        tokens = DEFAULT_MISSING_VALUES
    elif isinstance(missing_values, Sequence) and not isinstance(missing_values, str) and all(
            isinstance(token, str) for token in missing_values):
        tokens = tuple(missing_values)
    else:
        raise ConfigError("data.missing_values", missing_values, 'a list of the cells that mean "no value" in '
                          'a text file, e.g. ["", NA, "?"]')
    return MissingSettings(str(missing), float(fill_value), missing_indicator, tokens)


# --- data.missing=drop: in the reader, before the split ---------------------------------------------
def drop_incomplete_rows(rows: Any, columns: Sequence[str]) -> list[int]:
    """Drop from each table of ``rows`` (mlpkit.data.columns.Rows) the rows with a missing cell (null
    or NaN) in ``columns``; each file's count of dropped rows. A file left with no row is one line."""
    import pyarrow.compute as pc

    kept, dropped = [], []
    for table_file, table in zip(rows.files, rows.tables):
        holes = np.zeros(table.num_rows, dtype=bool)
        for name in columns:
            holes |= pc.is_null(table.column(name), nan_is_null=True).to_numpy(zero_copy_only=False)
        if holes.all():
            empty = next((name for name in columns if table.column(name).null_count == table.num_rows), None)
            why = f"column '{empty}' is missing in every row" if empty else "every row has a missing cell"
            raise table_file.fail(f"data.missing=drop drops all {table.num_rows} rows: {why}; leave such a "
                                  "column out with data.features=[...], or fill the cells with data.missing="
                                  "mean, median, most_frequent or constant")
        kept.append(np.flatnonzero(~holes))
        dropped.append(int(holes.sum()))
    rows.keep(kept)
    return dropped


def drop_note(files: Sequence[Path], dropped: Sequence[int], total: int) -> str:
    """The start line's words for the rows data.missing=drop dropped, per file."""
    count = sum(dropped)
    where = ", ".join(f"{Path(file).name} {number}" for file, number in zip(files, dropped))
    return f"data.missing=drop: {count} of {total} rows with a missing cell dropped ({where})"


# --- a fill strategy: in build_data, after the split ------------------------------------------------
def fill_missing(raw: Any, splits: Sequence[np.ndarray]) -> None:
    """Fill the NaN a table's reader left in ``raw.features`` (a RawData) with the training rows'
    (``splits[0]``) statistic of each numeric column, add the indicator columns, and record both in
    ``raw.extra["missing"]`` with the cells filled per split; nothing for other sources or strategies."""
    record = raw.extra.get("missing")
    if not record or record["strategy"] not in FILLS or "fill_values" in record:
        return
    categories = dict(raw.extra.get("categories") or {})
    numeric = [name for name in raw.extra["input_columns"] if name not in categories]
    offsets = np.zeros(raw.features.shape[1]) if raw.feature_offsets is None else raw.feature_offsets
    filled = np.zeros(len(splits), dtype=np.int64)
    fill_values, indicators = {}, []
    for name in numeric:
        position = raw.feature_names.index(name)
        column = raw.features[:, position]  # a view: filled in place
        holes = np.isnan(column)
        train = splits[0]
        present = column[train][~holes[train]]
        if not len(present):
            raise DataError("data.path", raw.extra["path"], f"column '{name}' is missing in all {len(train)} "
                            "training rows: nothing to fill it from; leave it out with data.features=[...]")
        value = fitted_value(present, float(offsets[position]), record)
        fill_values[name] = value
        if holes.any():
            column[holes] = np.float32(value - offsets[position])
            filled += [int(holes[rows].sum()) for rows in splits]
            if record["indicator"] and holes[train].any():
                indicators.append((name, holes))
    for name, values in categories.items():  # a missing text cell became the category <missing>
        if MISSING_CATEGORY in values:
            position = raw.feature_names.index(f"{name}={MISSING_CATEGORY}")
            filled += [int((raw.features[rows, position] == 1).sum()) for rows in splits]
    add_indicators(raw, indicators)
    record |= {"fill_values": fill_values, "indicators": [name for name, _holes in indicators],
               "filled": dict(zip(("train", "val", "test"), filled.tolist()))}
    record["note"] = fill_note(record)


def fitted_value(present: np.ndarray, offset: float, record: dict[str, Any]) -> float:
    """The fill value of a column from its training rows' values ``present`` (less ``offset``)."""
    strategy = record["strategy"]
    if strategy == "constant":
        return float(record["fill_value"])
    values = present.astype(np.float64)
    if strategy == "mean":
        return float(values.mean()) + offset
    if strategy == "median":
        return float(np.median(values)) + offset
    distinct, counts = np.unique(values, return_counts=True)
    return float(distinct[np.argmax(counts)]) + offset  # the smallest of the most frequent, as scikit-learn


def add_indicators(raw: Any, indicators: list[tuple[str, np.ndarray]]) -> None:
    """Append a 0/1 feature ``<column>__missing`` per ``(column, holes)`` to ``raw``."""
    if not indicators:
        return
    columns = np.stack([holes for _name, holes in indicators], axis=1).astype(np.float32)
    raw.features = np.concatenate([raw.features, columns], axis=1)
    raw.feature_names = [*raw.feature_names, *(f"{name}{INDICATOR_SUFFIX}" for name, _holes in indicators)]
    if raw.feature_offsets is not None:
        raw.feature_offsets = np.concatenate([raw.feature_offsets, np.zeros(len(indicators))])
    if raw.feature_sample is not None:  # NaN: a 0/1 column is not judged for float32's precision
        raw.feature_sample = np.concatenate([raw.feature_sample, np.full((len(raw.feature_sample),
                                                                          len(indicators)), np.nan)], axis=1)
    if raw.feature_groups is not None:
        start = int(np.max(raw.feature_groups)) + 1
        raw.feature_groups = np.concatenate([raw.feature_groups, np.arange(start, start + len(indicators))])


def fill_note(record: dict[str, Any]) -> str:
    """The start line's words for the cells filled, per split."""
    filled = record["filled"]
    note = (f"data.missing={record['strategy']}: {sum(filled.values())} missing cells filled "
            f"(train {filled['train']}, val {filled['val']}, test {filled['test']})")
    if record["indicators"]:
        note += f", indicator columns {', '.join(name + INDICATOR_SUFFIX for name in record['indicators'])}"
    return note


# --- a prediction: the run's own fill values --------------------------------------------------------
def input_features(feature_names: Sequence[str], record: dict[str, Any] | None) -> list[str]:
    """The run's features less its indicator columns: what a user's rows give."""
    indicators = {f"{name}{INDICATOR_SUFFIX}" for name in (record or {}).get("indicators") or []}
    return [name for name in feature_names if name not in indicators]


def complete_rows(values: np.ndarray, names: Sequence[str], record: dict[str, Any] | None,
                  offsets: Sequence[float] | None = None) -> np.ndarray:
    """``values`` (n, features less indicators, named ``names``; less ``offsets`` if given) with each
    NaN of a numeric column filled with the run's fill value, followed by the run's indicator columns
    (less their offsets). Unchanged for a run that fills nothing: its NaN are refused downstream."""
    record = record or {}
    if record.get("strategy") not in FILLS:
        return values
    offsets = np.zeros(len(names) + len(record["indicators"])) if offsets is None else np.asarray(
        offsets, dtype=np.float64)
    holes = {name: np.isnan(values[:, list(names).index(name)]) for name in record["indicators"]}
    for name, value in record["fill_values"].items():
        position = list(names).index(name)
        missing = np.isnan(values[:, position])
        if missing.any():
            values[missing, position] = value - offsets[position]
    if not holes:
        return values
    indicator = np.stack([holes[name] for name in record["indicators"]], axis=1).astype(np.float64)
    indicator -= offsets[len(names):len(names) + len(holes)]
    return np.concatenate([values, indicator.astype(values.dtype)], axis=1)

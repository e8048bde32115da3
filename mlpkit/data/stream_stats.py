"""One streaming pass over a table larger than memory (data.stream=true): which split each row falls
in, and the training rows' statistics, gathered record batch by record batch without holding the table.

A row's split is a seeded hash of its row number in the dataset (files in sorted order): the same rows
land in the same split whatever reads them, in any order, on any rank, and no list of rows is kept
(the fractions hold to within sampling noise; there is no stratification). The pass returns counts,
the training split's per-column mean and variance (Chan's parallel update, in float64, missing cells
left out), the target's classes or its mean and variance, each row group's training rows (for the
ranks of a ddp run) and, for data.missing=median or most_frequent, a hashed uniform sample of at most
SAMPLE_ROWS training rows: those two statistics come from the sample, not every row.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlpkit.data.precision import FLOAT32_MAX
from mlpkit.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
SAMPLE_ROWS = 100_000  # training rows kept for data.missing=median / most_frequent
MAX_DISTINCT = 10_000  # a numeric target with more distinct values is not class labels
# one independent draw per use of a row's number: its split, the fill statistics' sample, an evaluation's sample
SPLIT_SALT, SAMPLE_SALT, EVAL_SALT = 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03, 0x8CB92BA72F3D8DD7


def uniform(rows: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per row number: splitmix64 of the row mixed with ``seed``."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64((int(seed) * 0x632BE59BD9B4E019 + salt) % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_of(rows: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """0 (train), 1 (val) or 2 (test) per row number."""
    draw = uniform(rows, seed, SPLIT_SALT)
    return np.where(draw < test_fraction, 2, np.where(draw < test_fraction + val_fraction, 1, 0)).astype(np.int8)


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per column, merged batch by batch (NaN left out)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, width: int) -> Moments:
        return cls(np.zeros(width), np.zeros(width), np.zeros(width))

    def add(self, values: np.ndarray) -> None:
        present = ~np.isnan(values)
        count = present.sum(axis=0).astype(np.float64)
        if not count.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), 0.0)
            m2 = np.nansum(np.where(present, values - mean, 0.0) ** 2, axis=0)
        total = self.count + count
        delta = mean - self.mean
        safe = np.maximum(total, 1)
        self.mean = self.mean + delta * count / safe
        self.m2 = self.m2 + m2 + delta ** 2 * self.count * count / safe
        self.count = total

    def variance(self) -> np.ndarray:
        return self.m2 / np.maximum(self.count, 1)


@dataclass
class StreamStats:
    """What the pass found (picklable: rank 0 scans, the other ranks receive it)."""

    rows: list[int] = field(default_factory=lambda: [0, 0, 0])  # per split, after data.missing=drop
    dropped: int = 0
    missing: list[np.ndarray] = field(default_factory=list)  # per split: missing cells per column
    features: Moments | None = None  # the training rows' columns
    target: Moments = field(default_factory=lambda: Moments.empty(1))  # a numeric target, training rows
    classes: list[Counter] = field(default_factory=lambda: [Counter(), Counter(), Counter()])
    numeric_target: bool = True
    group_train_rows: list[int] = field(default_factory=list)  # training rows per row group
    sample: list[np.ndarray] = field(default_factory=list)  # training rows kept for median / most_frequent

    def add(self, values: np.ndarray, target: Any, parts: np.ndarray, missing_strategy: str,
            sampled: np.ndarray | None) -> int:
        """Count one record batch (float64 features, the target column, each row's split); its
        training rows. A missing cell's row is dropped first with data.missing=drop."""
        import pyarrow.compute as pc

        if self.features is None:
            self.features = Moments.empty(values.shape[1])
            self.missing = [np.zeros(values.shape[1], dtype=np.int64) for _ in SPLIT_NAMES]
        if missing_strategy == "drop":
            keep = ~np.isnan(values).any(axis=1) & ~pc.is_null(target, nan_is_null=True).to_numpy(
                zero_copy_only=False)
            self.dropped += int((~keep).sum())
            values, target, parts = values[keep], target.filter(keep), parts[keep]
            sampled = None if sampled is None else sampled[keep]
        numbers = target_numbers(target)
        self.numeric_target = self.numeric_target and numbers is not None
        for part in range(3):
            chosen = parts == part
            self.rows[part] += int(chosen.sum())
            self.missing[part] += np.isnan(values[chosen]).sum(axis=0)
            if self.numeric_target and numbers is not None:
                distinct, counts = np.unique(numbers[chosen], return_counts=True)
            else:
                picked = pc.cast(target, "string").filter(chosen)
                counted = pc.value_counts(picked)
                distinct, counts = counted.field("values").to_pylist(), counted.field("counts").to_pylist()
            if sum(len(c) for c in self.classes) <= MAX_DISTINCT:
                self.classes[part].update(dict(zip(np.asarray(distinct).tolist() if numbers is not None
                                                   else distinct, np.asarray(counts).tolist())))
        train = parts == 0
        self.features.add(values[train])
        if numbers is not None:
            self.target.add(numbers[train].reshape(-1, 1))
        if sampled is not None:
            self.sample.append(values[train & sampled])
        return int(train.sum())

    def many_values(self) -> bool:
        return sum(len(c) for c in self.classes) > MAX_DISTINCT


def target_numbers(target: Any) -> np.ndarray | None:
    """A numeric target column as float64 (NaN where missing), None for a text one."""
    import pyarrow as pa

    if not (pa.types.is_integer(target.type) or pa.types.is_floating(target.type)):
        return None
    return np.asarray(target.to_numpy(zero_copy_only=False), dtype=np.float64)


def first_missing(values: np.ndarray, target: Any, names: list[str], target_name: str) -> tuple[int, str] | None:
    """(row, column) of a record batch's first missing cell, or None."""
    import pyarrow.compute as pc

    holes = np.isnan(values)
    target_holes = pc.is_null(target, nan_is_null=True).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(holes.any(axis=1) | target_holes)
    if not len(rows):
        return None
    row = int(rows[0])
    column = names[int(np.argmax(holes[row]))] if holes[row].any() else target_name
    return row, column


def first_too_large(values: np.ndarray, target: Any, names: list[str], target_name: str
                    ) -> tuple[int, str, float] | None:
    """(row, column, value) of a record batch's first value float32 cannot hold (infinite, or beyond
    +-3.4e38: the model's inputs are float32), or None."""
    numbers = target_numbers(target)
    cells = np.column_stack([values, numbers]) if numbers is not None else values
    with np.errstate(invalid="ignore"):
        bad = np.abs(cells) > FLOAT32_MAX
    if not bad.any():
        return None
    row, column = (int(index) for index in np.argwhere(bad)[0])
    return row, [*names, target_name][column], float(cells[row, column])


def refuse_missing(file: str, row: int, column: str) -> DataError:
    return DataError("data.path", file, f"row {row} (counted from 0 in this file), column '{column}': a missing "
                     "cell; data.missing=error stops at the first one (nothing is dropped silently), or set "
                     "data.missing=drop, mean, median, most_frequent or constant")

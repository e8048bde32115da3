"""float64 -> float32 without losing a column's digits: centre first, and say when float32 still loses some.

float32 holds 1e8 in steps of 8, so ``1e8 + noise`` cast as it is becomes a constant column. Every
source's features reach float32 as ``value - offset``, the offset the median of the column's first
rows in float64 (a table's reader centres each column as it reads it; build_data centres a float64
array on its first training rows); the offset is added back into the saved mean, so predictions
see the same inputs.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)
FLOAT32_MAX = float(np.finfo(np.float32).max)
SAMPLE_ROWS = 1000  # a column's first rows, compared as float64 and as the float32 tensors hold them
# Beyond this an offset gains nothing and ``value - offset`` could leave float32's range.
MAX_OFFSET = 1e30
# Values closer than this share of a column's range count as one: float64 rounding noise (0.1 + 0.2
# against 0.3) is no information a float32 model could use.
RESOLUTION = 1e-6


def offsets_of(sample: np.ndarray) -> np.ndarray:
    """(F,) float64: what each column loses before its float32 cast, the median of its first rows
    ``sample`` (k, F) (a median, not a mean: one huge value does not move it away from the rest);
    0 for a column with no finite value there or a median too large to help."""
    offsets = np.zeros(sample.shape[1])
    for column in range(sample.shape[1]):
        values = sample[np.isfinite(sample[:, column]), column]
        median = float(np.median(values)) if len(values) else 0.0
        offsets[column] = median if abs(median) <= MAX_OFFSET else 0.0
    return offsets


def centred_float32(values: np.ndarray, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``values[rows] - offsets`` computed in float64, stored as float32, a few columns at a time."""
    result = np.empty((len(rows), values.shape[1]), dtype=np.float32)
    step = max(1, values.shape[1] // 8)
    for start in range(0, values.shape[1], step):
        block = np.asarray(values[rows, start:start + step], dtype=np.float64)
        result[:, start:start + step] = block - offsets[start:start + step]
    return result


def lost_columns(sample: np.ndarray, stored: np.ndarray) -> list[tuple[int, int, int]]:
    """(column, distinct values in the source's rows, distinct values float32 keeps) for each column
    of ``sample`` (float64 rows as the source holds them) whose ``stored`` float32 values merge at
    least half of its distinct values. A column of NaN (one-hot encoded) is not judged."""
    lost = []
    for column in range(sample.shape[1]):
        finite = np.isfinite(sample[:, column])
        values = sample[finite, column]
        if len(values) < 2 or values.min() == values.max():
            continue
        with np.errstate(all="ignore"):
            grid = np.floor((values - values.min()) / ((values.max() - values.min()) * RESOLUTION))
        distinct = len(np.unique(grid))
        kept = len(np.unique(stored[finite, column]))
        if 2 * kept <= distinct:
            lost.append((column, distinct, kept))
    return lost


def warn_lost_precision(where: str, names: list[str], sample: np.ndarray | None, stored: np.ndarray,
                        standardize: bool) -> None:
    """One warning line per column float32 blurs (``where`` names the file or source)."""
    if sample is None or not len(sample):
        return
    remedy = ("set data.standardize=true (each column is then centred in float64 before the float32 "
              "cast)") if not standardize else "its values span too many orders of magnitude for " \
        "float32; rescale the column (e.g. its logarithm)"
    for column, distinct, kept in lost_columns(sample, stored):
        log.warning("%s: column '%s': its first %d rows hold %d distinct values, float32 keeps %d (its "
                    "spread is below float32's resolution at its magnitude); %s", where, names[column],
                    len(sample), distinct, kept, remedy)

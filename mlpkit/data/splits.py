"""Stratified, seeded train/val/test indices, and standardisation fitted on the training split
(a value it would carry beyond float32 is reported by file line and column)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mlpkit.cache import disk_cached
from mlpkit.data.precision import FLOAT32_MAX, SAMPLE_ROWS, centred_float32, offsets_of, warn_lost_precision
from mlpkit.data.raw import RawData
from mlpkit.errors import ConfigError, DataError


@disk_cached
def train_test_split(rows: np.ndarray, test_size: int, random_state: int,
                     stratify: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``train_test_split`` of ``rows`` (imported only when the cache misses)."""
    from sklearn import model_selection

    return tuple(model_selection.train_test_split(rows, test_size=test_size, random_state=random_state,
                                                  stratify=stratify))


def hold_out(rows: np.ndarray, count: int, seed: int, stratify: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(the rest, ``count`` held-out rows): a seeded, stratified draw; none for a count of 0 (a
    fraction of 0: the run has no such split)."""
    if count == 0:
        return np.asarray(rows), np.asarray(rows)[:0]
    return train_test_split(rows, test_size=count, random_state=seed, stratify=stratify)


def split_rows(raw: RawData, cfg: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (train, val, test) rows a data config asks for: carved by its fractions (around the splits
    the source gave), or, with ``cv_folds`` k and ``cv_fold`` i, fold i of k stratified folds of the
    rows the test split leaves as val and the other folds as train."""
    classify, seed = raw.task != "regression", cfg.get("split_seed", 0)
    folds, fold = int(cfg.get("cv_folds") or 0), cfg.get("cv_fold")
    if folds and fold is not None:
        given_test = raw.splits[2] if raw.splits is not None else None
        return fold_indices(raw.targets, classify, cfg["test_fraction"], folds, int(fold), seed, given_test)
    if raw.splits is not None:  # a test file or an official test set: only val may be carved
        return carve_splits(raw.targets, classify, raw.splits, cfg["val_fraction"], cfg["test_fraction"], seed)
    return split_indices(raw.targets, classify, cfg["val_fraction"], cfg["test_fraction"], seed)


def fold_indices(targets: np.ndarray, classify: bool, test_fraction: float, folds: int, fold: int, seed: int,
                 given_test: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold ``fold`` of ``folds`` (seeded, shuffled; stratified by class for classification) of the rows
    outside the test split (``given_test``, else carved by ``test_fraction``): (train, val, test)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if given_test is not None:
        test = np.asarray(given_test)
        rest = np.setdiff1d(np.arange(len(targets)), test)
    else:
        rest, test = split_indices(targets, classify, 0.0, test_fraction, seed)[::2]
    smallest = int(np.bincount(targets[rest]).min()) if classify else len(rest)
    if folds > smallest:
        what = f"the smallest class has {smallest} training rows" if classify else f"{len(rest)} training rows"
        raise ConfigError("data.cv_folds", folds, f"at most {smallest} folds: {what}, and each fold needs "
                          "one of every class" if classify else f"at most {smallest} folds: {what}")
    splitter = (StratifiedKFold if classify else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(rest, targets[rest] if classify else None))[fold]
    return rest[train], rest[val], test


def split_indices(targets: np.ndarray, classify: bool, val_fraction: float, test_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/val/test indices, stratified by class for classification."""
    indices = np.arange(len(targets))
    stratify = targets if classify else None
    try:
        # Counts rounded up like sklearn's, with a tolerance: 0.15 * 400 is 60.000000000000014.
        test_count, val_count = (math.ceil(fraction * len(targets) - 1e-9)
                                 for fraction in (test_fraction, val_fraction))
        rest, test = hold_out(indices, test_count, seed, stratify)
        train, val = hold_out(rest, val_count, seed, targets[rest] if classify else None)
    except ValueError as error:  # too few samples (per class) for the requested fractions
        counts = f"{len(targets)} samples" + (
            f" in {len(np.unique(targets))} classes (smallest {np.bincount(targets).min()})"
            if classify else "")
        raise ConfigError("data.val_fraction/test_fraction", f"{val_fraction}/{test_fraction}",
                          "fractions that leave every split at least one sample"
                          + (" of each class" if classify else ""),
                          f"{counts} cannot be split that way: {error}") from None
    return train, val, test


def carve_splits(targets: np.ndarray, classify: bool,
                 given: tuple[np.ndarray, np.ndarray | None, np.ndarray | None], val_fraction: float,
                 test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (train, val, test) rows a source gave; a missing test, then a missing val, is carved from
    train by its fraction (stratified, seeded). Statistics are then fitted on train alone."""
    train, val, test = given
    carved = {}
    for key, part, fraction in (("test", test, test_fraction), ("val", val, val_fraction)):
        if part is not None:
            carved[key] = part
            continue
        try:
            train, carved[key] = hold_out(train, math.ceil(fraction * len(train) - 1e-9), seed,
                                          targets[train] if classify else None)
        except ValueError as error:
            raise ConfigError(f"data.{key}_fraction", fraction, "a fraction that leaves every split at "
                              "least one sample" + (" of each class" if classify else ""),
                              f"{len(train)} training samples cannot be split that way: {error}") from None
    return np.asarray(train), np.asarray(carved["val"]), np.asarray(carved["test"])


def standardization(values: np.ndarray, groups: np.ndarray | None = None,
                    offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column (or shared by each group of columns), float64; a constant gets std 1,
    and a column whose float32 variance overflows gets std inf (build_data names it).

    ``offsets`` (F,) were subtracted from the columns before their float32 cast; the mean returned is
    of the values as the source holds them. ``groups`` gives each column a group id: the columns of
    a group share one mean and std, as the pixels of an image channel do (a per-pixel std would blow
    up pixels that are almost always 0).
    """
    # torch reduces in one multi-threaded pass without a temporary copy of the data (numpy's
    # std would allocate one: 1.2 GB for CIFAR-10's training split).
    var, mean = (t.double().numpy() for t in torch.var_mean(torch.from_numpy(values), dim=0,
                                                                 correction=0))
    if offsets is not None:
        mean = mean + offsets
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow stays inf or NaN, reported by build_data
        return _per_group(mean, var, groups)


def _per_group(mean: np.ndarray, var: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Means and stds (float64), shared within each group of columns when ``groups`` is given."""
    if groups is not None:
        # Every column has as many rows, so a group's mean is the mean of its column means and
        # its variance the mean of the column variances plus the spread of the column means.
        for group in np.unique(groups):
            columns = groups == group
            group_mean = mean[columns].mean()
            var[columns] = (var[columns] + (mean[columns] - group_mean) ** 2).mean()
            mean[columns] = group_mean
    std = np.sqrt(var)
    # A constant column gets std 1; an overflowed one keeps its inf or NaN for the caller to report.
    return mean, np.where(std == 0, 1.0, std)


def prepare_features(raw: RawData, splits: list[np.ndarray], standardize: bool, source: str = ""
                     ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The rows of each split as float32, standardised in place with the training split's
    statistics; the mean (float64) and std returned are of the values as the source holds them.

    Every column reaches float32 centred in float64 (mlpkit.data.precision): a table's reader did it
    (``raw.feature_offsets``), and a float64 array is centred here on its training rows. A float32
    table whose rows all go to some split (a table file's) is reordered in place, split after split,
    and the splits are views of it: a large table is held once, not twice."""
    parts, offsets, sample, original_rows = split_features(raw, splits, standardize)
    if original_rows is not None:  # reordered: the splits are now consecutive rows of raw.features
        bounds = np.cumsum([0, *(len(rows) for rows in splits)])
        splits = [np.arange(start, stop) for start, stop in zip(bounds, bounds[1:])]
    width = raw.features.shape[1]
    if not standardize:
        for part in parts:  # the values as the source holds them, added back in float64
            for column in np.flatnonzero(offsets):
                part[:, column] = np.add(part[:, column], offsets[column], dtype=np.float64)
        stored = None if sample is None else sample.astype(np.float32)
        warn_lost_precision(where_of(raw, source), raw.feature_names, sample, stored, standardize)
        return parts, np.zeros(width, np.float32), np.ones(width, np.float32)
    mean, std = standardization(parts[0], raw.feature_groups, offsets)
    centred_mean = (mean - offsets).astype(np.float32)
    # before the values change in place: a message names the value as the file holds it
    check_standardized(raw, source, raw.features, raw.feature_names, splits, parts, centred_mean, std,
                       original_rows, offsets if raw.features.dtype == np.float32 else None)
    with np.errstate(over="ignore", invalid="ignore"):
        for part in parts:
            part -= centred_mean
            part /= std.astype(np.float32)
        if sample is not None:
            stored = ((sample - offsets).astype(np.float32) - centred_mean) / std.astype(np.float32)
            warn_lost_precision(where_of(raw, source), raw.feature_names, sample, stored, standardize)
    return parts, mean, std


def split_features(raw: RawData, splits: list[np.ndarray], standardize: bool
                   ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(float32 rows of each split, the offsets subtracted from them, float64 sample rows for the
    precision check, the source's row of each reordered row or None)."""
    features, width = raw.features, raw.features.shape[1]
    if features.dtype != np.float32:  # float64 (or integers): centre on the training rows, then cast
        sample = np.asarray(features[splits[0][:SAMPLE_ROWS]], dtype=np.float64)
        offsets = offsets_of(sample) if standardize else np.zeros(width)
        return [centred_float32(features, rows, offsets) for rows in splits], offsets, sample, None
    offsets = np.zeros(width) if raw.feature_offsets is None else np.asarray(raw.feature_offsets, np.float64)
    if not reorderable(features, splits):
        return [np.asarray(features[rows], dtype=np.float32) for rows in splits], offsets, raw.feature_sample, None
    original_rows = np.concatenate(splits)
    reorder_rows(features, original_rows)
    bounds = np.cumsum([0, *(len(rows) for rows in splits)])
    return ([features[start:stop] for start, stop in zip(bounds, bounds[1:])], offsets,
            raw.feature_sample, original_rows)


def where_of(raw: RawData, source: str) -> str:
    """The file or source a message names: ``data.path=...`` for a table, else ``data.source=...``."""
    return f"data.path={raw.extra['path']}" if "path" in raw.extra else f"data.source={source}"


def reorderable(values: np.ndarray, splits: list[np.ndarray]) -> bool:
    """A float32 row-major table whose every row belongs to exactly one split."""
    return (isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype == np.float32
            and values.flags.c_contiguous and values.flags.writeable
            and sum(len(rows) for rows in splits) == len(values))


def reorder_rows(values: np.ndarray, order: np.ndarray) -> None:
    """``values[:] = values[order]`` a few columns at a time: the temporary is an eighth of the table."""
    columns = max(1, values.shape[1] // 8)
    for start in range(0, values.shape[1], columns):
        values[:, start:start + columns] = values[order, start:start + columns]


def prepare_targets(raw: RawData, splits: list[np.ndarray], standardize: bool, source: str = ""
                    ) -> tuple[np.ndarray, float, float]:
    """Class indices as they are; regression targets as (N, T) float32, standardised on train in
    float64 (a target of 1e8 + noise keeps its noise)."""
    if raw.task != "regression":
        return raw.targets.astype(np.int64), 0.0, 1.0
    targets = raw.targets.astype(np.float64).reshape(len(raw.targets), -1)
    if not standardize:
        return targets.astype(np.float32), 0.0, 1.0
    mean, std = standardization(targets[splits[0]])
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below
        standardized = ((targets - mean) / std).astype(np.float32)
    names = [str(raw.extra.get("target", "target"))] * targets.shape[1]
    check_standardized(raw, source, targets, names, splits, [targets[rows] for rows in splits],
                       mean, std)
    return standardized, float(mean[0]), float(std[0])


def check_standardized(raw: RawData, source: str, values: np.ndarray, names: list[str],
                       splits: list[np.ndarray], parts: list[np.ndarray], mean: np.ndarray,
                       std: np.ndarray, original_rows: np.ndarray | None = None,
                       offsets: np.ndarray | None = None) -> None:
    """A DataError naming the line and column of a value that float32 standardisation cannot hold:
    one that makes the training split's variance overflow (1e25 among small numbers), or one the
    training mean and std would carry beyond float32 in another split. ``parts`` are not yet
    standardised; ``original_rows`` maps a row of ``values`` to the source's row when it was reordered,
    and ``offsets`` were subtracted from ``values`` (a table's columns, centred as they were read)."""
    row, column, consequence = _overflowing_value(values, splits, parts, mean, std)
    if row is None:
        return
    value = float(values[row, column]) + (0.0 if offsets is None else float(offsets[column]))
    if original_rows is not None:
        row = int(original_rows[row])
    if raw.locate is not None:
        key, file, where = raw.locate(row)
        raise DataError(key, file, f"{where}, column '{names[column]}': {value:g} "
                        f"{consequence}; rescale the column, e.g. to other units")
    where = f"line {raw.lines[row]}, " if raw.lines is not None else f"row {row}, "
    problem = (f"{where}column '{names[column]}': {value:g} {consequence}; "
               "rescale the column, e.g. to other units")
    if "path" in raw.extra:
        raise DataError("data.path", raw.extra["path"], problem)
    raise DataError("data.source", source, problem)


def _overflowing_value(values: np.ndarray, splits: list[np.ndarray], parts: list[np.ndarray],
                       mean: np.ndarray, std: np.ndarray) -> tuple[int | None, int, str]:
    """(row, column) in ``values`` of the value to blame for a non-finite statistic or a result float32
    cannot hold, and what it did."""
    overflowed = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
    if overflowed.size:  # the largest training value in the column drives its variance
        column, train = int(overflowed[0]), splits[0]
        return (int(train[np.abs(values[train, column]).argmax()]), column,
                "makes the column's variance overflow float32 (its standard deviation is not finite)")
    for rows, part in ((rows, part) for rows, part in zip(splits, parts) if len(part)):  # a fraction of 0: none
        # min and max (no temporary the size of the split) standardised as the split will be
        with np.errstate(over="ignore", invalid="ignore"):
            low = (part.min(axis=0) - mean) / std
            high = (part.max(axis=0) - mean) / std
        broken = np.flatnonzero(beyond_float32(low) | beyond_float32(high))
        if broken.size:
            column = int(broken[0])
            with np.errstate(over="ignore", invalid="ignore"):
                standardized = (part[:, column] - mean[column]) / std[column]
            return (int(rows[np.flatnonzero(beyond_float32(standardized))[0]]), column,
                    "standardised with the training split's mean and std is beyond float32")
    return None, 0, ""


def beyond_float32(values: np.ndarray) -> np.ndarray:
    """Where values (float32 or float64) are not finite or beyond float32's range."""
    return ~(np.abs(values) <= FLOAT32_MAX)

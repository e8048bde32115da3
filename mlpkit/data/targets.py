"""The target column -> the task, class indices (or float64 values) and the class names.

Text or integer labels become sorted class indices; a class only a validation or test file holds,
a single class, or a non-numeric regression target is one line naming its cell.
"""
from __future__ import annotations

import logging

import numpy as np

from mlpkit.data.columns import (
    NUMBER,
    Rows,
    check_nulls,
    first,
    label,
    numeric,
    target_problem,
    text,
)
from mlpkit.data.precision import FLOAT32_MAX
from mlpkit.errors import DataError

log = logging.getLogger(__name__)
MAX_AUTO_CLASSES = 20  # task=auto reads an integer target with at most this many values as classes


def encode_target(rows: Rows, name: str, task: str, file_label: str) -> tuple[str, np.ndarray, list[str]]:
    """The task, the targets (class indices or float64 values) and the class names; a class that only
    a validation or test file holds is refused by its cell."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = [table.column(name) for table in rows.tables]
    check_nulls(rows, name, columns, target_problem)
    numbers = [numeric(column) for column in columns]
    if all(number is not None for number in numbers):
        values = np.concatenate([number.to_numpy() for number in numbers]).astype(np.float64)
        if not (np.isfinite(values) & (np.abs(values) <= FLOAT32_MAX)).all():
            bad = int(np.flatnonzero(~(np.isfinite(values) & (np.abs(values) <= FLOAT32_MAX)))[0])
            raise rows.problem(bad, name, target_problem)
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
        return task, values, []
    if values is not None:
        distinct, labels = np.unique(values, return_inverse=True)
        class_names = [label(float(value)) for value in distinct]
    else:
        strings = pa.chunked_array([chunk for column in columns for chunk in text(column).chunks], pa.string())
        class_names = sorted(pc.unique(strings).to_pylist())
        labels = pc.index_in(strings, value_set=pa.array(class_names, pa.string())).to_numpy()
    labels = np.asarray(labels, dtype=np.int64)
    check_classes_trained(rows, name, labels, class_names)
    shown = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
    if len(class_names) < 2:
        raise DataError("data.target", name, f"column '{name}' of {file_label} holds a single class "
                        f"({shown}) in all {len(rows)} rows; classification needs at least 2")
    if task == "binary" and len(class_names) != 2:
        raise DataError("data.task", task, f"column '{name}' holds {len(class_names)} classes ({shown}); "
                        "use data.task=multiclass or auto")
    if task == "classification":
        task = "binary" if len(class_names) == 2 else "multiclass"
    return task, labels, class_names


def check_classes_trained(rows: Rows, name: str, labels: np.ndarray, class_names: list[str]) -> None:
    """A DataError naming the first cell of data.val_path or data.test_path whose class the training
    file (data.path) does not hold: the model could never predict it."""
    trained = np.zeros(len(class_names), dtype=bool)
    trained[labels[:rows.offsets[1]]] = True
    unseen = np.flatnonzero(~trained[labels[rows.offsets[1]:]])
    if unseen.size:
        held = [class_names[index] for index in np.flatnonzero(trained)]
        shown = ", ".join(held[:10]) + (", ..." if len(held) > 10 else "")
        raise rows.problem(int(rows.offsets[1] + unseen[0]), name, lambda cell: (
            f"class {cell.strip()!r} is not one the training file {rows.files[0].file} holds ({shown}); "
            "a model never trained on a class cannot predict it: add its rows to data.path or remove them here"))


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

"""``Run``: a run directory seen from Python (what mlpkit.train and mlpkit.load_run return).

It reads what the run wrote (metrics.json, .hydra/config.yaml, preprocessing.json, checkpoints/)
through mlpkit.runs, as the evaluate and predict commands do; nothing is judged again: the gradient
verdicts are the run's own, from metrics.json.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpkit.errors import ConfigError, DataError
from mlpkit.runs import (
    TrainedRun,
    check_same_data,
    find_checkpoint,
    load_trained,
    logits_of,
    read_json,
    read_preprocessing,
    run_config,
)

SPLITS = ("train", "val", "test")
INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")  # as the data sources write a whole-number label: no "007", "+1"


def require_pandas(what: str) -> Any:
    try:
        import pandas  # only the DataFrame views need it
    except ImportError:
        raise ImportError(f"{what} needs pandas: pip install pandas (or pip install 'mlpkit[notebook]')") from None
    return pandas


class Run:
    """A run directory: its config, metrics, gradient health, trained model and predictions."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self._loaded: dict[tuple[str, float], TrainedRun] = {}  # (checkpoint, mtime) -> model

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    # --- what the run wrote ---------------------------------------------------------------------
    @property
    def config(self) -> DictConfig:
        """The config the run was composed with (.hydra/config.yaml)."""
        return run_config(self.dir)

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: final metrics per split, best epoch, timings, history, gradient health."""
        path = self.dir / "metrics.json"
        if not path.is_file():
            raise ConfigError("run", self.dir, "a finished run directory (it holds metrics.json)",
                              f"{path} does not exist")
        return read_json(path, self.dir)

    @property
    def history(self) -> list[dict[str, float]]:
        """One row per epoch: epoch, step, loss/train_epoch and every validation metric."""
        return self.metrics.get("history") or []

    def history_frame(self) -> Any:
        """``history`` as a pandas DataFrame."""
        return require_pandas("Run.history_frame()").DataFrame(self.history)

    @property
    def gradient_health(self) -> dict[str, Any] | None:
        """The run's own gradient verdicts: ``judged``, ``healthy``, ``verdicts`` (kind -> message)."""
        return self.metrics.get("gradient_health")

    @property
    def preprocessing(self) -> dict[str, Any]:
        return read_preprocessing(self.dir)

    # --- the trained model ----------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The trained torch.nn.Module (the best checkpoint's weights, else the last's), on the CPU."""
        return self._trained().model

    def _trained(self, checkpoint: str = "auto") -> TrainedRun:
        from mlpkit.acceleration import resolve_device

        path = find_checkpoint(self.dir, checkpoint)
        key = (str(path), path.stat().st_mtime)  # a resumed run writes new weights: load them again
        if key not in self._loaded:
            prep = self.preprocessing
            self._loaded[key] = load_trained(
                self.dir, self.config, path, prep["task"], list(prep.get("class_names") or []),
                len(prep["feature_names"]), prep["target_mean"], prep["target_std"], resolve_device("cpu"))
        return self._loaded[key]

    def _logits(self, x: Any) -> tuple[TrainedRun, Any]:
        import torch

        trained = self._trained()
        return trained, logits_of(trained.model, torch.as_tensor(features(x, self.preprocessing)))

    @property
    def classes(self) -> np.ndarray:
        """A classifier's labels in the order of predict_proba's columns, in the type the training
        targets had (digits: the integers 0..9; a CSV column of 0.5, 1.5: floats; text: str)."""
        return label_array(self.preprocessing.get("class_names") or [])

    def predict(self, x: Any) -> np.ndarray:
        """Class labels (``classes``: integers for whole-number targets, as scikit-learn gives them)
        for a classifier, values in the target's units for a regression. ``x``: raw rows as a numpy
        array, a torch tensor or a scipy sparse matrix (n, features), or a pandas DataFrame holding
        the feature columns by name; the run's preprocessing.json standardises them. Input that
        cannot work is one DataError (a ValueError) naming ``x``, what was given and what is expected."""
        trained, logits = self._logits(x)
        objective = trained.objective
        if objective.is_classification:
            return self.classes[objective.predict_class(logits).numpy()]
        values = objective.predict(logits).numpy()
        return values[:, 0] if values.shape[1] == 1 else values

    def predict_proba(self, x: Any) -> np.ndarray:
        """A classifier's probability of each class (columns in the order of ``classes``)."""
        trained, logits = self._logits(x)
        objective = trained.objective
        if not objective.is_classification:
            raise TypeError(f"predict_proba is for classifiers; {self.dir} is a regression run: use predict")
        probabilities = objective.predict(logits).numpy()
        if objective.head == "sigmoid":  # one output: the probability of class_names[1]
            probabilities = np.concatenate([1 - probabilities, probabilities], axis=1)
        return probabilities

    def evaluate(self, split: str = "test", checkpoint: str = "auto", allow_changed_data: bool = False
                 ) -> dict[str, Any]:
        """The checkpoint's metrics on a split rebuilt from the run's config (seeded: the same rows),
        as evaluation.json holds them (with the confusion matrix for a classifier); writes nothing."""
        from mlpkit.acceleration import resolve_device
        from mlpkit.data import build_data
        from mlpkit.evaluation import confusion_matrix, per_class

        if split not in SPLITS:
            raise ConfigError("split", split, "train, val or test")
        trained = self._trained(checkpoint)
        data = build_data(OmegaConf.to_container(self.config.data, resolve=True), resolve_device("cpu"))
        check_same_data(self.dir, data.fingerprint(), "allow_changed_data", allow_changed_data,
                        "true to evaluate on data other than the run trained on", allow_changed_data)
        rows = getattr(data, split)
        x, y = rows.batch(slice(None), resolve_device("cpu"))
        objective, logits = trained.objective, logits_of(trained.model, x)
        report = {"run": str(self.dir), "checkpoint": str(trained.checkpoint), "epoch": trained.epoch,
                  "step": trained.step, "dataset": data.name, "task": data.task, "split": split,
                  "samples": len(rows), "metrics": {k: float(v) for k, v in objective.metrics(logits, y).items()}}
        if objective.is_classification:
            matrix = confusion_matrix(y.numpy(), objective.predict_class(logits).numpy(), data.n_classes)
            report |= {"class_names": list(data.class_names), "confusion_matrix": matrix.tolist(),
                       "per_class": per_class(matrix, data.class_names)}
        return report

    # --- in a notebook --------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        from mlpkit.verdicts import summary

        metrics = self.metrics
        rows = [("data", f"{metrics.get('dataset', '?')} ({metrics.get('task', '?')})"),
                ("model", f"activation={metrics.get('activation', '?')}, hidden_sizes={metrics.get('hidden_sizes')}, "
                          f"{metrics.get('parameters', 0):,} parameters, head {metrics.get('head', '?')}, "
                          f"loss {metrics.get('loss', '?')}"),
                ("status", f"{metrics.get('status', '?')}: {metrics.get('epochs', len(self.history))} epochs, "
                           f"{metrics.get('steps', '?')} steps" + (f"; {metrics['error']}" if metrics.get("error") else ""))]
        rows += [(split, ", ".join(f"{name} {value:.4g}" for name, value in metrics[split].items()))
                 for split in SPLITS if metrics.get(split)]
        health = self.gradient_health
        if health:
            rows.append(("gradients", f"judged={health.get('judged')}, healthy={health.get('healthy')}: "
                                      + summary(health).removeprefix("gradients: ")))
            rows += [(f"  {kind}", verdict["message"]) for kind, verdict in (health.get("verdicts") or {}).items()]
        rows += [("run directory", str(self.dir)), ("view it", f"tensorboard --logdir {self.dir}")]
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
                        f"<td style='text-align:left'><code>{html.escape(value)}</code></td></tr>"
                        if name in ("run directory", "view it") else
                        f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
                        f"<td style='text-align:left'>{html.escape(value)}</td></tr>" for name, value in rows)
        return f"<table>{cells}</table>"


def label_array(class_names: list[str]) -> np.ndarray:
    """Class names (labels.json and preprocessing.json hold them as JSON strings) as the labels the
    targets were: all whole numbers -> int64, all numbers -> float64, else the text. Only the forms
    the data sources write count as numbers ("3", "-1", "0.5"; not "007", "nan", " 1")."""
    def is_float(name: str) -> bool:
        try:
            return np.isfinite(float(name)) and repr(float(name)) == name
        except ValueError:
            return False

    names = [str(name) for name in class_names]
    if names and all(INTEGER.fullmatch(name) for name in names) and \
            all(-2**63 <= int(name) < 2**63 for name in names):
        return np.asarray([int(name) for name in names], dtype=np.int64)
    if names and all(INTEGER.fullmatch(name) or is_float(name) for name in names):
        return np.asarray([float(name) for name in names], dtype=np.float64)
    return np.asarray(names, dtype=str)


def features(x: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """Raw rows as the model's inputs: the feature columns (by name for a DataFrame), standardised."""
    names = list(preprocessing["feature_names"])
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):  # a pandas DataFrame: its columns by name
        given, values = f"a DataFrame of shape {x.shape}", frame_values(x, preprocessing)
    else:
        given, values = array_values(x, names)
    if not np.isfinite(values).all():
        row, column = np.argwhere(~np.isfinite(values))[0]
        raise DataError("x", given, f"row {row}, feature '{names[column]}' is {values[row, column]}; expected "
                        "finite numbers (fill in or drop the missing values)")
    return standardized(values, preprocessing, given, names)


def standardized(values: np.ndarray, preprocessing: dict[str, Any], given: str, names: list[str]) -> np.ndarray:
    """float64 rows standardised as training did, in float64, then cast to the model's float32: float32
    holds 1e8 in steps of 8, so ``1e8 + noise`` cast first would lose its noise."""
    from mlpkit.data.precision import FLOAT32_MAX  # mlpkit.data imports torch: only a prediction needs it

    mean = np.asarray(preprocessing["feature_mean"], dtype=np.float64)
    std = np.asarray(preprocessing["feature_std"], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        result = (values - mean) / std
    beyond = ~(np.abs(result) <= FLOAT32_MAX)
    if beyond.any():
        row, column = np.argwhere(beyond)[0]
        raise DataError("x", given, f"row {row}, feature '{names[column]}' is {values[row, column]:.6g}, which "
                        f"standardised with the run's mean {mean[column]:.6g} and std {std[column]:.6g} is beyond "
                        "float32's range; expected values of the scale the run trained on")
    return result.astype(np.float32)


def expected_rows(names: list[str]) -> str:
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return (f"expected rows of the run's {len(names)} features, shape (n, {len(names)}), or a DataFrame with "
            f"the columns {shown}")


def array_values(x: Any, names: list[str]) -> tuple[str, np.ndarray]:
    """An array-like's rows as float64 (n, features), and how to name it in a message."""
    if x is None or isinstance(x, (str, bytes)):
        raise DataError("x", repr(x)[:60], expected_rows(names))
    if hasattr(x, "detach"):  # a torch tensor, wherever it lives; numpy has no bfloat16
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()
    if hasattr(x, "toarray") and hasattr(x, "nnz"):  # a scipy sparse matrix
        x = x.toarray()
    try:
        array = np.asarray(x)
    except ValueError:  # numpy's message for rows of different lengths
        raise DataError("x", "rows of different lengths", expected_rows(names)) from None
    given = f"an array of shape {array.shape}"
    rows = array[None] if array.ndim == 1 else array  # one row
    if rows.ndim != 2 or rows.shape[1] != len(names):
        raise DataError("x", given, expected_rows(names))
    if rows.dtype.kind in "biuf":
        return given, rows.astype(np.float64)
    given += f" and dtype {array.dtype}"
    if rows.dtype.kind != "O":  # text, complex, dates: nothing the run can read as a feature
        raise DataError("x", given, f"expected numbers (bool, int or float), shape (n, {len(names)})")
    return given, numbers(rows, lambda row, column: f"row {row}, feature '{names[column]}'", given)


def numbers(cells: np.ndarray, where: Any, given: str) -> np.ndarray:
    """Object cells (n, columns) as float64; the first that is not a number is one DataError."""
    try:
        return cells.astype(np.float64)
    except (ValueError, TypeError):
        for (row, column), cell in np.ndenumerate(cells):
            try:
                float(cell)
            except (ValueError, TypeError):
                raise DataError("x", given, f"{where(row, column)} holds {cell!r}, not a number") from None
        raise


def frame_values(frame: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """A DataFrame's feature columns, by name, as float64 (n, features)."""
    names = list(preprocessing["feature_names"])
    columns = list(preprocessing.get("input_columns") or names)  # before one-hot encoding
    given = f"a DataFrame of shape {frame.shape}"
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise DataError("x", given, f"no column {', '.join(map(str, missing[:5]))}"
                        f"{' and more' if len(missing) > 5 else ''}; the run was trained on {len(columns)} "
                        f"feature columns: {', '.join(map(str, columns[:6]))}{', ...' if len(columns) > 6 else ''}")
    counts = {name: list(frame.columns).count(name) for name in columns}
    twice = next((name for name, count in counts.items() if count > 1), None)
    if twice is not None:
        raise DataError("x", given, f"column '{twice}' appears {counts[twice]} times; expected each feature "
                        "column once")
    if preprocessing.get("categories"):
        return one_hot_frame(frame, preprocessing, given)
    return np.stack([frame_column(frame, name, given) for name in names], axis=1)


def frame_column(frame: Any, name: str, given: str) -> np.ndarray:
    """One numeric column of a DataFrame as float64 (n,)."""
    cells = frame[name].to_numpy()
    if cells.dtype.kind in "biuf":
        return cells.astype(np.float64)
    if cells.dtype.kind != "O":
        raise DataError("x", given, f"column '{name}' has dtype {cells.dtype}; expected numbers (bool, int or float)")
    return numbers(cells[:, None], lambda row, _column: f"row {row}, column '{name}'", given)[:, 0]


def one_hot_frame(frame: Any, preprocessing: dict[str, Any], given: str) -> np.ndarray:
    """A DataFrame's input columns as the run's features: its categorical columns one-hot encoded
    with the training file's categories (preprocessing.json), in the training order."""
    categories = preprocessing["categories"]
    parts = []
    for name in preprocessing["input_columns"]:
        column = frame[name]
        if name not in categories:
            parts.append(frame_column(frame, name, given)[:, None])
            continue
        cells = column.astype(str).to_numpy()
        unknown = ~np.isin(cells, categories[name])
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise DataError("x", given, f"row {row}, column '{name}': category {cells[row]!r} was not in "
                            f"the training file (known: {', '.join(categories[name][:10])})")
        parts.append((cells[:, None] == np.asarray(categories[name])[None, :]).astype(np.float64))
    return np.concatenate(parts, axis=1)

"""``Run``: a run directory seen from Python (what mlpkit.train and mlpkit.load_run return).

It reads what the run wrote (metrics.json, .hydra/config.yaml, preprocessing.json, checkpoints/)
through mlpkit.runs, as the evaluate and predict commands do; nothing is judged again: the gradient
verdicts are the run's own, from metrics.json.
"""
from __future__ import annotations

import html
import json
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
    read_preprocessing,
    run_config,
)

SPLITS = ("train", "val", "test")


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
        return json.loads(path.read_text())

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

    def predict(self, x: Any) -> np.ndarray:
        """Class labels (the class names) for a classifier, values in the target's units for a
        regression. ``x``: raw rows as a numpy array or torch tensor (n, features), or a pandas
        DataFrame holding the feature columns by name; the run's preprocessing.json standardises them."""
        trained, logits = self._logits(x)
        objective = trained.objective
        if objective.is_classification:
            return np.asarray(self.preprocessing["class_names"])[objective.predict_class(logits).numpy()]
        values = objective.predict(logits).numpy()
        return values[:, 0] if values.shape[1] == 1 else values

    def predict_proba(self, x: Any) -> np.ndarray:
        """A classifier's probability of each class (columns in the order of the class names)."""
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


def features(x: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """Raw rows as the model's inputs: the feature columns (by name for a DataFrame), standardised."""
    names = list(preprocessing["feature_names"])
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):  # a pandas DataFrame: its columns by name
        columns = list(preprocessing.get("input_columns") or names)  # before one-hot encoding
        missing = [name for name in columns if name not in x.columns]
        if missing:
            raise DataError("x", "a DataFrame", f"no column {', '.join(map(str, missing[:5]))}"
                            f"{' and more' if len(missing) > 5 else ''}; the run was trained on {len(columns)} "
                            f"feature columns: {', '.join(map(str, columns[:6]))}{', ...' if len(columns) > 6 else ''}")
        values = x[names].to_numpy(dtype=np.float32) if not preprocessing.get("categories") else \
            one_hot_frame(x, preprocessing)
    else:
        if hasattr(x, "detach"):  # a torch tensor, wherever it lives
            x = x.detach().cpu().numpy()
        values = np.asarray(x, dtype=np.float32)
        if values.ndim == 1:
            values = values[None]
        if values.ndim != 2 or values.shape[1] != len(names):
            raise DataError("x", f"an array of shape {np.shape(x)}", f"expected rows of the run's {len(names)} "
                            f"features, shape (n, {len(names)}), or a DataFrame with the columns {shown}")
    if not np.isfinite(values).all():
        row, column = np.argwhere(~np.isfinite(values))[0]
        raise DataError("x", "rows", f"row {row}, feature '{names[column]}' is {values[row, column]}, not a finite number")
    mean = np.asarray(preprocessing["feature_mean"], dtype=np.float32)
    std = np.asarray(preprocessing["feature_std"], dtype=np.float32)
    return (values - mean) / std


def one_hot_frame(frame: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """A DataFrame's input columns as the run's features: its categorical columns one-hot encoded
    with the training file's categories (preprocessing.json), in the training order."""
    categories = preprocessing["categories"]
    parts = []
    for name in preprocessing["input_columns"]:
        column = frame[name]
        if name not in categories:
            parts.append(column.to_numpy(dtype=np.float32)[:, None])
            continue
        cells = column.astype(str).to_numpy()
        unknown = ~np.isin(cells, categories[name])
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise DataError("x", "a DataFrame", f"row {row}, column '{name}': category {cells[row]!r} was not in "
                            f"the training file (known: {', '.join(categories[name][:10])})")
        parts.append((cells[:, None] == np.asarray(categories[name])[None, :]).astype(np.float32))
    return np.concatenate(parts, axis=1)

"""``Run``: a finished run (what mlpkit.train and mlpkit.load_run return, and what the evaluate and
predict commands load): its config and metrics, its trained model and preprocessing, predict,
predict_proba and evaluate.

It reads what the run wrote through mlpkit.rundir; nothing is judged again: the gradient verdicts
are the run's own, from metrics.json. A user's rows become model inputs in mlpkit.model_inputs.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpkit.errors import ConfigError
from mlpkit.rundir import check_same_data, find_checkpoint, read_metrics, read_preprocessing, run_config
from mlpkit.trained_model import TrainedModel, class_probabilities, label_array, load_model, logits_of

SPLITS = ("train", "val", "test")


def require_pandas(what: str) -> Any:
    try:
        import pandas  # only the DataFrame views need it
    except ImportError:
        raise ImportError(f"{what} needs pandas: pip install pandas (or pip install 'mlpkit[notebook]')") from None
    return pandas


@dataclass
class Evaluation:
    """A checkpoint's metrics on a split (``report``, as evaluation.json holds it) and what they came from."""

    report: dict[str, Any]
    data: Any  # mlpkit.data.Data, rebuilt from the run's config
    trained: TrainedModel
    logits: Any
    targets: Any
    confusion_matrix: np.ndarray | None  # a classifier's; None for a regression


class Run:
    """A run directory: its config, metrics, gradient health, trained model and predictions."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self._loaded: dict[tuple[str, float, str], TrainedModel] = {}  # (checkpoint, mtime, device) -> model

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
        return read_metrics(self.dir)

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
        return self.trained().model

    def trained(self, checkpoint: str = "auto", device: str = "cpu") -> TrainedModel:
        """The model with a checkpoint's weights (auto: best.pt, else last.pt) on ``device``."""
        from mlpkit.acceleration import resolve_device

        path = find_checkpoint(self.dir, checkpoint)
        key = (str(path), path.stat().st_mtime, str(device))  # a resumed run writes new weights: load them again
        if key not in self._loaded:
            self._loaded[key] = load_model(self.config, path, self.preprocessing, resolve_device(str(device)))
        return self._loaded[key]

    def outputs(self, inputs: np.ndarray, checkpoint: str = "auto", device: str = "cpu") -> tuple[TrainedModel, Any]:
        """The model and its logits for standardised ``inputs`` (mlpkit.model_inputs)."""
        import torch

        trained = self.trained(checkpoint, device)
        parameter = next(trained.model.parameters())
        return trained, logits_of(trained.model, torch.as_tensor(inputs, device=parameter.device))

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
        from mlpkit.model_inputs import features

        trained, logits = self.outputs(features(x, self.preprocessing))
        objective = trained.objective
        if objective.is_classification:
            return self.classes[objective.predict_class(logits).numpy()]
        values = objective.predict(logits).numpy()
        return values[:, 0] if values.shape[1] == 1 else values

    def predict_proba(self, x: Any) -> np.ndarray:
        """A classifier's probability of each class (columns in the order of ``classes``)."""
        from mlpkit.model_inputs import features

        trained, logits = self.outputs(features(x, self.preprocessing))
        if not trained.objective.is_classification:
            raise TypeError(f"predict_proba is for classifiers; {self.dir} is a regression run: use predict")
        return class_probabilities(trained.objective, trained.objective.predict(logits).numpy())

    def export(self, format: str = "onnx", path: str | Path | None = None, checkpoint: str = "auto",
               overwrite: bool = False) -> Path:
        """The model as ONNX or TorchScript, its standardisation and head inside (mlpkit.export)."""
        from mlpkit.export import export  # torch's exporters: only an export needs them

        return export(self.dir, format, path, checkpoint, overwrite)

    def evaluate(self, split: str = "test", checkpoint: str = "auto", allow_changed_data: bool = False
                 ) -> dict[str, Any]:
        """The checkpoint's metrics on a split rebuilt from the run's config (seeded: the same rows),
        as evaluation.json holds them (with the confusion matrix for a classifier); writes nothing."""
        return self.evaluation(split, checkpoint, allow_changed_data).report

    def evaluation(self, split: str = "test", checkpoint: str = "auto", allow_changed_data: bool = False,
                   device: str = "cpu") -> Evaluation:
        """``evaluate``'s report with the data, model, logits and targets it came from (the evaluate
        command prints and draws them)."""
        import torch

        from mlpkit.acceleration import resolve_device
        from mlpkit.data import build_data
        from mlpkit.model import EVAL_CHUNK

        if split not in SPLITS:
            raise ConfigError("split", split, "train, val or test")
        find_checkpoint(self.dir, str(checkpoint))  # a run without one is refused before any work
        config = self.config
        torch_device = resolve_device(str(device))
        data = build_data(OmegaConf.to_container(config.data, resolve=True), torch_device)
        check_same_data(self.dir, data.fingerprint(), "allow_changed_data", allow_changed_data,
                        "true to evaluate on data other than the run trained on", allow_changed_data)
        trained = self.trained(str(checkpoint), str(device))
        rows = getattr(data, split)
        chunks = [(logits_of(trained.model, x), y) for x, y in rows.chunks(EVAL_CHUNK, torch_device)]
        objective = trained.objective
        logits, y = (torch.cat([chunk[part] for chunk in chunks]) for part in (0, 1))
        report = {"run": str(self.dir), "checkpoint": str(trained.checkpoint), "epoch": trained.epoch,
                  "step": trained.step, "dataset": data.name, "task": data.task, "split": split,
                  "samples": len(y), "metrics": {k: float(v) for k, v in objective.metrics(logits, y).items()}}
        matrix = None
        if objective.is_classification:
            matrix = confusion_matrix(y.cpu().numpy(), objective.predict_class(logits).cpu().numpy(), data.n_classes)
            report |= {"class_names": list(data.class_names), "confusion_matrix": matrix.tolist(),
                       "per_class": per_class(matrix, data.class_names)}
        return Evaluation(report, data, trained, logits, y, matrix)

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


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[i, j]: samples of true class i predicted as class j (every class, seen or not)."""
    from sklearn.metrics import confusion_matrix as count  # sklearn.metrics: only evaluate needs it

    return count(true, predicted, labels=np.arange(n_classes))


def per_class(matrix: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and support of each class (NaN where a class is never predicted)."""
    hits, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = hits / predicted, hits / support
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)}

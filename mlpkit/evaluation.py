"""A trained run, evaluated on its test split.

`python scripts/evaluate.py run=<run dir>` (also `mlpkit-evaluate`); configs/evaluate.yaml holds its
keys. The run is read through mlpkit.runs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpkit.config import CONFIG_DIR, exit_on_config_error, given, report_config_errors
from mlpkit.rundir import write_json
from mlpkit.runs import check_same_data, find_checkpoint, find_run, load_trained, logits_of, run_config


# --- evaluate -----------------------------------------------------------------------------------
def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[i, j]: samples of true class i predicted as class j (every class, seen or not)."""
    from sklearn.metrics import confusion_matrix as count  # sklearn.metrics: only evaluate needs it

    return count(true, predicted, labels=np.arange(n_classes))


def per_class(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and support of each class (NaN where a class is never predicted)."""
    hits, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = hits / predicted, hits / support
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)}


def format_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """A text table: one row per true class, one column per predicted class, recall at the right,
    precision at the bottom."""
    scores = per_class(matrix, class_names)
    corner = "true \\ predicted"
    labels = [str(name) for name in class_names]
    first = max(len(corner), len("precision"), *(len(label) for label in labels))
    width = max(5, *(len(label) for label in labels), len(str(matrix.max())))

    def score(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.2f}"

    lines = [f"{corner:<{first}}  " + " ".join(f"{label:>{width}}" for label in labels) + "  recall"]
    for label, row in zip(labels, matrix):
        lines.append(f"{label:<{first}}  " + " ".join(f"{count:>{width}}" for count in row)
                     + f"  {score(scores[label]['recall']):>6}")
    lines.append(f"{'precision':<{first}}  "
                 + " ".join(f"{score(scores[label]['precision']):>{width}}" for label in labels))
    return "\n".join(lines)


def evaluate_run(run: Any, checkpoint: str = "auto", device: str = "cpu", allow_changed_data: bool = False
                 ) -> dict[str, Any]:
    """Evaluate a run's checkpoint on its test split (rebuilt from the run's config: the split is
    seeded, so it is the same); print the report, write evaluation.json and a figure in the run dir."""
    run_dir = find_run(run)
    checkpoint_path = find_checkpoint(run_dir, str(checkpoint))
    cfg = run_config(run_dir)
    from mlpkit import figures
    from mlpkit.acceleration import resolve_device
    from mlpkit.data import build_data

    torch_device = resolve_device(str(device))
    data = build_data(OmegaConf.to_container(cfg.data, resolve=True), torch_device)
    check_same_data(run_dir, data.fingerprint(), "allow_changed_data", allow_changed_data,
                    "true to evaluate on data other than the run trained on", allow_changed_data)
    trained = load_trained(run_dir, cfg, checkpoint_path, data.task, data.class_names, data.in_features,
                           data.target_mean, data.target_std, torch_device)
    objective, split = trained.objective, data.test
    x, y = split.batch(slice(None), torch_device)
    logits = logits_of(trained.model, x)
    metrics = {name: float(value) for name, value in objective.metrics(logits, y).items()}
    report = {"run": str(run_dir), "checkpoint": str(checkpoint_path), "epoch": trained.epoch,
              "step": trained.step, "dataset": data.name, "task": data.task, "split": "test",
              "samples": len(split), "metrics": metrics}
    print(f"{data.name} test split, {len(split)} samples; checkpoint {checkpoint_path} "
          f"(epoch {trained.epoch}, step {trained.step})")
    print("test: " + ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()))
    headline = "accuracy" if objective.is_classification else "r2"
    title = (f"data={data.name}, test split, {checkpoint_path.name} (epoch {trained.epoch}): "
             f"{headline} {metrics[headline]:.3f}")
    if objective.is_classification:
        matrix = confusion_matrix(y.cpu().numpy(), objective.predict_class(logits).cpu().numpy(),
                                  data.n_classes)
        report |= {"class_names": list(data.class_names), "confusion_matrix": matrix.tolist(),
                   "per_class": per_class(matrix, data.class_names)}
        print("confusion matrix (rows: true class, columns: predicted class)")
        print(format_confusion_matrix(matrix, data.class_names))
        figure = figures.confusion_matrix_figure(matrix, data.class_names, title)
        figure_path = run_dir / "confusion_matrix.png"
    else:
        true = (y * objective.target_std + objective.target_mean).cpu().numpy()
        figure = figures.predicted_vs_true_figure(true, objective.predict(logits).cpu().numpy(), title,
                                                  data.extra.get("target") or "target")
        figure_path = run_dir / "predicted_vs_true.png"
    figures.save_png(figure, figure_path)
    report_path = run_dir / "evaluation.json"
    write_json(report_path, report)  # replaced in one step: a kill mid-write leaves the old report whole
    print(f"wrote {report_path} and {figure_path}")
    return report


# --- the command lines ----------------------------------------------------------------------------
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def _evaluate(cfg: DictConfig) -> None:
    exit_on_config_error(evaluate_run, given(cfg, "run"), cfg.checkpoint, cfg.device, cfg.allow_changed_data)


def evaluate_main() -> None:
    """`python scripts/evaluate.py run=<run dir>` and `mlpkit-evaluate run=<run dir>`."""
    report_config_errors(_evaluate, "evaluate")

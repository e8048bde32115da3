"""The evaluate command: a trained run's checkpoint on its test split, printed, with evaluation.json
and a figure written into the run directory.

`python scripts/evaluate.py run=<run dir>` (also `mlpkit-evaluate`); configs/evaluate.yaml holds its
keys. The evaluation itself is mlpkit.finished_run.Run's.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from mlpkit.config import CONFIG_DIR, exit_on_config_error, given, report_config_errors
from mlpkit.finished_run import Run, per_class
from mlpkit.rundir import (
    CONFUSION_MATRIX_FIGURE,
    EVALUATION_FILE,
    PREDICTED_VS_TRUE_FIGURE,
    find_run,
    write_json,
)


# --- evaluate -----------------------------------------------------------------------------------
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
    evaluation = Run(run_dir).evaluation("test", str(checkpoint), allow_changed_data, str(device))
    report, data, trained = evaluation.report, evaluation.data, evaluation.trained
    objective, metrics, checkpoint_path = trained.objective, report["metrics"], trained.checkpoint
    print(f"{data.name} test split, {report['samples']} samples; checkpoint {checkpoint_path} "
          f"(epoch {trained.epoch}, step {trained.step})")
    print("test: " + ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()))
    headline = "accuracy" if objective.is_classification else "r2"
    title = (f"data={data.name}, test split, {checkpoint_path.name} (epoch {trained.epoch}): "
             f"{headline} {metrics[headline]:.3f}")
    from mlpkit import figures

    if evaluation.confusion_matrix is not None:
        print("confusion matrix (rows: true class, columns: predicted class)")
        print(format_confusion_matrix(evaluation.confusion_matrix, data.class_names))
        figure = figures.confusion_matrix_figure(evaluation.confusion_matrix, data.class_names, title)
        figure_path = run_dir / CONFUSION_MATRIX_FIGURE
    else:
        true = (evaluation.targets * objective.target_std + objective.target_mean).cpu().numpy()
        figure = figures.predicted_vs_true_figure(true, objective.predict(evaluation.logits).cpu().numpy(), title,
                                                  data.extra.get("target") or "target")
        figure_path = run_dir / PREDICTED_VS_TRUE_FIGURE
    figures.save_png(figure, figure_path)
    report_path = run_dir / EVALUATION_FILE
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

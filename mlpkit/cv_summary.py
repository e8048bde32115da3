"""A cross-validation's summary (mlpkit.cross_validation trains the folds): per split and metric the
folds' mean and standard deviation (population std, ``np.std``), the verdict counts over folds, the
top-level metrics.json a sweep report reads as one job, the end line and the folds' curves figure."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mlpkit.rundir import CV_CURVES_FIGURE, read_metrics
from mlpkit.schema import objective_mode
from mlpkit.verdicts import KINDS

SPLITS = ("train", "val", "test", "test_best")  # the metric groups of metrics.json that are summarised
OUTCOMES = ("healthy", "not_judged")
STD_DDOF = 0


def summarise(fold_dirs: Sequence[Path], cfg: DictConfig) -> dict[str, Any]:
    """cv_summary.json: per split and metric the folds' mean and std; each fold's metrics and verdict;
    the verdict counts; the objective's mean and std."""
    fold_metrics = [read_metrics(fold_dir) for fold_dir in fold_dirs]
    mean, std = {}, {}
    for split in SPLITS:
        values = split_values(fold_metrics, split)
        if values:
            mean[split] = {name: mean_of(numbers) for name, numbers in values.items()}
            std[split] = {name: std_of(numbers) for name, numbers in values.items()}
    metric, folds = str(cfg.objective.metric), len(fold_dirs)
    verdicts = fold_verdicts(fold_metrics)
    counts = verdict_counts(verdicts)
    return {
        "folds": folds, "fold_dirs": [fold_dir.name for fold_dir in fold_dirs], "std_ddof": STD_DDOF,
        "objective": {"metric": metric, "mode": objective_mode(metric, cfg.objective.mode),
                      "mean": mean.get("val", {}).get(metric), "std": std.get("val", {}).get(metric)},
        "mean": mean, "std": std, "verdicts": counts, "verdicts_text": counts_text(counts, folds),
        "per_fold": [{"fold": fold, "dir": fold_dir.name, **{split: metrics[split] for split in SPLITS
                                                             if isinstance(metrics.get(split), dict)},
                      "gradients": ", ".join(verdicts[fold]), "epochs": metrics.get("epochs")}
                     for fold, (fold_dir, metrics) in enumerate(zip(fold_dirs, fold_metrics))],
    }


def split_values(fold_metrics: Sequence[dict[str, Any]], split: str) -> dict[str, list[float]]:
    """metric name -> its value in each fold that reports it (first fold's order)."""
    values: dict[str, list[float]] = {}
    for metrics in fold_metrics:
        for name, value in (metrics.get(split) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(name, []).append(float(value))
    return values


def mean_of(values: Sequence[float]) -> float:
    import numpy as np  # numpy's own mean and std: what a user checks the summary against

    return float(np.mean(values))


def std_of(values: Sequence[float]) -> float:
    import numpy as np

    return float(np.std(values, ddof=STD_DDOF))


def fold_verdicts(fold_metrics: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Each fold's own gradient verdicts (its kinds), or ``healthy``, or ``not_judged``."""
    verdicts = []
    for metrics in fold_metrics:
        health = metrics.get("gradient_health") or {}
        if not health.get("judged"):
            verdicts.append(["not_judged"])
        else:
            verdicts.append(list(health.get("verdicts") or {}) or ["healthy"])
    return verdicts


def verdict_counts(verdicts: Sequence[Sequence[str]]) -> dict[str, int]:
    """How many folds got each verdict; a fold with two kinds counts in both, so healthy + not_judged
    + the folds with a verdict is k."""
    counts = dict.fromkeys((*KINDS, *OUTCOMES), 0)
    for kinds in verdicts:
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def counts_text(counts: dict[str, int], folds: int) -> str:
    """``healthy 4/5, dead 1/5``: the verdicts some fold got."""
    return ", ".join(f"{kind.replace('_', ' ')} {count}/{folds}" for kind, count in counts.items() if count)


def run_metrics(summary: dict[str, Any], run_dir: Path, wall_seconds: float) -> dict[str, Any]:
    """The run directory's metrics.json: the folds' mean where a run has its metrics (what the sweep
    report and sweepers read), the std and verdict counts under ``cv``."""
    fold_metrics = [read_metrics(run_dir / name) for name in summary["fold_dirs"]]
    first = fold_metrics[0]
    described = {key: first[key] for key in ("dataset", "task", "head", "loss", "activation", "hidden_sizes",
                                             "parameters", "device") if key in first}
    return {
        "status": "completed", **described, **summary["mean"],
        "epochs": max(int(metrics.get("epochs") or 0) for metrics in fold_metrics),
        "steps": sum(int(metrics.get("steps") or 0) for metrics in fold_metrics),
        "history": mean_history(fold_metrics), "gradient_health": pooled_health(fold_metrics, summary),
        "wall_seconds": wall_seconds,
        "cv": {"folds": summary["folds"], "std": summary["std"], "std_ddof": STD_DDOF,
               "verdicts": summary["verdicts"], "verdicts_text": summary["verdicts_text"],
               "fold_dirs": summary["fold_dirs"]},
    }


def mean_history(fold_metrics: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Per epoch, each logged value's mean over the folds that trained that epoch (``folds``: how many;
    fewer than k after a fold stopped early): the sweep report draws the validation curve from it."""
    by_epoch: dict[int, list[dict[str, Any]]] = {}
    for metrics in fold_metrics:
        for entry in metrics.get("history") or []:
            by_epoch.setdefault(int(entry["epoch"]), []).append(entry)
    history = []
    for epoch, entries in sorted(by_epoch.items()):
        names = {name for entry in entries for name, value in entry.items()
                 if name != "epoch" and isinstance(value, (int, float))}
        row: dict[str, float] = {"epoch": epoch, "folds": len(entries)}
        for name in sorted(names):
            row[name] = mean_of([float(entry[name]) for entry in entries if name in entry])
        history.append(row)
    return history


def pooled_health(fold_metrics: Sequence[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """``gradient_health`` over the folds, in a run's shape: each kind some fold got, with how many."""
    healths = [metrics.get("gradient_health") or {} for metrics in fold_metrics]
    judged = [health for health in healths if health.get("judged")]
    verdicts = {}
    for kind, count in summary["verdicts"].items():
        if kind in OUTCOMES or not count:
            continue
        folds = [name for name, health in zip(summary["fold_dirs"], healths) if kind in (health.get("verdicts") or {})]
        message = healths[summary["fold_dirs"].index(folds[0])]["verdicts"][kind]["message"]
        verdicts[kind] = {"folds": folds, "message": f"in {count}/{summary['folds']} folds ({', '.join(folds)}); "
                                                     f"{folds[0]}: {message}"}
    health: dict[str, Any] = {
        "judged": bool(judged), "healthy": (not verdicts) if judged else None, "verdicts": verdicts,
        "measurements": sum(int(health.get("measurements") or 0) for health in healths),
        "every_n_steps": (judged or healths)[0].get("every_n_steps"), "folds": summary["verdicts"],
    }
    if not judged:
        health["reason"] = healths[0].get("reason", "no fold measured enough steps")
    return health


# --- what the user reads -----------------------------------------------------------------------------
def summary_line(summary: dict[str, Any]) -> str:
    """``cross-validation, 5 folds: val loss 0.123 ± 0.010, accuracy 0.95 ± 0.01; test ...; gradients: healthy 5/5``"""
    parts = []
    for split in ("val", "test"):
        if split in summary["mean"]:
            parts.append(f"{split} " + ", ".join(f"{name} {mean_std(value, summary['std'][split][name])}"
                                                 for name, value in summary["mean"][split].items()))
    parts.append(f"gradients: {summary['verdicts_text']}")
    return f"cross-validation, {summary['folds']} folds: " + "; ".join(parts)


def mean_std(mean: float, std: float) -> str:
    """``0.123 ± 0.010``: the mean to the std's second significant digit."""
    if not (math.isfinite(mean) and math.isfinite(std)) or std == 0:
        return f"{mean:.4g} ± {std:.2g}"
    decimals = min(8, max(0, 1 - math.floor(math.log10(std))))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def draw_curves(run_dir: Path, summary: dict[str, Any]) -> Path | None:
    """cv_val_curves.png: each fold's validation objective per epoch, and their mean."""
    from mlpkit import figures

    tag = f"{summary['objective']['metric']}/val"
    curves = {}
    for name in summary["fold_dirs"]:
        points = [(int(entry["epoch"]), float(entry[tag])) for entry in read_metrics(run_dir / name).get("history") or []
                  if entry.get(tag) is not None]
        if points:
            curves[name] = points
    if not curves:
        return None
    path = run_dir / CV_CURVES_FIGURE
    figures.save_figure(figures.cv_curves_figure(curves, summary["objective"]["metric"]), path)
    return path

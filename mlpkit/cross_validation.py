"""Cross-validation: ``data.cv_folds=k`` trains k ordinary runs, fold i in ``<run>/fold_<i>``, then
summarises them in the run directory: the mean and standard deviation of every metric, the folds'
gradient verdicts counted, and a figure of their validation curves.

Each fold is a run directory of its own (its TensorBoard events, checkpoints, metrics.json and
``.hydra/config.yaml`` with its ``data.cv_fold``): ``load_run``, ``evaluate``, ``predict`` and
``resume=<run>/fold_<i>`` work on it alone. A fold has no ``.hydra/overrides.yaml``, so a sweep's
report counts the cross-validation once, as its job directory. The run directory's metrics.json holds
the mean over the folds, so the sweep report shows a cross-validation as an ordinary row and a sweeper
gets the folds' mean validation objective.

Standard deviations are the population's (numpy's ``np.std``, ddof=0), as scikit-learn's
``cross_validate`` users report them.
"""
from __future__ import annotations

import copy
import html
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mlpkit.errors import EXIT_SIGNAL, ConfigError, TrainingStopped
from mlpkit.rundir import (
    CONFIG_FILE,
    CV_CURVES_FIGURE,
    CV_SUMMARY_FILE,
    HYDRA_DIR,
    HYDRA_FILE,
    METRICS_FILE,
    check_new_run_dir,
    note_whether_held,
    read_json,
    read_metrics,
    write_json,
)
from mlpkit.schema import objective_mode
from mlpkit.verdicts import KINDS

log = logging.getLogger("mlpkit")

SUMMARY_FILE, CURVES_FIGURE = CV_SUMMARY_FILE, CV_CURVES_FIGURE
FOLD_LOG = "train.log"                   # a fold's own lines (the run's train.log has every fold's)
SPLITS = ("train", "val", "test", "test_best")  # the metric groups of metrics.json that are summarised
OUTCOMES = ("healthy", "not_judged")
STD_DDOF = 0

FoldTrainer = Callable[[DictConfig, Path], float]


class FoldStopped(TrainingStopped):
    """A fold stopped (a non-finite loss, a signal), and the cross-validation with it; the message
    names the fold and, for a signal, how to resume that fold (the run directory itself does not resume)."""


def fold_dir_name(fold: int) -> str:
    return f"fold_{fold}"


# --- training the folds ----------------------------------------------------------------------------
def run_folds(cfg: DictConfig, run_dir: Path, train_fold: FoldTrainer) -> float:
    """Train fold 0..k-1 of ``cfg`` (``data.cv_folds`` k) with ``train_fold(fold_cfg, fold_dir)``, each
    in ``run_dir/fold_<i>``; write the summary; return the folds' mean validation objective."""
    started = time.perf_counter()
    run_dir, folds = Path(run_dir), int(cfg.data.cv_folds)
    log.info("cross-validation: %d folds of the rows outside the test split, each a run in %s/fold_<i>",
             folds, run_dir)
    objectives = []
    for fold in range(folds):
        fold_dir = run_dir / fold_dir_name(fold)
        log.info("fold %d/%d: %s", fold + 1, folds, fold_dir)
        objectives.append(train_one_fold(copy_for_fold(cfg, fold), fold_dir, train_fold, fold, folds))
    summary = summarise([run_dir / fold_dir_name(fold) for fold in range(folds)], cfg)
    write_json(run_dir / SUMMARY_FILE, summary)
    write_json(run_dir / METRICS_FILE, run_metrics(summary, run_dir, time.perf_counter() - started))
    draw_curves(run_dir, summary)
    log.info(summary_line(summary))
    log.info("folds: %s; summary: %s", ", ".join(summary["fold_dirs"]), run_dir / SUMMARY_FILE)
    log.info("view them: tensorboard --logdir %s", run_dir)
    return float(sum(objectives) / len(objectives))


def copy_for_fold(cfg: DictConfig, fold: int) -> DictConfig:
    fold_cfg = copy.deepcopy(cfg)
    with open_dict(fold_cfg.data):
        fold_cfg.data.cv_fold = fold
    return fold_cfg


def train_one_fold(fold_cfg: DictConfig, fold_dir: Path, train_fold: FoldTrainer, fold: int, folds: int) -> float:
    """One fold as a run of its own. A refused fold (ConfigError: comes before the run writes) leaves
    no directory; a fold that stops (a non-finite loss, a signal) stops the cross-validation, its
    directory and those of the folds before it kept."""
    start_fold_dir(fold_dir, fold_cfg)
    try:
        with fold_log(fold_dir):
            return train_fold(fold_cfg, fold_dir)
    except ConfigError:
        remove_fold_dir(fold_dir)
        raise
    except TrainingStopped as stop:
        raise stopped_in_fold(stop, fold_dir, fold, folds) from stop


def start_fold_dir(fold_dir: Path, fold_cfg: DictConfig) -> None:
    """``fold_dir/.hydra``: the fold's config, as Hydra writes a run's (what makes it a run directory
    for load_run and resume), and where relative data paths were launched from. No overrides.yaml:
    a sweep report would count the fold as a job of its own."""
    note_whether_held(fold_dir)  # before the config is written: the new-run check asks whether it held a run
    check_new_run_dir(fold_dir)
    launched_from = launch_dir(fold_dir.parent)
    (fold_dir / HYDRA_DIR).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(fold_cfg, fold_dir / HYDRA_DIR / CONFIG_FILE)
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"cwd": launched_from}}}),
                   fold_dir / HYDRA_DIR / HYDRA_FILE)


def launch_dir(run_dir: Path) -> str:
    """Where the run was launched from (its .hydra/hydra.yaml), else this process's directory."""
    hydra_file = run_dir / HYDRA_DIR / HYDRA_FILE
    if hydra_file.is_file():
        cwd = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd")
        if cwd:
            return str(cwd)
    return os.getcwd()


def remove_fold_dir(fold_dir: Path) -> None:
    """What start_fold_dir and fold_log wrote, for a fold refused before it wrote anything itself."""
    for name in (f"{HYDRA_DIR}/{CONFIG_FILE}", f"{HYDRA_DIR}/{HYDRA_FILE}", FOLD_LOG):
        (fold_dir / name).unlink(missing_ok=True)
    for folder in (fold_dir / HYDRA_DIR, fold_dir):
        try:
            folder.rmdir()
        except OSError:  # something else is in it: left as it is
            return


@contextmanager
def fold_log(fold_dir: Path) -> Iterator[None]:
    """The fold's lines into its own train.log too (this thread's, as mlpkit.train keeps them)."""
    handler = logging.FileHandler(fold_dir / FOLD_LOG)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def stopped_in_fold(stop: TrainingStopped, fold_dir: Path, fold: int, folds: int) -> FoldStopped:
    """The cross-validation stops with its fold; its metrics.json says so (the sweep report reads it)."""
    done = [fold_dir_name(earlier) for earlier in range(fold)]
    kept = f"{', '.join(done)} finished and kept" if done else "no fold finished"
    advice = ("" if stop.nonfinite else
              f"; resume that fold with: python train.py resume={fold_dir} (the folds after it were not trained)")
    message = f"cross-validation stopped in fold {fold + 1}/{folds} ({fold_dir}): {stop}; {kept}{advice}"
    write_json(fold_dir.parent / METRICS_FILE, {
        "status": "stopped" if stop.exit_code > EXIT_SIGNAL else "failed", "error": message,  # as cli's rule
        "cv": {"folds": folds, "failed_fold": fold, "fold_dirs": [*done, fold_dir_name(fold)]}})
    return FoldStopped(message, stop.exit_code)


# --- the summary -------------------------------------------------------------------------------------
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
    path = run_dir / CURVES_FIGURE
    figures.save_figure(figures.cv_curves_figure(curves, summary["objective"]["metric"]), path)
    return path


# --- from Python -------------------------------------------------------------------------------------
class CrossValidation:
    """A cross-validation's directory: its folds' runs, its summary and a table of both."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)

    def __repr__(self) -> str:
        return f"CrossValidation({str(self.dir)!r})"

    @property
    def summary(self) -> dict[str, Any]:
        """cv_summary.json: mean and std per split and metric, per-fold metrics, verdict counts."""
        path = self.dir / SUMMARY_FILE
        if not path.is_file():
            raise ConfigError("run", self.dir, f"a finished cross-validation (it holds {SUMMARY_FILE})",
                              f"{path} does not exist")
        return read_json(path, self.dir)

    @property
    def metrics(self) -> dict[str, Any]:
        """The run directory's metrics.json: the folds' means, and under ``cv`` their std."""
        return read_metrics(self.dir)

    @property
    def runs(self) -> list[Any]:
        """One ``Run`` per fold, in fold order."""
        from mlpkit.finished_run import Run

        return [Run(self.dir / name) for name in self.summary["fold_dirs"]]

    @property
    def table(self) -> Any:
        """A pandas DataFrame: a row per fold (val_/test_ metrics, gradients), then mean and std."""
        from mlpkit.finished_run import require_pandas

        pandas, summary = require_pandas("CrossValidation.table"), self.summary
        columns = [(split, name) for split in ("val", "test") for name in summary["mean"].get(split, {})]
        rows = {entry["dir"]: {**{f"{split}_{name}": entry.get(split, {}).get(name) for split, name in columns},
                               "gradients": entry["gradients"]} for entry in summary["per_fold"]}
        for label in ("mean", "std"):
            rows[label] = {**{f"{split}_{name}": summary[label][split][name] for split, name in columns},
                           "gradients": summary["verdicts_text"] if label == "mean" else ""}
        return pandas.DataFrame.from_dict(rows, orient="index")

    def _repr_html_(self) -> str:
        line = summary_line(self.summary)
        return (f"<p><b>{html.escape(line.split(':', 1)[0])}</b>: {html.escape(line.split(':', 1)[1])}<br>"
                f"<code>{html.escape(str(self.dir))}</code></p>" + self.table.to_html(float_format="{:.4g}".format))

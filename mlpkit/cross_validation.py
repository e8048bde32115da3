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
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mlpkit.cv_summary import draw_curves, run_metrics, summarise, summary_line
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

log = logging.getLogger("mlpkit")

SUMMARY_FILE, CURVES_FIGURE = CV_SUMMARY_FILE, CV_CURVES_FIGURE
FOLD_LOG = "train.log"                   # a fold's own lines (the run's train.log has every fold's)
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

"""Multiruns: the Hydra callback and the sweep report (a row per job, its seeds pooled per configuration,
Welch's t-test against the best one, figures)."""
from __future__ import annotations

import atexit
import csv
import json
import logging
import math
import statistics
import sys
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlpkit.config import SWEEP_FAILED  # the exit code of Hydra's basic sweeper after a failed job
from mlpkit.config_keys import override_key
from mlpkit.pruning import pruned_note
from mlpkit.rundir import (
    HYDRA_DIR,
    HYDRA_FILE,
    JOB_STATUS_FILE,
    METRICS_FILE,
    OVERRIDES_FILE,
    RUN_CONFIG,
    write_atomically,
)
from mlpkit.schema import objective_mode
from mlpkit.study_storage import (
    INTERRUPTED_ATTR,
    check_storage,
    locked_folder,
    open_storage,
    study_creation,
    study_storage,
)

log = logging.getLogger(__name__)

REPORT_NAME = "sweep_report"         # sweep_report.md, .csv, _grouped.csv, _val_curves.png, _grad_norms.png
SEED_KEY = "trainer.seed"            # jobs whose overrides differ only in it repeat one configuration
SIGNIFICANCE = 0.05                  # a p-value below it: a difference larger than seed noise
FINISHED = ("completed", "pruned")   # a pruned job stopped early on purpose (mlpkit.pruning): not a failure


# --- the callback ---------------------------------------------------------------------------------
class SweepCallback(Callback):
    """Records each job's status next to its outputs and writes the sweep report when the sweep ends.

    Hydra's basic sweeper raises after a batch with a failed job and skips ``on_multirun_end``; the
    report is then written at exit, so a sweep with failures still gets one (failed rows included),
    and the command exits 1. Optuna's sweeper marks a failed trial failed and goes on to the end:
    ``on_multirun_end`` then writes the report and exits 1 too, as every sweep with a failed job does.
    """

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.objective: tuple[str, str] = ("loss", "min")
        self.reported = False
        self.earlier_jobs: set[Path] = set()  # jobs of an earlier run of the same study, not this sweep's

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        # Optuna opens its SQLite storage in the sweep directory before any launcher creates it.
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.earlier_jobs = set(find_jobs(self.sweep_dir))
        self.objective = (str(config.objective.metric), objective_mode(config.objective.metric, config.objective.mode))
        continue_optuna_study(config)
        atexit.register(self._report_once)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        # Runs in the job's own process whatever the launcher, so the status lands next to its outputs.
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        error = getattr(job_return, "_return_value", None) if job_return.status.name == "FAILED" else None
        value = None if error is not None else getattr(job_return, "_return_value", None)
        if job_return.status.name == "FAILED":
            status = "failed"
        elif isinstance(value, (int, float)) and not math.isfinite(value):
            status = "diverged"
        else:
            status = "completed"
        record = {"status": status, "error": None if error is None else f"{type(error).__name__}: {error}",
                  "job_num": config.hydra.job.get("num")}
        output_dir = Path(str(config.hydra.runtime.output_dir))
        (output_dir / JOB_STATUS_FILE).write_text(json.dumps(record, indent=2))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report_once()
        jobs = [job for job in find_jobs(self.sweep_dir) if job not in self.earlier_jobs]
        not_completed = [job for job in jobs if read_job(job)["status"] not in FINISHED]
        not_completed = [job for job in not_completed if not running_in_another_worker(config, job)]
        if not_completed:
            print(f"{len(not_completed)} of {len(jobs)} jobs of this sweep did not complete: their errors are in "
                  f"the status column of {self.sweep_dir / REPORT_NAME}.md", file=sys.stderr, flush=True)
            sys.exit(SWEEP_FAILED)  # SystemExit: Hydra turns a callback's exception into a warning

    def _report_once(self) -> None:
        if self.reported or self.sweep_dir is None or not self.sweep_dir.is_dir():
            return
        self.reported = True
        try:
            print(write_report(self.sweep_dir, *self.objective), flush=True)
        except Exception as error:  # noqa: BLE001 - a report must never turn a finished sweep into a crash
            log.warning("sweep report failed: %s", error)


def continue_optuna_study(config: DictConfig) -> None:
    """Say where the study stands as this worker joins it; refuse a storage that cannot hold it (one
    line, exit 2). ``n_trials`` is the study's total: mlpkit's sweeper (mlpkit.optuna_sweeper) counts the
    study's trials in its storage before each batch, whichever processes run them, so a rerun runs only
    the missing trials and a second worker shares them; each trial's sampler seed moves on with its number."""
    sweeper = config.hydra.sweeper
    if "OptunaPruningSweeper" not in str(sweeper.get("_target_", "")):
        return
    from mlpkit.config import exit_on_config_error

    url = study_storage(sweeper.get("storage"), config.hydra.sweep.dir)
    exit_on_config_error(check_storage, url)
    import optuna  # only a study on a storage needs it

    try:
        with study_creation(url):
            study = optuna.load_study(study_name=sweeper.study_name, storage=open_storage(url))
    except KeyError:  # no such study yet: a fresh start
        return
    done = sum(t.state.is_finished() for t in study.trials)
    running = sum(t.state == optuna.trial.TrialState.RUNNING and INTERRUPTED_ATTR not in t.user_attrs
                  for t in study.trials)
    remaining = max(0, int(sweeper.n_trials) - done - running)
    log.info("study %s has %d finished trials of %d: running %d more%s", sweeper.study_name, done,
             sweeper.n_trials, remaining, f" ({running} running in other workers)" if running else "")


def running_in_another_worker(config: DictConfig, job_dir: Path) -> bool:
    """Whether ``job_dir`` is a trial another worker of the shared study is still running (it started
    after this worker did; its trial is RUNNING and not interrupted), or one it finished since this
    worker read the job: not this sweep's failure."""
    sweeper = config.hydra.sweeper
    hydra_file = job_dir / HYDRA_DIR / HYDRA_FILE
    if "OptunaPruningSweeper" not in str(sweeper.get("_target_", "")) or not hydra_file.exists():
        return False
    import optuna

    number = int(OmegaConf.load(hydra_file).hydra.job.num)
    study = optuna.load_study(study_name=str(sweeper.study_name),
                              storage=open_storage(study_storage(sweeper.get("storage"), config.hydra.sweep.dir)))
    trial = next((trial for trial in study.trials if trial.number == number), None)
    if trial is None:
        return False
    if trial.state.name == "RUNNING":
        return INTERRUPTED_ATTR not in trial.user_attrs
    # told since this worker read the job: its status was written before the trial was told, so read again
    return read_job(job_dir)["status"] in FINISHED


# --- the report -----------------------------------------------------------------------------------
def find_jobs(sweep_dir: Path) -> list[Path]:
    """Every job directory of a sweep: the ones holding ``.hydra/overrides.yaml``, the sweep directory
    itself left out (``python scripts/diagnose.py`` runs its sweep in its own run directory)."""
    sweep_dir = Path(sweep_dir)
    return sorted(path.parent.parent for path in sweep_dir.rglob(OVERRIDES_FILE)
                  if path.parent.name == HYDRA_DIR and path.parent.parent != sweep_dir)


def read_job(job_dir: Path) -> dict[str, Any]:
    """One job's overrides, seed, metrics, per-layer gradient norms and status, whatever it got to write."""
    overrides = [str(o) for o in OmegaConf.load(job_dir / HYDRA_DIR / OVERRIDES_FILE)]
    metrics_path, status_path = job_dir / METRICS_FILE, job_dir / JOB_STATUS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    recorded = json.loads(status_path.read_text()) if status_path.exists() else {}
    # job_status.json (the callback) first, then metrics.json's own status ("stopped" by a signal,
    # "failed" on a non-finite loss); a job with neither was killed or is still running.
    status = recorded.get("status") or metrics.get("status") or ("completed" if metrics else "not finished")
    if status == "completed" and metrics.get("pruned"):
        status = "pruned"  # ranked after the completed jobs: its score is of a run stopped early
    layers = ((metrics.get("gradient_health") or {}).get("last") or {}).get("layers") or {}
    return {
        "dir": job_dir, "overrides": overrides, "seed": _seed(job_dir, overrides), "metrics": metrics,
        "status": status, "error": recorded.get("error") or "", "verdict": gradient_verdict(metrics),
        "pruned": metrics.get("pruned"),
        "grad_norms": {name: float(figures["grad_norm"]) for name, figures in layers.items()
                       if isinstance(figures, Mapping) and figures.get("grad_norm") is not None},
    }


def gradient_verdict(metrics: Mapping[str, Any]) -> str:
    """The run's own verdict on its gradients (judged once, by the run): its kinds, healthy or not judged."""
    if not metrics:
        return ""
    health = metrics.get("gradient_health") or {}
    if health.get("verdicts"):
        return ", ".join(health["verdicts"])
    return "healthy" if health.get("judged", True) and health.get("healthy") else "not judged"


def _seed(job_dir: Path, overrides: list[str]) -> str:
    for override in overrides:
        if override_key(override) == SEED_KEY:
            return override.split("=", 1)[1]
    config_path = job_dir / RUN_CONFIG
    seed = OmegaConf.select(OmegaConf.load(config_path), SEED_KEY) if config_path.exists() else None
    return "" if seed is None else str(seed)


def build_table(jobs: list[dict[str, Any]], metric: str, mode: str) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows sorted by the objective (failed jobs last) and the overrides all jobs share."""
    shared = sorted(set.intersection(*(set(job["overrides"]) for job in jobs))) if jobs else []
    metric_names = _metric_names(jobs, metric)

    def sort_key(job: dict[str, Any]) -> tuple[int, float]:
        value = _objective(job["metrics"].get("val", {}).get(metric, math.nan), mode)
        tier = FINISHED.index(job["status"]) if job["status"] in FINISHED and math.isfinite(value) else len(FINISHED)
        return tier, value if math.isfinite(value) else 0.0

    header = (["rank", "overrides"] + [f"val_{m}" for m in metric_names]
              + [f"test_{m}" for m in metric_names] + ["gradients", "wall_s", "status"])
    rows = []
    for rank, job in enumerate(sorted(jobs, key=sort_key), start=1):
        swept = ",".join(o for o in job["overrides"] if o not in shared) or "(none)"
        values = [_number(job["metrics"].get(split, {}).get(m)) for split in ("val", "test")
                  for m in metric_names]
        wall = job["metrics"].get("wall_seconds")
        status = job["status"] + (f": {job['error']}" if job["error"] else "")
        if job["status"] == "pruned":
            status = f"pruned ({pruned_note(job['pruned'])})"
        rows.append([str(rank), swept, *values, job["verdict"], _number(wall, ".3g"), status])
    return header, rows, shared


def _metric_names(jobs: list[dict[str, Any]], metric: str) -> list[str]:
    return sorted({name for job in jobs for name in job["metrics"].get("val", {})},
                  key=lambda name: (name != metric, name))


def _objective(value: float, mode: str) -> float:
    """The objective as a number to minimise."""
    return value if mode == "min" else -value


def _number(value: Any, spec: str = ".4g") -> str:
    return "" if value is None else format(float(value), spec)


# --- repeats: jobs that differ only in their seed -------------------------------------------------
def group_by_configuration(jobs: list[dict[str, Any]], shared: list[str]) -> list[dict[str, Any]]:
    """One entry per configuration (a job's overrides less its seed), with the jobs that repeat it."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        name = ",".join(o for o in job["overrides"] if o not in shared and override_key(o) != SEED_KEY)
        groups.setdefault(name or "(none)", []).append(job)
    return [{"name": name, "jobs": members,
             "completed": [job for job in members if job["status"] == "completed" and job["metrics"]]}
            for name, members in groups.items()]


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value) of the finite values."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan


def objective_values(group: dict[str, Any], metric: str) -> list[float]:
    """The finite val_<metric> of a configuration's completed jobs."""
    values = [float(job["metrics"].get("val", {}).get(metric, math.nan)) for job in group["completed"]]
    return [value for value in values if math.isfinite(value)]


def welch_p_value(first: list[float], second: list[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); nan when it is undefined."""
    try:
        from scipy.stats import ttest_ind  # scipy is slow to import: only a sweep with repeats needs it
    except ImportError:  # scipy comes with scikit-learn; without it the report states no test
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no spread in either sample: p is nan
        return float(ttest_ind(first, second, equal_var=False).pvalue)


def compare_to_best(groups: list[dict[str, Any]], metric: str, mode: str) -> list[str]:
    """Sets ``p_vs_best`` on every repeated configuration; one sentence per comparison with the best."""
    repeated = [group for group in groups if len(objective_values(group, metric)) >= 2]
    if len(repeated) < 2:
        return []
    best = min(repeated, key=lambda group: _objective(spread(objective_values(group, metric))[0], mode))
    best_values = objective_values(best, metric)
    sentences = []
    for group in repeated:
        if group is best:
            continue
        values = objective_values(group, metric)
        p_value = welch_p_value(best_values, values)
        group["p_vs_best"] = p_value
        if math.isnan(p_value):
            verdict = "Welch t-test undefined (no spread across seeds, or scipy missing)"
        else:
            real = "a real difference" if p_value < SIGNIFICANCE else "not distinguishable from seed noise"
            verdict = f"Welch t-test p={p_value:.2g}: {real} at the {SIGNIFICANCE:.0%} level"
        sentences.append(f"{best['name']} vs {group['name']}: val_{metric} {_mean_std(best_values, '.3g')} vs "
                         f"{_mean_std(values, '.3g')}, {verdict}")
    return sentences


def _mean_std(values: list[float], spec: str = ".4g") -> str:
    mean, std = spread(values)
    if math.isnan(mean):
        return ""
    return format(mean, spec) if math.isnan(std) else f"{mean:{spec}}±{std:.2g}"


def grouped_table(groups: list[dict[str, Any]], metric_names: list[str], metric: str, mode: str,
                  std_columns: bool) -> tuple[list[str], list[list[str]]]:
    """One row per configuration, best mean objective first: each metric as mean ± std over its n
    completed jobs (``std_columns``: the std in a column of its own, for the CSV), verdict counts."""
    def sort_key(group: dict[str, Any]) -> tuple[int, float]:
        mean = _objective(spread(objective_values(group, metric))[0], mode)
        return (0, mean) if math.isfinite(mean) else (1, 0.0)

    names = [f"{split}_{m}" for split in ("val", "test") for m in metric_names]
    header = (["rank", "configuration", "n", "seeds"]
              + [column for name in names for column in ([name, f"{name}_std"] if std_columns else [name])]
              + ["gradients", "wall_s", "status", "welch_p_vs_best"])
    rows = []
    for rank, group in enumerate(sorted(groups, key=sort_key), start=1):
        completed, cells = group["completed"], []
        for split, m in ((split, m) for split in ("val", "test") for m in metric_names):
            values = [float(job["metrics"].get(split, {}).get(m, math.nan)) for job in completed]
            mean, std = spread(values)
            cells += ([_number(_finite(mean)), _number(_finite(std))] if std_columns
                      else [_mean_std(values).replace("±", " ± ")])
        wall = spread([float(job["metrics"].get("wall_seconds", math.nan)) for job in completed])[0]
        rows.append([str(rank), group["name"], str(len(completed)),
                     ",".join(sorted({job["seed"] for job in group["jobs"]}, key=_seed_order)), *cells,
                     _counts([kind for job in completed for kind in job["verdict"].split(", ")], len(completed)),
                     _number(_finite(wall), ".3g"), _counts([job["status"] for job in group["jobs"]]),
                     _number(_finite(group.get("p_vs_best", math.nan)), ".2g")])
    return header, rows


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _seed_order(seed: str) -> tuple[int, str]:
    return (0, f"{int(seed):020d}") if seed.lstrip("-").isdigit() else (1, seed)


def _counts(words: list[str], total: int | None = None) -> str:
    """``vanishing 5/5, dead 2/5``: how many of ``total`` (default: of all) carry each word."""
    total = len(words) if total is None else total
    return ", ".join(f"{word} {count}/{total}" for word, count in Counter(words).items() if word)


# --- writing it -----------------------------------------------------------------------------------
def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """The table as CSV; a text cell (an override the user typed, an error) that a spreadsheet would run
    as a formula gets a leading ', numbers stay numbers."""
    from mlpkit.prediction import spreadsheet_cell  # the one rule for CSV cells, needed only here

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow([spreadsheet_cell(str(cell)) for cell in header])
            writer.writerows([spreadsheet_cell(str(cell)) for cell in row] for row in rows)

    write_atomically(path, write)


def write_report(sweep_dir: str | Path, metric: str | None = None, mode: str | None = None) -> str:
    """Write ``sweep_report.md``, ``.csv`` (a row per job), ``_grouped.csv`` (a row per configuration,
    its seeds pooled) and the figures into ``sweep_dir``; return the Markdown. Workers of a shared study
    each write it at their end, one at a time (a lock on the folder), reading the jobs once they hold it:
    the report last written was read after every job ended, and lists them all."""
    sweep_dir = Path(sweep_dir)
    with locked_folder(sweep_dir):
        return _write_report(sweep_dir, metric, mode)


def _write_report(sweep_dir: Path, metric: str | None, mode: str | None) -> str:
    job_dirs = find_jobs(sweep_dir)
    if metric is None or mode is None:
        objective = _objective_of(job_dirs)
        metric, mode = metric or objective[0], mode or objective[1]
    jobs = [read_job(job_dir) for job_dir in job_dirs]
    header, rows, shared = build_table(jobs, metric, mode)
    groups = group_by_configuration(jobs, shared)
    comparisons = compare_to_best(groups, metric, mode)
    failed = sum(job["status"] not in FINISHED for job in jobs)
    pruned = sum(job["status"] == "pruned" for job in jobs)
    pruned_text = f"{pruned} pruned (stopped early, ranked after the completed), " if pruned else ""
    text = (f"# Sweep {sweep_dir}\n\n{len(jobs)} jobs, {pruned_text}{failed} not completed; sorted by val_{metric} "
            f"({'lowest' if mode == 'min' else 'highest'} first)."
            + (f" Every job: `{','.join(shared)}`." if shared and len(jobs) > 1 else "")
            + f"\n\n{markdown_table(header, rows)}\n")
    if len(groups) < len(jobs):  # some configuration ran more than once: its repeats, pooled
        text += (f"\n## Per configuration: mean ± std over its seeds\n\n{len(groups)} configurations; n = "
                 f"completed jobs, gradients = how many of them got each verdict.\n\n"
                 f"{markdown_table(*grouped_table(groups, _metric_names(jobs, metric), metric, mode, False))}\n")
    if comparisons:
        text += (f"\n**Is the difference real?** The best configuration against each other one with "
                 f"n >= 2, Welch's two-sample t-test on val_{metric}:\n\n"
                 + "".join(f"- {sentence}\n" for sentence in comparisons))
    for figure, caption in [(plot_val_curves(groups, metric, sweep_dir / f"{REPORT_NAME}_val_curves.png"),
                             f"val_{metric} per configuration, mean over seeds ± std"),
                            (plot_grad_norms(jobs, shared, sweep_dir / f"{REPORT_NAME}_grad_norms.png"),
                             "per-layer gradient norms")]:
        if figure is not None:
            text += f"\n![{caption}]({figure.name})\n"
    # replaced whole: a reader (or a worker on another machine) sees one whole report or another
    write_atomically(sweep_dir / f"{REPORT_NAME}.md", lambda path: path.write_text(text))
    write_csv(sweep_dir / f"{REPORT_NAME}.csv", header, rows)
    write_csv(sweep_dir / f"{REPORT_NAME}_grouped.csv",
              *grouped_table(groups, _metric_names(jobs, metric), metric, mode, True))
    return text


def _objective_of(job_dirs: list[Path]) -> tuple[str, str]:
    for job_dir in job_dirs:
        config_path = job_dir / RUN_CONFIG
        if config_path.exists():
            objective = OmegaConf.load(config_path).get("objective") or {}
            metric = str(objective.get("metric", "loss"))
            return metric, objective_mode(metric, objective.get("mode", "min"))
    return "loss", "min"


# --- figures (drawn by mlpkit.figures: no pyplot, no process-wide backend) ---------------------
def plot_val_curves(groups: list[dict[str, Any]], metric: str, path: Path) -> Path | None:
    """Each configuration's validation curve: the mean over its seeds, with a ±std band."""
    from mlpkit import figures

    tag = f"{metric}/val"
    curves = {}
    for group in groups:
        by_epoch: dict[int, list[float]] = {}
        for job in group["completed"]:
            for entry in job["metrics"].get("history") or []:
                if entry.get(tag) is not None:
                    by_epoch.setdefault(int(entry["epoch"]), []).append(float(entry[tag]))
        if by_epoch:
            curves[f"{group['name']} (n={len(group['completed'])})"] = [
                (epoch, *spread(values)) for epoch, values in sorted(by_epoch.items())]
    if not curves:
        return None
    save_png(figures.sweep_curves_figure(curves, metric), path)
    return path


def plot_grad_norms(jobs: list[dict[str, Any]], shared: list[str], path: Path) -> Path | None:
    """One line per job across its layers: vanishing gradients show as a line falling to the left."""
    from mlpkit import figures

    lines = {",".join(o for o in job["overrides"] if o not in shared) or job["dir"].name:
             list(job["grad_norms"].values()) for job in jobs if job["grad_norms"]}
    if not lines:
        return None
    save_png(figures.sweep_grad_norms_figure(lines), path)
    return path


def save_png(figure: Any, path: Path) -> None:
    write_atomically(path, lambda temporary: figure.savefig(temporary, format="png"))

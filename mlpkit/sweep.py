"""Multiruns: the Hydra callback and the sweep report (table + gradient figure)."""
from __future__ import annotations

import atexit
import csv
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

log = logging.getLogger(__name__)

JOB_STATUS = "job_status.json"       # written by the callback into every job's directory
REPORT_NAME = "sweep_report"         # sweep_report.md, sweep_report.csv, sweep_report_grad_norms.png


# --- the callback ---------------------------------------------------------------------------------
class SweepCallback(Callback):
    """Records each job's status next to its outputs and writes the sweep report when the sweep ends.

    Hydra's basic sweeper raises after a batch with a failed job and skips ``on_multirun_end``; the
    report is then written at exit, so a sweep with failures still gets one (failed rows included).
    """

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.objective: tuple[str, str] = ("loss", "min")
        self.reported = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        # Optuna opens its SQLite storage in the sweep directory before any launcher creates it.
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.objective = (str(config.objective.metric), str(config.objective.mode))
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
        (output_dir / JOB_STATUS).write_text(json.dumps(record, indent=2))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report_once()

    def _report_once(self) -> None:
        if self.reported or self.sweep_dir is None or not self.sweep_dir.is_dir():
            return
        self.reported = True
        try:
            print(write_report(self.sweep_dir, *self.objective), flush=True)
        except Exception as error:  # noqa: BLE001 - a report must never turn a finished sweep into a crash
            log.warning("sweep report failed: %s", error)


def continue_optuna_study(config: DictConfig) -> None:
    """Make ``n_trials`` the study's total: a rerun on the same storage runs only the missing trials."""
    sweeper = config.hydra.sweeper
    if "optuna" not in str(sweeper.get("_target_", "")) or not sweeper.get("storage"):
        return
    import optuna  # only a study that resumes needs it

    try:
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    except KeyError:  # no such study yet: a fresh start
        return
    done = sum(t.state.is_finished() for t in study.trials)
    remaining = max(0, int(sweeper.n_trials) - done)
    log.info("study %s has %d finished trials of %d: running %d more", sweeper.study_name, done,
             sweeper.n_trials, remaining)
    with read_write(config.hydra.sweeper):
        sweeper.n_trials = remaining
        # A seeded sampler would propose the finished trials again: move its seed on by their count.
        if sweeper.get("sampler") and sweeper.sampler.get("seed") is not None:
            sweeper.sampler.seed = int(sweeper.sampler.seed) + len(study.trials)


# --- the report -----------------------------------------------------------------------------------
def find_jobs(sweep_dir: Path) -> list[Path]:
    """Every job directory of a sweep: the ones holding ``.hydra/overrides.yaml``."""
    return sorted(path.parent.parent for path in Path(sweep_dir).rglob("overrides.yaml")
                  if path.parent.name == ".hydra")


def read_job(job_dir: Path) -> dict[str, Any]:
    """One job's overrides, metrics, per-layer gradient norms and status, whatever it got to write."""
    overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    metrics_path, status_path = job_dir / "metrics.json", job_dir / JOB_STATUS
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    recorded = json.loads(status_path.read_text()) if status_path.exists() else {}
    # job_status.json (the callback) first, then metrics.json's own status ("stopped" by a signal,
    # "failed" on a non-finite loss); a job with neither was killed or is still running.
    status = recorded.get("status") or metrics.get("status") or ("completed" if metrics else "not finished")
    layers = ((metrics.get("gradient_health") or {}).get("last") or {}).get("layers") or {}
    return {
        "dir": job_dir, "overrides": overrides, "metrics": metrics,
        "status": status, "error": recorded.get("error") or "", "verdict": gradient_verdict(metrics),
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


def build_table(jobs: list[dict[str, Any]], metric: str, mode: str) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows sorted by the objective (failed jobs last) and the overrides all jobs share."""
    shared = sorted(set.intersection(*(set(job["overrides"]) for job in jobs))) if jobs else []
    metric_names = sorted({name for job in jobs for name in job["metrics"].get("val", {})},
                          key=lambda name: (name != metric, name))

    def objective(job: dict[str, Any]) -> float:
        value = job["metrics"].get("val", {}).get(metric, math.nan)
        return value if mode == "min" else -value

    def sort_key(job: dict[str, Any]) -> tuple[int, float]:
        value = objective(job)
        return (0 if job["status"] == "completed" and math.isfinite(value) else 1,
                value if math.isfinite(value) else 0.0)

    header = (["rank", "overrides"] + [f"val_{m}" for m in metric_names]
              + [f"test_{m}" for m in metric_names] + ["gradients", "wall_s", "status"])
    rows = []
    for rank, job in enumerate(sorted(jobs, key=sort_key), start=1):
        swept = ",".join(o for o in job["overrides"] if o not in shared) or "(none)"
        values = [_number(job["metrics"].get(split, {}).get(m)) for split in ("val", "test")
                  for m in metric_names]
        wall = job["metrics"].get("wall_seconds")
        status = job["status"] + (f": {job['error']}" if job["error"] else "")
        rows.append([str(rank), swept, *values, job["verdict"], _number(wall, ".3g"), status])
    return header, rows, shared


def _number(value: Any, spec: str = ".4g") -> str:
    return "" if value is None else format(float(value), spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def write_report(sweep_dir: str | Path, metric: str | None = None, mode: str | None = None) -> str:
    """Write ``sweep_report.{md,csv}`` and the gradient figure into ``sweep_dir``; return the Markdown."""
    sweep_dir = Path(sweep_dir)
    job_dirs = find_jobs(sweep_dir)
    if metric is None or mode is None:
        objective = _objective_of(job_dirs)
        metric, mode = metric or objective[0], mode or objective[1]
    jobs = [read_job(job_dir) for job_dir in job_dirs]
    header, rows, shared = build_table(jobs, metric, mode)
    failed = sum(job["status"] != "completed" for job in jobs)
    title = (f"# Sweep {sweep_dir}\n\n{len(jobs)} jobs, {failed} not completed; sorted by val_{metric} "
             f"({'lowest' if mode == 'min' else 'highest'} first)."
             + (f" Every job: `{','.join(shared)}`." if shared and len(jobs) > 1 else ""))
    text = f"{title}\n\n{markdown_table(header, rows)}\n"
    figure = plot_grad_norms(jobs, shared, sweep_dir / f"{REPORT_NAME}_grad_norms.png")
    if figure is not None:
        text += f"\n![per-layer gradient norms]({figure.name})\n"
    (sweep_dir / f"{REPORT_NAME}.md").write_text(text)
    with open(sweep_dir / f"{REPORT_NAME}.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return text


def _objective_of(job_dirs: list[Path]) -> tuple[str, str]:
    for job_dir in job_dirs:
        config_path = job_dir / ".hydra" / "config.yaml"
        if config_path.exists():
            objective = OmegaConf.load(config_path).get("objective") or {}
            return str(objective.get("metric", "loss")), str(objective.get("mode", "min"))
    return "loss", "min"


def plot_grad_norms(jobs: list[dict[str, Any]], shared: list[str], path: Path) -> Path | None:
    """One line per job across its layers: vanishing gradients show as a line falling to the left."""
    plotted = [job for job in jobs if job["grad_norms"]]
    if not plotted:
        return None
    # matplotlib is slow to import and needs no display here: only when there is something to draw.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    depth = max(len(job["grad_norms"]) for job in plotted)
    for job in plotted:
        norms = [max(norm, 1e-12) if math.isfinite(norm) else math.nan for norm in job["grad_norms"].values()]
        label = ",".join(o for o in job["overrides"] if o not in shared) or job["dir"].name
        axes.plot(range(1, len(norms) + 1), norms, marker="o", label=label)
    axes.set_yscale("log")
    axes.set_xticks(range(1, depth + 1))
    axes.set_xlabel("layer (linear1 = input side, last = output layer)")
    axes.set_ylabel("gradient L2 norm (last measured step)")
    axes.set_title("Per-layer gradient norms by job")
    axes.legend(fontsize="small", loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

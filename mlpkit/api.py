"""The Python API: the runs `python train.py` makes, from Python or a notebook.

``train(overrides)`` composes configs/train.yaml with the overrides a user would type, then does what
Hydra does for the command line (the run directory by the same rule, ``.hydra/``, ``train.log``) and
trains through the command line's own function, ``mlpkit.cli.run``: a run is the same either way.
``load_run(path)`` reads any finished run; ``sweep(grid)`` runs a small grid in this process into one
sweep directory with the sweep report. Hydra's multirun (``python train.py -m``) stays the way to
use launchers.
"""
from __future__ import annotations

import copy
import itertools
import logging
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mlpkit.callbacks import Callback
from mlpkit.errors import ConfigError, TrainingStopped, show_value
from mlpkit.finished_run import Run
from mlpkit.rundir import CONFIG_FILE, CV_SUMMARY_FILE, HYDRA_FILE, METRICS_FILE, OVERRIDES_FILE, find_run

__all__ = ["Run", "SweepResult", "load_run", "lr_find", "sweep", "train"]

_compose_lock = threading.Lock()  # Hydra's compose API holds one global state per process


def train(overrides: Sequence[str] | None = None, run_dir: str | Path | None = None,
          callbacks: Sequence[Callback] = ()) -> Run:
    """Train one run, as ``python train.py <overrides>`` would, and return it.

    ``overrides``: the strings typed on the command line, e.g. ``["activation=tanh",
    "model.hidden_sizes=[64,64]", "trainer.max_epochs=3"]``; ``resume=<run dir>`` continues a run in
    its own directory. ``run_dir``: where the run goes (the command line's ``hydra.run.dir``); by
    default a new ``outputs/<date>/<time>`` under the current directory. ``callbacks``: your own
    ``mlpkit.Callback`` instances, called after the built-in ones. A config mistake raises
    ConfigError with the command line's one-line message; a run stopped by a signal or a non-finite
    loss raises TrainingStopped.
    """
    from hydra.types import RunMode

    cfg = compose(_override_list(overrides))
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
    if run_dir is None:  # the command line's rule: a resume goes on in its run's directory, else a new one
        run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    run_dir = Path(run_dir).expanduser().resolve()
    _run_job(cfg, run_dir, callbacks)
    if int(OmegaConf.select(cfg, "data.cv_folds", default=0) or 0):
        from mlpkit.cross_validation import CrossValidation

        return CrossValidation(run_dir)  # the folds' runs and their summary
    return Run(run_dir)


def lr_find(overrides: Sequence[str] | None = None) -> Any:
    """The learning-rate range test for the run ``python train.py <overrides>`` describes, in memory
    (nothing written): a ``mlpkit.lr_finder.LRFinderResult`` with ``.suggestion``, ``.rule``, ``.lrs``,
    ``.losses`` and ``.smoothed``; ``mlpkit.figures.lr_find_figure`` draws it."""
    from mlpkit.assemble import load_data, prepare_device
    from mlpkit.config import validate
    from mlpkit.lr_finder import find_lr

    cfg = run_config(overrides)
    validate(cfg)
    return find_lr(cfg, load_data(cfg, prepare_device(cfg)))


def load_run(path: str | Path) -> Any:
    """A finished run directory, written by ``python train.py`` or ``mlpkit.train``: a ``Run``, or for a
    cross-validation (``data.cv_folds``) its ``CrossValidation``, whose ``.runs`` are the folds'."""
    run_dir = find_run(path)
    if (run_dir / CV_SUMMARY_FILE).is_file():
        from mlpkit.cross_validation import CrossValidation

        return CrossValidation(run_dir.resolve())  # its folds are runs: .runs
    if not (run_dir / METRICS_FILE).is_file():
        raise ConfigError("run", path, f"a finished run directory (it holds {METRICS_FILE})",
                          f"{run_dir.resolve()} has no {METRICS_FILE}: the run has not ended, or was killed "
                          "(resume it with mlpkit.train(['resume=...']))")
    return Run(run_dir.resolve())


# --- a sweep in this process ----------------------------------------------------------------------
@dataclass
class SweepResult:
    """A sweep's directory, its completed runs (in job order), its failed jobs and its report."""

    dir: Path
    runs: list[Run]
    failed: dict[str, str] = field(default_factory=dict)  # job directory -> the error it ended with
    report: str = ""  # sweep_report.md

    @property
    def table(self) -> Any:
        """sweep_report.csv as a pandas DataFrame: a row per job, best first."""
        from mlpkit.finished_run import require_pandas

        return require_pandas("SweepResult.table").read_csv(self.dir / "sweep_report.csv")

    def _repr_html_(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (f"<p><b>sweep</b> <code>{self.dir}</code>: {len(self.runs)} runs completed{failed}; "
                f"report in sweep_report.md</p>" + self.table.to_html(index=False))


def sweep(grid_or_overrides: Mapping[str, Sequence[Any]] | Sequence[Sequence[str]],
          overrides: Sequence[str] = (), sweep_dir: str | Path | None = None) -> SweepResult:
    """Run a small grid one job after another, into one sweep directory (a subdirectory per job,
    named as ``python train.py -m`` names them), and write the sweep report there.

    ``grid_or_overrides``: ``{"activation": ["relu", "tanh"], "trainer.seed": [0, 1]}`` (every
    combination, each listed value one job) or a list of override lists, one per job. ``overrides``
    go to every job. ``sweep_dir``: by default a new ``multirun/<date>/<time>``. Every job's config
    is composed before the first one trains, so a mistyped key fails at once; a job that fails later
    (a bad value, a non-finite loss) is a failed row of the report and the sweep goes on.
    """
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    from mlpkit.sweeps import SweepCallback, write_report

    jobs = _grid_jobs(grid_or_overrides)
    configs = [compose([*_override_list(overrides), *job]) for job in jobs]
    if sweep_dir is None:
        # as on the command line: the default's resolver (mlpkit_sweep_dir) makes a new one
        sweep_dir = str(OmegaConf.select(configs[0], "hydra.sweep.dir"))
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs, failed, callback = [], {}, SweepCallback()
    try:
        for number, cfg in enumerate(configs):
            with read_write(cfg.hydra), open_dict(cfg.hydra):
                cfg.hydra.mode, cfg.hydra.job.num, cfg.hydra.sweep.dir = RunMode.MULTIRUN, number, str(sweep_dir)
            job_dir = sweep_dir / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            try:
                job_return = JobReturn(status=JobStatus.COMPLETED, _return_value=_run_job(cfg, job_dir))
                runs.append(Run(job_dir))
            except (ConfigError, TrainingStopped) as error:
                if isinstance(error, TrainingStopped) and not error.nonfinite:
                    raise  # a signal stops the whole sweep, as on the command line
                job_return = JobReturn(status=JobStatus.FAILED, _return_value=error)
                failed[str(job_dir)] = f"{type(error).__name__}: {error}"
            callback.on_job_end(cfg, job_return)  # job_status.json, as the command line's sweeps write it
    finally:
        report = write_report(sweep_dir)
    return SweepResult(sweep_dir, runs, failed, report)


def _grid_jobs(grid: Mapping[str, Sequence[Any]] | Sequence[Sequence[str]]) -> list[list[str]]:
    if isinstance(grid, Mapping):  # every combination, the last key changing fastest (as Hydra's sweeper)
        values = [value if isinstance(value, (list, tuple)) else [value] for value in grid.values()]
        return [[f"{key}={_typed(value)}" for key, value in zip(grid, combination)]
                for combination in itertools.product(*values)]
    jobs = [_override_list(job) for job in grid]
    if not jobs:
        raise ConfigError("grid_or_overrides", grid, "a grid such as {'activation': ['relu', 'tanh']} or a "
                          "non-empty list of override lists")
    return jobs


def _typed(value: Any) -> str:
    """A Python value as an override's value: [64,32], true, null."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else show_value(value)


# --- what Hydra does around a command-line run ----------------------------------------------------
def compose(overrides: Sequence[str]) -> DictConfig:
    """configs/train.yaml with ``overrides``, its ``hydra`` node included; a mistake in the overrides
    is a ConfigError with the command line's message."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mlpkit.config import CONFIG_DIR, describe_hydra_error
    from mlpkit.new_dirs import register_resolvers

    register_resolvers()  # configs/hydra/default.yaml names run directories through them
    with _compose_lock:
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                return hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
        except Exception as error:
            message = describe_hydra_error(error, list(overrides), "train")
            if message is None:
                raise
    problem = ConfigError("overrides", list(overrides), "overrides that compose")
    problem.args = (message,)
    raise problem


def run_config(overrides: Sequence[str] | None = None) -> DictConfig:
    """The config ``python train.py <overrides>`` trains with (without Hydra's own node), for
    ``mlpkit.assemble.assemble`` and the tools built on it."""
    cfg = compose(_override_list(overrides))
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _override_list(overrides: Sequence[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, str) or not all(isinstance(item, str) for item in overrides):
        raise ConfigError("overrides", overrides, "a list of strings as typed on the command line, e.g. "
                          "['activation=tanh', 'model.hidden_sizes=[64,64]']")
    return list(overrides)


def _run_job(cfg: DictConfig, run_dir: Path, callbacks: Sequence[Callback] = (), data: Any = None) -> float:
    """What Hydra's run_job does for ``python train.py``, then mlpkit.cli.run; returns its objective.
    ``data``: a ``mlpkit.data.Data`` already in memory (an estimator's), else the config's loads."""
    from mlpkit.cli import run

    run_dir.mkdir(parents=True, exist_ok=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(run_dir)
    task_cfg = copy.deepcopy(cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    subdir = cfg.hydra.output_subdir  # the command line's rule: none for a directory that holds a run
    if subdir is not None:
        hydra_dir = run_dir / str(subdir)
        hydra_dir.mkdir(parents=True, exist_ok=True)
        for name, node in ((CONFIG_FILE, task_cfg), (HYDRA_FILE, OmegaConf.masked_copy(cfg, "hydra")),
                           (OVERRIDES_FILE, cfg.hydra.overrides.task)):
            (hydra_dir / name).write_text(OmegaConf.to_yaml(node))
    logging_config = cfg.hydra.job_logging
    with _logging_into(Path(logging_config.handlers.file.filename), logging_config.formatters):
        return run(task_cfg, run_dir, list(cfg.hydra.overrides.task), callbacks, data)


class _Console(logging.StreamHandler):
    """mlpkit's lines on the current sys.stderr (a notebook cell's output), while the root logger has
    no handler of its own to show them; added once per process, never per run."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        muted = getattr(_console, "muted", False)
        return not muted and not logging.getLogger().handlers and bool(super().filter(record))


_console = threading.local()  # muted: this thread's runs keep their lines off the console


def console_muted() -> AbstractContextManager[None]:
    """No mlpkit line on the console from this thread (an estimator's verbose=0); train.log still gets them."""
    from mlpkit.cache import flag_in_this_thread

    return flag_in_this_thread(_console, "muted")


@contextmanager
def show_console() -> Iterator[None]:
    """mlpkit's lines on the console (an estimator's verbose=1), in the command line's console format."""
    _ensure_console("%(message)s")  # configs/hydra/default.yaml's job_logging.formatters.console
    yield


def _ensure_console(line_format: str) -> None:
    logger = logging.getLogger("mlpkit")
    if not any(isinstance(handler, _Console) for handler in logger.handlers):
        console = _Console()
        console.setFormatter(logging.Formatter(line_format))
        logger.addHandler(console)


@contextmanager
def _logging_into(log_file: Path, formats: DictConfig) -> Iterator[None]:
    """The run's lines into its train.log (this thread's only, formatted as Hydra's job_logging), and
    on the console when nothing else shows them."""
    logger = logging.getLogger("mlpkit")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)  # the command line's level (Hydra's job_logging sets it on the root)
    _ensure_console(formats.console.format)
    file = logging.FileHandler(log_file)
    file.setFormatter(logging.Formatter(formats.file.format))
    thread = threading.get_ident()
    file.addFilter(lambda record: record.thread == thread)  # runs in other threads keep their own lines
    logger.addHandler(file)
    try:
        yield
    finally:
        logger.removeHandler(file)
        file.close()


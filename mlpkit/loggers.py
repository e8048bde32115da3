"""The run's loggers, chosen by ``logger=[...]``: one object in the loop that forwards every call to each.

The trainer and the CLI talk to one ``Loggers`` (the protocol of ``mlpkit.tensorboard.TensorBoardLogger``:
log_scalars, flush, log_text, log_histogram, log_image, log_hparams, log_graph, log_layout, close), never
to a logger by name. The run directory's own loggers (tensorboard, csv) fail the run like any write
would; an experiment tracker (mlflow, wandb) that raises, at its start or mid-run (a server gone), is
warned about once and dropped, and the run goes on with the others.
"""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mlpkit.errors import ConfigError, show_value

log = logging.getLogger("mlpkit")

LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")  # logger=[...]'s names, in the order they are built
DEFAULT_LOGGERS = ("tensorboard",)  # a run saved before logger= existed
TRACKERS = ("mlflow", "wandb")  # outside the run directory: a failure warns once and drops the tracker
PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}  # logger name -> the package it imports (an optional extra)
WANDB_MODES = ("auto", "online", "offline")
# configs/train.yaml's tracking.* values, for a run saved before they existed
DEFAULTS = {"tracking.mlflow.experiment": "mlpkit", "tracking.wandb.project": "mlpkit", "tracking.wandb.mode": "auto"}


def chosen_loggers(cfg: DictConfig) -> list[str]:
    """``logger``'s names in order, each once (one name alone, ``logger=csv``, is a list of one)."""
    names = OmegaConf.select(cfg, "logger", default=None)
    if names is None:
        return list(DEFAULT_LOGGERS)
    names = [names] if isinstance(names, str) else names
    return list(dict.fromkeys(names))


def check_loggers(cfg: DictConfig) -> None:
    """Refuse an unknown logger name, a tracker whose package is not installed, or a tracking.* value
    that cannot work, in one line, before the run writes anything (mlpkit.config.validate calls it)."""
    names = OmegaConf.select(cfg, "logger", default=None)
    allowed = f"a list of logger names, any of {', '.join(LOGGERS)}, e.g. [tensorboard,csv]"
    if names is not None and not isinstance(names, (str, list, ListConfig)):
        raise ConfigError("logger", names, allowed)
    unknown = [name for name in chosen_loggers(cfg) if name not in LOGGERS]
    if unknown:
        raise ConfigError("logger", show_value(names), allowed, f"{unknown[0]!r} is not one of them")
    for name in chosen_loggers(cfg):
        if name in PACKAGES and not installed(PACKAGES[name]):
            raise not_installed(names, name)
    check_tracking(cfg)


def check_tracking(cfg: DictConfig) -> None:
    for key, ok, allowed in (
        ("tracking.mlflow.tracking_uri", optional_text, "null ($MLFLOW_TRACKING_URI, else a local store) or a URI"),
        ("tracking.mlflow.experiment", text, "an experiment name, e.g. mlpkit"),
        ("tracking.mlflow.run_name", optional_text, "null (the run directory's name) or a name"),
        ("tracking.wandb.project", text, "a W&B project name, e.g. mlpkit"),
        ("tracking.wandb.mode", lambda mode: mode in WANDB_MODES, " | ".join(WANDB_MODES)),
        ("tracking.wandb.entity", optional_text, "null or a W&B team or user name"),
    ):
        value = OmegaConf.select(cfg, key, default=DEFAULTS.get(key))
        if not ok(value):
            raise ConfigError(key, value, allowed)


def text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def optional_text(value: Any) -> bool:
    return value is None or text(value)


def tracking(cfg: DictConfig, tracker: str) -> dict[str, Any]:
    """``tracking.<tracker>``'s settings, with the defaults for a run saved before they existed."""
    settings = {key.rsplit(".", 1)[-1]: value for key, value in DEFAULTS.items() if key.startswith(f"tracking.{tracker}.")}
    node = OmegaConf.select(cfg, f"tracking.{tracker}", default=None)
    if node is not None:
        settings.update(OmegaConf.to_container(node, resolve=True))
    return settings


def installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it."""
    return importlib.util.find_spec(package) is not None


def not_installed(names: Any, name: str) -> ConfigError:
    return ConfigError("logger", show_value(names), "loggers whose packages are installed",
                       f"{PACKAGES[name]} is not installed: pip install 'mlpkit[{name}]'")


class Loggers:
    """Every call forwarded to each logger, in the order they were given; a tracker that raises is
    warned about once (naming it and the error) and dropped."""

    def __init__(self, loggers: dict[str, Any]):
        self.loggers = dict(loggers)  # name -> logger

    @property
    def names(self) -> list[str]:
        return list(self.loggers)

    def forward(self, method: str, *args: Any, **kwargs: Any) -> None:
        for name, logger in list(self.loggers.items()):
            try:
                getattr(logger, method)(*args, **kwargs)
            except Exception as error:
                if name not in TRACKERS:
                    raise
                self.drop(name, error)

    def drop(self, name: str, error: BaseException) -> None:
        del self.loggers[name]
        log.warning("logger %s failed and is left out for the rest of the run (the run directory keeps "
                    "everything): %s", name, one_line(error))

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.forward("log_scalars", values, step)

    def flush(self) -> None:
        self.forward("flush")

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        self.forward("log_text", tag, text, step)

    def log_histogram(self, tag: str, values: Any, step: int) -> None:
        self.forward("log_histogram", tag, values, step)

    def log_image(self, tag: str, rgb: Any, step: int) -> None:
        self.forward("log_image", tag, rgb, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int = 0) -> None:
        self.forward("log_hparams", hparams, metrics, step)

    def log_graph(self, model: Any, example_input: Any) -> None:
        self.forward("log_graph", model, example_input)

    def log_layout(self, charts: dict[str, dict[str, list[str]]]) -> None:
        self.forward("log_layout", charts)

    def close(self) -> None:
        self.forward("close")


def one_line(error: BaseException) -> str:
    """An error as one line: its type and its message's first line (an HTTP error can run to pages)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def build_loggers(cfg: DictConfig, run_dir: Path, purge_step: int | None = None) -> Loggers:
    """The loggers ``logger=[...]`` names, for the run in ``run_dir``. ``purge_step``: a run resumed in
    its own directory drops what it logged at or after this step (its checkpoint's) before it died."""
    run_dir = Path(run_dir)
    loggers: dict[str, Any] = {}
    for name in chosen_loggers(cfg):
        try:
            loggers[name] = BUILDERS[name](cfg, run_dir, purge_step)
        except Exception as error:
            if isinstance(error, ImportError) and name in PACKAGES and not installed(PACKAGES[name]):
                raise not_installed(OmegaConf.select(cfg, "logger"), name) from None
            if name not in TRACKERS:
                raise
            log.warning("logger %s could not start and is left out of this run: %s", name, one_line(error))
    return Loggers(loggers)


def _tensorboard(cfg: DictConfig, run_dir: Path, purge_step: int | None) -> Any:
    from mlpkit.tensorboard import TensorBoardLogger

    return TensorBoardLogger(run_dir, purge_step=purge_step)


def _csv(cfg: DictConfig, run_dir: Path, purge_step: int | None) -> Any:
    from mlpkit.csv_logger import CSVLogger

    return CSVLogger(run_dir, purge_step=purge_step)


def _mlflow(cfg: DictConfig, run_dir: Path, purge_step: int | None) -> Any:
    # mlflow takes a second to import: only for a run that chose it
    from mlpkit.mlflow_logger import MLflowLogger

    return MLflowLogger(run_dir, tracking(cfg, "mlflow"), cfg, resumed=purge_step is not None)


def _wandb(cfg: DictConfig, run_dir: Path, purge_step: int | None) -> Any:
    # wandb takes a second to import and starts a service process: only for a run that chose it
    from mlpkit.wandb_logger import WandbLogger

    return WandbLogger(run_dir, tracking(cfg, "wandb"), cfg)


BUILDERS: dict[str, Callable[[DictConfig, Path, int | None], Any]] = {
    "tensorboard": _tensorboard, "csv": _csv, "mlflow": _mlflow, "wandb": _wandb}

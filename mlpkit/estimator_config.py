"""An estimator's parameters as the run's config: each parameter a config key (``PARAMETERS``), the
overrides composed as ``python train.py`` composes them (once per process for each set), and a config
mistake named by the parameter that made it (``hidden_sizes``, not ``model.hidden_sizes``)."""
from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np
from sklearn.utils.validation import check_random_state

from mlpkit.errors import ConfigError

# estimator parameter -> the config key it sets (a group's name where it picks a configs/ file)
PARAMETERS = {
    "hidden_sizes": "model.hidden_sizes", "activation": "activation", "dropout": "model.dropout",
    "init": "model.init", "norm": "model.norm", "residual": "model.residual", "head": "head", "loss": "loss",
    "class_weight": "loss.class_weights", "optimizer": "optimizer", "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay", "scheduler": "scheduler", "max_epochs": "trainer.max_epochs",
    "batch_size": "trainer.batch_size", "gradient_clip_val": "trainer.gradient_clip_val",
    "early_stopping": "trainer.early_stopping.patience", "validation_fraction": "data.val_fraction",
    "standardize": "data.standardize", "standardize_target": "data.standardize_target",
    "random_state": "trainer.seed", "device": "trainer.device",
}
EARLY_STOPPING_PATIENCE = 10  # early_stopping=True: scikit-learn's n_iter_no_change
VALIDATION_FRACTION = 0.1  # with early stopping and no validation_fraction given: scikit-learn's default
PLAIN = re.compile(r"[\w.:+\-/]+")  # a value typed bare in an override; anything else is quoted


def typed(value: Any) -> str:
    """A Python value as an override's value: [64,32], true, null, 0.001, or a quoted string."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(typed(item) for item in value) + "]"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(value.item() if isinstance(value, np.generic) else value)
    text = str(value)
    if PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def seed_of(random_state: Any) -> int:
    """scikit-learn's random_state as a run's seed: an int is the seed; None or a RandomState draws one."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


@functools.lru_cache(maxsize=64)
def composed_task(overrides: tuple[str, ...]) -> dict[str, Any]:
    """The run config (without Hydra's node, unresolved) the overrides compose to: a GridSearchCV
    fits each parameter set several times, and Hydra's compose takes 0.1 s of a small fit's 0.15 s."""
    from omegaconf import OmegaConf

    from mlpkit.api import run_config

    return OmegaConf.to_container(run_config(list(overrides)), resolve=False)


def without_hydra(cfg: Any) -> Any:
    """The run's config without Hydra's own node (what a run saves and trains with)."""
    import copy

    from omegaconf import open_dict, read_write

    if "hydra" not in cfg:
        return cfg
    task_cfg = copy.deepcopy(cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def as_parameter_error(error: ConfigError, estimator: str) -> ConfigError:
    """A config error named by the estimator's parameter where one sets the key (``hidden_sizes`` for
    model.hidden_sizes); the command line's message otherwise."""
    message = str(error)
    if message.startswith("data.source=arrays: "):  # a value in the rows themselves (the data pipeline's check)
        error.args = (f"{estimator}.fit(X, y): {message[len('data.source=arrays: '):]}",)
        return error
    for name, key in PARAMETERS.items():
        if message.startswith(f"{key}=") and key != name:
            error.args = (f"{estimator}({name}=...): {name}{message[len(key):]} (config key {key})",)
            return error
        if message.startswith(f"{key}="):
            error.args = (f"{estimator}({name}=...): {message}",)
            return error
    error.args = (f"{estimator}: {message}",)
    return error


def named_by_parameter(build: Any, estimator: str) -> Any:
    """``build()``, its ConfigError named after the estimator's parameter."""
    try:
        return build()
    except ConfigError as error:
        raise as_parameter_error(error, estimator) from None

"""The config schema's checks (run once, before any data is loaded) and the Hydra error reporter."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mlpkit.errors import ConfigError, is_int, is_number, require

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal")
HEADS = ("auto", "softmax", "sigmoid", "identity")
LOSSES = ("auto", "ce", "bce", "mse")
OBJECTIVE_MODES = ("min", "max")
PRECISIONS = ("32", "bf16-mixed")  # trainer.precision


def validate(cfg: DictConfig) -> None:
    """Check the values a run needs; raise ConfigError on the first one that cannot work."""
    from mlpkit.activations import resolve_activation

    model, trainer, data = cfg.model, cfg.trainer, cfg.data
    sizes = model.hidden_sizes
    require(
        isinstance(sizes, (ListConfig, list)) and all(is_int(s) and s > 0 for s in sizes),
        "model.hidden_sizes", sizes, "a list of positive integers, e.g. [128,64] ([] for a linear model)",
    )
    require(is_number(model.dropout) and 0 <= model.dropout < 1, "model.dropout", model.dropout,
             "a number in [0, 1)")
    require(model.init in INITS, "model.init", model.init, f"one of {', '.join(INITS)}")

    params = {k: v for k, v in cfg.activation.items() if k != "name"}
    resolve_activation(cfg.activation.name, params)
    require(cfg.head.name in HEADS, "head.name", cfg.head.name, f"one of {', '.join(HEADS)}")
    require(cfg.loss.name in LOSSES, "loss.name", cfg.loss.name, f"one of {', '.join(LOSSES)}")

    require(is_number(cfg.optimizer.lr) and cfg.optimizer.lr > 0, "optimizer.lr", cfg.optimizer.lr,
             "a positive number, e.g. 0.001")

    for key in ("max_epochs", "batch_size"):
        value, least = trainer[key], 0 if key == "max_epochs" else 1
        require(is_int(value) and value >= least, f"trainer.{key}", value, f"an integer >= {least}")
    interval = trainer.log_every_n_steps
    require(interval == "auto" or (is_int(interval) and interval >= 1), "trainer.log_every_n_steps", interval,
            "auto or an integer >= 1")
    require(is_int(trainer.seed), "trainer.seed", trainer.seed, "an integer")
    device = str(trainer.device)
    require(device in ("auto", "cpu", "mps") or device.startswith("cuda"), "trainer.device", device,
             "auto, cpu, cuda, cuda:N or mps")
    require(str(trainer.progress) in ("auto", "True", "False"), "trainer.progress", trainer.progress,
             "auto, true or false")

    require(is_int(trainer.checkpoint_every_n_steps) and trainer.checkpoint_every_n_steps >= 0,
             "trainer.checkpoint_every_n_steps", trainer.checkpoint_every_n_steps, "an integer >= 0")
    for key in ("histogram_every_n_steps", "figure_every_n_steps"):
        value = cfg.diagnostics[key]
        require(is_int(value) and value >= 0, f"diagnostics.{key}", value, "an integer >= 0 (0 = off)")
    threads = trainer.get("num_threads", "auto")
    require(threads == "auto" or (is_int(threads) and threads >= 1), "trainer.num_threads", threads,
             "auto or an integer >= 1")
    require(trainer.on_nonfinite in ("stop", "skip"), "trainer.on_nonfinite", trainer.on_nonfinite,
             "stop or skip")
    for key in ("compile", "cuda_graphs", "tf32"):
        require(isinstance(trainer[key], bool), f"trainer.{key}", trainer[key], "true or false")
    require(str(trainer.precision) in PRECISIONS, "trainer.precision", trainer.precision,
             " or ".join(PRECISIONS))

    for key in ("val_fraction", "test_fraction"):
        require(is_number(data[key]) and 0 < data[key] < 1, f"data.{key}", data[key],
                 "a fraction in (0, 1)")
    require(data.val_fraction + data.test_fraction < 1, "data.val_fraction + data.test_fraction",
             data.val_fraction + data.test_fraction, "a sum below 1, leaving samples to train on")

    require(cfg.objective.mode in OBJECTIVE_MODES, "objective.mode", cfg.objective.mode, "min or max")


def report_config_errors(app: Callable[[], Any], config_name: str, new_keys: bool = True) -> None:
    """Run a Hydra app; a mistake in the overrides (unknown choice or key, bad syntax) is one line on
    stderr and exit code 2. ``HYDRA_FULL_ERROR=1`` keeps Hydra's traceback instead."""
    show_traceback = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # Hydra prints composition errors itself and exits 1 unless HYDRA_FULL_ERROR is set: set it while
    # the app runs, so the error reaches us, and put the environment back afterwards.
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except Exception as error:
        message = None if show_traceback else describe_hydra_error(error, sys.argv[1:], config_name, new_keys)
        if message is None:
            raise
        print(f"Config error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def exit_on_config_error(command: Callable[..., Any], *args: Any) -> None:
    """Inside the Hydra task: a ConfigError is one line on stderr and exit code 2, no traceback."""
    try:
        command(*args)
    except ConfigError as error:
        print(f"Config error: {error}", file=sys.stderr)
        sys.exit(2)  # SystemExit passes through Hydra, which would log a failed job for an exception


def given(cfg: DictConfig, key: str) -> Any:
    """The value of a key, or ``???`` while a required key is not given."""
    return "???" if OmegaConf.is_missing(cfg, key) else cfg[key]


def describe_hydra_error(error: Exception, overrides: list[str], config_name: str = "train",
                         new_keys: bool = True) -> str | None:
    """One line for a Hydra composition error (unknown choice, misspelled key, bad override syntax).

    Returns None for errors that are not about the config, which then keep their traceback.
    ``new_keys``: whether the app takes new keys with a ``+`` prefix (worth saying in the message).
    """
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )

    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, choice = str(error.missing_cfg_file).rpartition("/")
        return str(ConfigError(group, choice, f"one of {', '.join(sorted(error.options))}"))
    if isinstance(error, OverrideParseException):
        return f"cannot parse the command-line override: {str(error).splitlines()[0]} " \
               "(lists are written model.hidden_sizes=[64,32]; quote what the shell or Hydra would " \
               """split, e.g. 'delimiter=";"')"""
    if isinstance(error, ConfigCompositionException):
        full_key = getattr(error.__cause__, "full_key", None)
        if not full_key:
            return str(error).splitlines()[0]
        value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == full_key), "")
        parent, _, key = full_key.rpartition(".")
        others = [o for o in overrides if o.lstrip("+~").split("=")[0] != full_key]
        known = ", ".join(_keys_of(parent, others, config_name))
        allowed = (f"a key of {parent}: {known}" if parent else f"one of {known}") if known else "an existing key"
        hint = " (prefix with + to add a new key)" if new_keys else ""
        return f"{full_key}={value} is not valid: {key!r} is not a config key; expected {allowed}{hint}"
    return None


def _keys_of(parent: str, overrides: list[str], config_name: str) -> list[str]:
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=[o for o in overrides if not o.startswith("hydra")])
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return [str(k) for k in node] if isinstance(node, DictConfig) else []
    except Exception:  # the hint is a courtesy; never let it hide the original error
        return []

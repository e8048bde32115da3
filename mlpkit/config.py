"""The config schema's checks (run once, before any data is loaded) and the Hydra error reporter."""
from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from mlpkit.config_keys import check_known_keys
from mlpkit.errors import (
    EXIT_ENVIRONMENT,
    ConfigError,
    TrainingStopped,
    environment_fault,
    is_int,
    is_number,
    require,
)
from mlpkit.optimizers import check_optimizer_keys

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal")
NORMS = ("none", "batch", "layer")  # model.norm (mlpkit.model.NORMS builds them)
HEADS = ("auto", "softmax", "sigmoid", "identity")
LOSSES = ("auto", "ce", "bce", "mse")
OBJECTIVE_MODES = ("min", "max")
PRECISIONS = ("32", "bf16-mixed")  # trainer.precision
SCHEDULERS = ("none", "step", "cosine", "onecycle", "plateau")  # configs/scheduler/<name>.yaml
CLIP_ALGORITHMS = ("norm", "value")  # trainer.gradient_clip_algorithm


SWEEP_FAILED = 1  # exit code of a multirun in which a job failed, as Hydra's own
SEED_RANGE = (0, 2**32 - 1)  # numpy.random.seed and sklearn's random_state take this; torch takes more
SEED = f"an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]"
DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
ABSENT = object()  # what OmegaConf.select returns for a key that is not there


class MissingKeyError(ConfigError):
    """A key the run needs that was deleted (``~trainer.seed``) or left ``???``."""

    def __init__(self, key: str, allowed: str):
        super().__init__(key, "???", allowed)
        self.args = (f"{key} is missing: expected {allowed}",)


def read(cfg: DictConfig, key: str, allowed: str) -> Any:
    """The value at the dotted ``key``; a missing key is a MissingKeyError that says what it expects."""
    try:
        value = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        value = ABSENT
    if value is ABSENT:
        raise MissingKeyError(key, allowed)
    return value


def check(cfg: DictConfig, key: str, ok: Callable[[Any], bool], allowed: str) -> Any:
    """The value at ``key`` if ``ok(value)``, else a ConfigError naming the key, the value and ``allowed``."""
    value = read(cfg, key, allowed)
    require(ok(value), key, value, allowed)
    return value


def check_optional(cfg: DictConfig, key: str, ok: Callable[[Any], bool], allowed: str) -> None:
    """``check`` for a key that a config may leave out (an optimizer's momentum, a loss's pos_weight)."""
    if OmegaConf.select(cfg, key, default=ABSENT) is not ABSENT:
        check(cfg, key, ok, allowed)


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def at_least(least: float, integer: bool = False) -> Callable[[Any], bool]:
    return lambda value: (is_int(value) if integer else is_finite(value)) and value >= least


def is_seed(value: Any) -> bool:
    return is_int(value) and SEED_RANGE[0] <= value <= SEED_RANGE[1]


def validate(cfg: DictConfig) -> None:
    """Check the values a run needs; raise ConfigError on the first one that cannot work."""
    check_resolves(cfg)
    check_known_keys(OmegaConf.to_container(cfg, resolve=False))
    validate_model(cfg)
    validate_activation(cfg)
    check(cfg, "head.name", lambda name: name in HEADS, f"one of {', '.join(HEADS)}")
    validate_loss(cfg)
    validate_optimizer(cfg)
    validate_trainer(cfg)
    validate_remedies(cfg)
    validate_scheduler(cfg)
    validate_data(cfg)
    check(cfg, "objective.metric", lambda metric: isinstance(metric, str) and metric != "",
          "a validation metric: loss, accuracy, rmse, mae or r2")
    check(cfg, "objective.mode", lambda mode: mode in OBJECTIVE_MODES, "min or max")


def check_resolves(cfg: DictConfig) -> None:
    """Every interpolation resolves (``data.path=${nope}`` would fail only when the data loads)."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as error:
        key = error.full_key or "?"
        raise ConfigError(key, unresolved(cfg, key), "a value or an interpolation that resolves",
                          str(error).splitlines()[0]) from None


def unresolved(cfg: DictConfig, full_key: str) -> Any:
    """The value at ``full_key`` (``data.path``, ``model.hidden_sizes[1]``) as written, unresolved."""
    parent_key, index = full_key, None
    if match := re.fullmatch(r"(.*)\[([0-9]+)\]", full_key):
        parent_key, index = match.group(1), int(match.group(2))
    else:
        parent_key, _, index = full_key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        return OmegaConf.to_container(parent, resolve=False)[index]
    except Exception:  # the value is a courtesy in the message; never let it hide the error
        return ""


def validate_model(cfg: DictConfig) -> None:
    check(cfg, "model.hidden_sizes",
          lambda sizes: isinstance(sizes, (ListConfig, list)) and all(is_int(s) and s > 0 for s in sizes),
          "a list of positive integers, e.g. [128,64] ([] for a linear model)")
    check(cfg, "model.dropout", lambda p: is_number(p) and 0 <= p < 1, "a number in [0, 1)")
    check(cfg, "model.init", lambda init: init in INITS, f"one of {', '.join(INITS)}")
    check_optional(cfg, "model.norm", lambda norm: norm in NORMS, f"one of {', '.join(NORMS)}")
    check_optional(cfg, "model.residual", lambda flag: isinstance(flag, bool), "true or false")
    if cfg.model.get("residual", False):
        from mlpkit.model import no_residual_layer, residual_layers

        if not residual_layers(list(cfg.model.hidden_sizes)):
            raise ConfigError(*no_residual_layer(list(cfg.model.hidden_sizes)))


def validate_activation(cfg: DictConfig) -> None:
    from mlpkit.activations import resolve_activation

    name = read(cfg, "activation.name", "an activation name, e.g. relu")
    params = {k: v for k, v in cfg.activation.items() if k != "name"}
    resolve_activation(name, params)  # checks the parameters' names and values


def validate_loss(cfg: DictConfig) -> None:
    check(cfg, "loss.name", lambda name: name in LOSSES, f"one of {', '.join(LOSSES)}")
    check_optional(cfg, "loss.label_smoothing", lambda p: is_number(p) and 0 <= p <= 1, "a number in [0, 1]")
    check_optional(cfg, "loss.pos_weight", lambda w: w is None or (is_finite(w) and w > 0),
                   "a positive number or null")
    check_optional(cfg, "loss.class_weights",
                   lambda w: w is None or w in ("none", "balanced") or (
                       isinstance(w, (ListConfig, list)) and len(w) > 0 and all(is_finite(x) and x > 0 for x in w)),
                   "none, balanced or a list of positive weights, one per class, e.g. [1,3]")
    class_weights = OmegaConf.select(cfg, "loss.class_weights", default=None)
    if class_weights not in (None, "none") and OmegaConf.select(cfg, "loss.pos_weight", default=None) is not None:
        raise ConfigError("loss.class_weights", class_weights, "none when loss.pos_weight is set",
                          "both weight the classes of a binary loss: class_weights=[w0,w1] weighs the positive "
                          "samples w1/w0 times the negative ones, like pos_weight=w1/w0")


def validate_optimizer(cfg: DictConfig) -> None:
    """The keys torch.optim checks when the optimizer is built, checked before any data loads."""
    check_optimizer_keys(OmegaConf.to_container(read(cfg, "optimizer", "an optimizer group, e.g. optimizer=adam"),
                                                resolve=True))
    check(cfg, "optimizer.lr", lambda lr: is_finite(lr) and lr > 0, "a finite positive number, e.g. 0.001")
    check_optional(cfg, "optimizer.weight_decay", at_least(0), "a number >= 0")
    check_optional(cfg, "optimizer.eps", at_least(0), "a number >= 0")
    check_optional(cfg, "optimizer.betas",
                   lambda betas: isinstance(betas, (ListConfig, list)) and len(betas) == 2
                   and all(is_number(b) and 0 <= b < 1 for b in betas),
                   "two numbers in [0, 1), e.g. [0.9,0.999]")
    check_optional(cfg, "optimizer.momentum", at_least(0), "a number >= 0")
    check_optional(cfg, "optimizer.dampening", is_finite, "a number")
    for key in ("nesterov", "amsgrad", "maximize"):
        check_optional(cfg, f"optimizer.{key}", lambda flag: isinstance(flag, bool), "true or false")
    check_optional(cfg, "optimizer.fused", lambda fused: fused == "auto" or fused is None or isinstance(fused, bool),
                   "auto, true, false or null")
    optimizer = cfg.optimizer
    momentum, dampening = optimizer.get("momentum", 0), optimizer.get("dampening", 0)
    if optimizer.get("nesterov") and (momentum <= 0 or dampening != 0):
        given = f"optimizer.momentum={momentum}" if momentum <= 0 else f"optimizer.dampening={dampening}"
        raise ConfigError("optimizer.nesterov", "true", f"false with {given}: Nesterov momentum needs "
                          "momentum > 0 and dampening 0")


def validate_trainer(cfg: DictConfig) -> None:
    check(cfg, "trainer.max_epochs", at_least(0, integer=True), "an integer >= 0")
    check(cfg, "trainer.batch_size", at_least(1, integer=True), "an integer >= 1")
    check(cfg, "trainer.log_every_n_steps", lambda n: n == "auto" or at_least(1, integer=True)(n),
          "auto or an integer >= 1")
    check(cfg, "trainer.seed", is_seed, SEED)
    check(cfg, "trainer.device", lambda device: DEVICE.fullmatch(str(device)) is not None,
          "auto, cpu, cuda, cuda:N or mps")
    check(cfg, "trainer.progress", lambda progress: str(progress) in ("auto", "True", "False"),
          "auto, true or false")
    check(cfg, "trainer.checkpoint_every_n_steps", at_least(0, integer=True), "an integer >= 0")
    check_optional(cfg, "trainer.checkpoint_min_seconds", at_least(0), "a number of seconds >= 0")
    for key in ("histogram_every_n_steps", "figure_every_n_steps"):
        check(cfg, f"diagnostics.{key}", at_least(0, integer=True), "an integer >= 0 (0 = off)")
    check_optional(cfg, "diagnostics.statistics_every", lambda n: n == "auto" or at_least(1, integer=True)(n),
                   "auto or an integer >= 1")
    check_optional(cfg, "trainer.num_threads", lambda n: n == "auto" or at_least(1, integer=True)(n),
                   "auto or an integer >= 1")
    check(cfg, "trainer.on_nonfinite", lambda action: action in ("stop", "skip"), "stop or skip")
    for key in ("compile", "cuda_graphs", "tf32"):
        check(cfg, f"trainer.{key}", lambda flag: isinstance(flag, bool), "true or false")
    check(cfg, "trainer.precision", lambda precision: str(precision) in PRECISIONS, " or ".join(PRECISIONS))


def validate_remedies(cfg: DictConfig) -> None:
    """Clipping, early stopping and the sanity checks (optional keys: a checkpoint written before
    they existed resumes without them)."""
    check_optional(cfg, "trainer.gradient_clip_val", at_least(0), "a number >= 0 (0 = off)")
    check_optional(cfg, "trainer.gradient_clip_algorithm", lambda a: a in CLIP_ALGORITHMS,
                   " or ".join(CLIP_ALGORITHMS))
    check_optional(cfg, "trainer.early_stopping.patience", at_least(0, integer=True), "an integer >= 0 (0 = off)")
    check_optional(cfg, "trainer.early_stopping.min_delta", at_least(0), "a number >= 0")
    check_optional(cfg, "trainer.overfit_batches", at_least(0, integer=True), "an integer >= 0 (0 = off)")
    check_optional(cfg, "trainer.fast_dev_run", lambda flag: isinstance(flag, bool), "true or false")
    if cfg.trainer.get("fast_dev_run") and cfg.trainer.get("overfit_batches"):
        raise ConfigError("trainer.overfit_batches", cfg.trainer.overfit_batches,
                          "0 with trainer.fast_dev_run=true (a dev run takes one batch of each split)")


def validate_scheduler(cfg: DictConfig) -> None:
    """The scheduler group (absent from a checkpoint written before it existed: no schedule)."""
    if OmegaConf.select(cfg, "scheduler", default=None) is None:
        return
    check(cfg, "scheduler.name", lambda name: name in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}")
    checks = {
        "warmup_steps": (at_least(0, integer=True), "an integer >= 0 (0 = no warmup)"),
        "step_size": (at_least(1, integer=True), "an integer >= 1 (epochs between decays)"),
        "gamma": (lambda g: is_finite(g) and 0 < g <= 1, "a number in (0, 1]"),
        "eta_min": (at_least(0), "a number >= 0"),
        "t_max": (lambda t: t is None or at_least(1, integer=True)(t), "null (the run's steps) or an integer >= 1"),
        "max_lr": (lambda lr: lr is None or (is_finite(lr) and lr > 0), "null (optimizer.lr) or a positive number"),
        "pct_start": (lambda p: is_finite(p) and 0 < p < 1, "a fraction in (0, 1)"),
        "div_factor": (lambda d: is_finite(d) and d >= 1, "a number >= 1"),
        "final_div_factor": (lambda d: is_finite(d) and d >= 1, "a number >= 1"),
        "anneal_strategy": (lambda s: s in ("cos", "linear"), "cos or linear"),
        "factor": (lambda f: is_finite(f) and 0 < f < 1, "a number in (0, 1)"),
        "patience": (at_least(0, integer=True), "an integer >= 0 (epochs without improvement)"),
        "threshold": (at_least(0), "a number >= 0"),
        "min_lr": (at_least(0), "a number >= 0"),
    }
    for key, (ok, allowed) in checks.items():
        check_optional(cfg, f"scheduler.{key}", ok, allowed)
    if cfg.scheduler.name == "onecycle" and cfg.scheduler.get("warmup_steps", 0):
        raise ConfigError("scheduler.warmup_steps", cfg.scheduler.warmup_steps, "0 with scheduler=onecycle",
                          "onecycle warms up itself: set scheduler.pct_start")


def validate_data(cfg: DictConfig) -> None:
    fractions = [check(cfg, f"data.{key}", lambda f: is_number(f) and 0 < f < 1, "a fraction in (0, 1)")
                 for key in ("val_fraction", "test_fraction")]
    require(sum(fractions) < 1, "data.val_fraction + data.test_fraction", sum(fractions),
            "a sum below 1, leaving samples to train on")
    check_optional(cfg, "data.split_seed", is_seed, SEED)
    check_optional(cfg, "data.seed", is_seed, SEED)  # the generator of a synthetic set
    check_optional(cfg, "data.split", lambda split: split in ("official", "pooled"),  # torchvision sets
                   "official (the official test set) or pooled (train and test pooled, split by fractions)")
    check_optional(cfg, "data.categorical", lambda value: value in ("auto", "none") or (
        OmegaConf.is_list(value) and all(isinstance(name, str) for name in value)),
        "auto, none, or a list of feature columns to one-hot encode, e.g. [color]")
    for key in ("val_path", "test_path"):  # a table's given splits
        check_optional(cfg, f"data.{key}", lambda path: path is None or (isinstance(path, str) and path.strip()),
                       "a table file (.csv, .tsv, .parquet, .feather), or null to carve the split from data.path")


def report_config_errors(app: Callable[[], Any], config_name: str) -> None:
    """Run a Hydra app; a mistake in the overrides (unknown choice or key, bad syntax) is one line on
    stderr and exit code 2. ``HYDRA_FULL_ERROR=1`` keeps Hydra's traceback instead."""
    show_traceback = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # Hydra prints composition errors itself and exits 1 unless HYDRA_FULL_ERROR is set: set it while
    # the app runs, so the error reaches us, and put the environment back afterwards.
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (ConfigError, TrainingStopped):
        if show_traceback:
            raise
        # A multirun job's error, raised again by Hydra's sweeper once the batch is done: the job
        # logged its one line and Hydra named its overrides, so a traceback would add nothing. The
        # exit code stays 1, Hydra's for a sweep with a failed job (whatever the job's own code).
        sys.exit(SWEEP_FAILED)
    except Exception as error:
        message = None if show_traceback else describe_hydra_error(error, sys.argv[1:], config_name)
        if message is not None:
            print(f"Config error: {message}", file=sys.stderr)
            sys.exit(2)
        refused = os_error_behind(error)
        if refused is not None and not show_traceback:  # Hydra could not make or write the run directory
            print(f"Error: {environment_fault(refused, 'write the run directory')}", file=sys.stderr)
            sys.exit(EXIT_ENVIRONMENT)
        raise
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def os_error_behind(error: BaseException | None) -> OSError | None:
    """The OSError an error was raised from, if any (logging's "Unable to configure handler 'file'"
    hides a read-only train.log behind a ValueError)."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


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


def describe_hydra_error(error: Exception, overrides: list[str], config_name: str = "train") -> str | None:
    """One line for a Hydra composition error (unknown choice, misspelled key, bad override syntax).

    Returns None for errors that are not about the config, which then keep their traceback.
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
        names = _keys_of(parent, others, config_name)
        known = ", ".join(names)
        allowed = (f"a key of {parent}: {known}" if parent else f"one of {known}") if known else "an existing key"
        nearest = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f" (did you mean {parent + '.' if parent else ''}{nearest[0]}?)" if nearest else ""
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

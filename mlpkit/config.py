"""The config's checks (run once, before any data is loaded) and the Hydra error reporter.

``CONSTRAINTS`` is the table of what each key allows (a range, a choice, ``auto`` or a number), each
rule's words written once and used by every message that names it; the rules that relate two keys
follow it as code. Types and defaults are mlpkit/schema.py's."""
from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from mlpkit import schema  # importing it registers the groups' schemas with Hydra, before any compose
from mlpkit.config_keys import CONFIG_DIR, check_known_keys
from mlpkit.distributed import STRATEGIES, check_ddp_device, resolve_strategy
from mlpkit.errors import (
    EXIT_ENVIRONMENT,
    ConfigError,
    TrainingStopped,
    environment_fault,
    is_int,
    is_number,
    require,
)
from mlpkit.loggers import check_loggers
from mlpkit.optimizers import check_optimizer_keys

SWEEP_FAILED = 1  # exit code of a multirun in which a job failed, as Hydra's own
SEED_RANGE = (0, 2**32 - 1)  # numpy.random.seed and sklearn's random_state take this; torch takes more
DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
DOTTED_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")  # my_pkg.callbacks.PrintLoss
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


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def at_least(least: float, integer: bool = False) -> Callable[[Any], bool]:
    return lambda value: (is_int(value) if integer else is_finite(value)) and value >= least


def is_seed(value: Any) -> bool:
    return is_int(value) and SEED_RANGE[0] <= value <= SEED_RANGE[1]


def is_list(value: Any) -> bool:
    return isinstance(value, (ListConfig, list))


# --- the rules: what a value must be, and the words every message uses for it ---------------------
@dataclass(frozen=True)
class Rule:
    """``test`` passes the values a key allows; ``allowed`` says which, after "expected".
    ``optional``: a config may lack the key (a loss's pos_weight, an optimizer's momentum, a run
    saved before the key existed); a required key that is missing is a MissingKeyError."""

    test: Callable[[Any], bool]
    allowed: str
    optional: bool = False


def optional(rule: Rule) -> Rule:
    return replace(rule, optional=True)


def integer(least: int, note: str = "") -> Rule:
    return Rule(at_least(least, integer=True), f"an integer >= {least}{note}")


def number(least: float, note: str = "", what: str = "a number") -> Rule:
    return Rule(at_least(least), f"{what} >= {least}{note}")


def within(low: float, high: float, closed: str, what: str = "a number") -> Rule:
    """A finite number between ``low`` and ``high``; ``closed``: left, right, both or neither end included."""
    left, right = closed in ("left", "both"), closed in ("right", "both")
    return Rule(lambda v: is_finite(v) and (low <= v if left else low < v) and (v <= high if right else v < high),
                f"{what} in {'[' if left else '('}{low:g}, {high:g}{']' if right else ')'}")


def choice(names: Collection[str], as_text: bool = False) -> Rule:
    """One of ``names`` (a registry's keys); ``as_text``: compared as text (trainer.precision's 32)."""
    names = tuple(names)
    return Rule(lambda v: (str(v) if as_text else v) in names,
                " or ".join(names) if len(names) == 2 else f"one of {', '.join(names)}")


def auto_or(rule: Rule) -> Rule:
    return Rule(lambda v: v == "auto" or rule.test(v), f"auto or {rule.allowed}")


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
SEED = Rule(is_seed, f"an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]")
NON_NEGATIVE = number(0)
OFF = " (0 = off)"
FRACTION = within(0, 1, "neither", what="a fraction")

LIMIT = Rule(lambda limit: (is_int(limit) and limit >= 1) or (isinstance(limit, float) and 0 < limit <= 1),
             "an integer >= 1 (batches) or a fraction in (0, 1] (of an epoch's batches; 1.0 = all)")

# Every key's rule, in the order validate meets them (the first mistake is the one reported).
CONSTRAINTS: dict[str, Rule] = {
    "model.hidden_sizes": Rule(lambda sizes: is_list(sizes) and all(is_int(s) and s > 0 for s in sizes),
                               "a list of positive integers, e.g. [128,64] ([] for a linear model)"),
    "model.dropout": within(0, 1, "left"),
    "model.init": choice(schema.INITS),
    "model.bias": optional(BOOLEAN),
    "model.norm": optional(choice(schema.NORMS)),
    "model.residual": optional(BOOLEAN),
    "head.name": choice(schema.HEADS),
    "loss.name": choice(schema.LOSSES),
    "loss.label_smoothing": optional(within(0, 1, "both")),
    "loss.pos_weight": optional(Rule(lambda w: w is None or (is_finite(w) and w > 0), "a positive number or null")),
    "loss.class_weights": optional(Rule(
        lambda w: w is None or w in ("none", "balanced") or (
            is_list(w) and len(w) > 0 and all(is_finite(x) and x > 0 for x in w)),
        "none, balanced or a list of positive weights, one per class, e.g. [1,3]")),
    "optimizer.lr": Rule(lambda lr: lr == "auto" or (is_finite(lr) and lr > 0),
                         "a finite positive number, e.g. 0.001, or auto (the learning-rate range test picks it)"),
    "optimizer.weight_decay": optional(NON_NEGATIVE),
    "optimizer.eps": optional(NON_NEGATIVE),
    "optimizer.betas": optional(Rule(lambda betas: is_list(betas) and len(betas) == 2
                                     and all(is_number(b) and 0 <= b < 1 for b in betas),
                                     "two numbers in [0, 1), e.g. [0.9,0.999]")),
    "optimizer.momentum": optional(NON_NEGATIVE),
    "optimizer.dampening": optional(Rule(is_finite, "a number")),
    "optimizer.nesterov": optional(BOOLEAN),
    "optimizer.amsgrad": optional(BOOLEAN),
    "optimizer.maximize": optional(BOOLEAN),
    "optimizer.fused": optional(Rule(lambda fused: fused == "auto" or fused is None or isinstance(fused, bool),
                                     "auto, true, false or null")),
    "trainer.max_epochs": integer(0),
    "trainer.batch_size": integer(1),
    "trainer.log_every_n_steps": auto_or(integer(1)),
    "trainer.seed": SEED,
    "trainer.device": Rule(lambda device: DEVICE.fullmatch(str(device)) is not None, "auto, cpu, cuda, cuda:N or mps"),
    "trainer.progress": Rule(lambda progress: str(progress) in ("auto", "True", "False"), "auto, true or false"),
    "trainer.checkpoint_every_n_steps": integer(0),
    "trainer.checkpoint_min_seconds": optional(number(0, what="a number of seconds")),
    "trainer.num_threads": optional(auto_or(integer(1))),
    "trainer.on_nonfinite": choice(schema.ON_NONFINITE),
    "trainer.compile": BOOLEAN,
    "trainer.cuda_graphs": BOOLEAN,
    "trainer.tf32": BOOLEAN,
    "trainer.precision": choice(schema.PRECISIONS, as_text=True),
    "trainer.gradient_clip_val": optional(number(0, OFF)),
    "trainer.gradient_clip_algorithm": optional(choice(schema.CLIP_ALGORITHMS)),
    "trainer.early_stopping.patience": optional(integer(0, OFF)),
    "trainer.early_stopping.min_delta": optional(NON_NEGATIVE),
    "trainer.overfit_batches": optional(integer(0, OFF)),
    "trainer.fast_dev_run": optional(BOOLEAN),
    "trainer.accumulate_grad_batches": optional(integer(1, " (1 = a step per batch)")),
    "trainer.ema_decay": optional(within(0, 1, "left", what="a decay (0 = off)")),
    "trainer.swa_start": optional(integer(0, " (the first epoch averaged; 0 = off)")),
    "trainer.deterministic": optional(BOOLEAN),
    "trainer.limit_train_batches": optional(LIMIT),
    "trainer.limit_val_batches": optional(LIMIT),
    "trainer.strategy": optional(choice(STRATEGIES)),
    "trainer.callbacks": optional(Rule(
        lambda paths: is_list(paths) and all(isinstance(p, str) and DOTTED_PATH.fullmatch(p) for p in paths),
        "a list of Callback classes as dotted import paths, e.g. [my_pkg.callbacks.PrintLoss]")),
    "diagnostics.histogram_every_n_steps": integer(0, OFF),
    "diagnostics.figure_every_n_steps": integer(0, OFF),
    "diagnostics.statistics_every": optional(auto_or(integer(1))),
    "scheduler.name": choice(schema.SCHEDULERS),
    "scheduler.warmup_steps": optional(integer(0, " (0 = no warmup)")),
    "scheduler.step_size": optional(integer(1, " (epochs between decays)")),
    "scheduler.gamma": optional(within(0, 1, "right")),
    "scheduler.eta_min": optional(NON_NEGATIVE),
    "scheduler.t_max": optional(Rule(lambda t: t is None or at_least(1, integer=True)(t),
                                     "null (the run's steps) or an integer >= 1")),
    "scheduler.max_lr": optional(Rule(lambda lr: lr is None or lr == "auto" or (is_finite(lr) and lr > 0),
                                      "null (optimizer.lr), a positive number or auto (the range test's lr)")),
    "scheduler.pct_start": optional(FRACTION),
    "scheduler.div_factor": optional(number(1)),
    "scheduler.final_div_factor": optional(number(1)),
    "scheduler.anneal_strategy": optional(choice(schema.ANNEAL_STRATEGIES)),
    "scheduler.factor": optional(within(0, 1, "neither")),
    "scheduler.patience": optional(integer(0, " (epochs without improvement)")),
    "scheduler.threshold": optional(NON_NEGATIVE),
    "scheduler.min_lr": optional(NON_NEGATIVE),
    "data.val_fraction": within(0, 1, "left", what="a fraction (0 = no validation split)"),
    "data.test_fraction": within(0, 1, "left", what="a fraction (0 = no test split)"),
    "data.cv_folds": optional(Rule(lambda folds: is_int(folds) and (folds == 0 or folds >= 2),
                                   "0 (one run) or a number of folds >= 2")),
    "data.split_seed": optional(SEED),
    "data.seed": optional(SEED),  # the generator of a synthetic set
    "data.standardize": optional(BOOLEAN),
    "data.stream": optional(BOOLEAN),
    "data.shuffle_buffer": optional(integer(1, " (rows the stream's shuffle holds)")),
    "data.eval_rows": optional(Rule(lambda rows: rows is None or at_least(1, integer=True)(rows),
                                    "null (every row) or an integer >= 1 (rows a stream's evaluation samples)")),
    "data.standardize_target": optional(BOOLEAN),
    "data.split": optional(Rule(lambda split: split in ("official", "pooled"),  # torchvision sets
                                "official (the official test set) or pooled (train and test pooled, split by "
                                "fractions)")),
    "data.categorical": optional(Rule(lambda value: value in ("auto", "none") or (
        OmegaConf.is_list(value) and all(isinstance(name, str) for name in value)),
        "auto, none, or a list of feature columns to one-hot encode, e.g. [color]")),
    "data.val_path": optional(Rule(lambda path: path is None or (isinstance(path, str) and bool(path.strip())),
                                   "a table file (.csv, .tsv, .parquet, .feather), or null to carve the split "
                                   "from data.path")),
    "objective.metric": Rule(lambda metric: isinstance(metric, str) and metric != "",
                             "a validation metric: loss, accuracy, rmse, mae or r2"),
    "objective.mode": choice(schema.OBJECTIVE_MODES),
}
CONSTRAINTS["data.test_path"] = CONSTRAINTS["data.val_path"]  # a table's given splits


def check_rules(cfg: DictConfig, group: str) -> None:
    """Check every key of ``group`` (``trainer``, ``data``, ...) against its rule in CONSTRAINTS."""
    for key, rule in CONSTRAINTS.items():
        if key.startswith(f"{group}.") and not (rule.optional and OmegaConf.select(cfg, key, default=ABSENT) is ABSENT):
            check(cfg, key, rule.test, rule.allowed)


def validate(cfg: DictConfig) -> None:
    """Check the values a run needs; raise ConfigError on the first one that cannot work."""
    check_resolves(cfg)
    check_known_keys(OmegaConf.to_container(cfg, resolve=False))
    check_loggers(cfg)
    validate_model(cfg)
    validate_activation(cfg)
    check_rules(cfg, "head")
    validate_loss(cfg)
    for group in ("trainer", "diagnostics"):
        check_rules(cfg, group)
    validate_remedies(cfg)
    validate_strategy(cfg)
    validate_scheduler(cfg)
    validate_data(cfg)
    check_rules(cfg, "objective")
    validate_optimizer(cfg)  # last: it reads torch.optim's signatures, and a mistake above need not import torch
    wants_test = "auto" in (str(cfg.optimizer.lr), str(OmegaConf.select(cfg, "scheduler.max_lr", default=None)))
    if OmegaConf.select(cfg, "lr_find.run", default=False) or wants_test:
        from mlpkit.lr_finder import settings_of  # the range test's own keys

        settings_of(cfg)


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


# --- the rules between keys ---------------------------------------------------------------------
def validate_model(cfg: DictConfig) -> None:
    check_rules(cfg, "model")
    if OmegaConf.select(cfg, "model.residual", default=False):
        from mlpkit.model import no_residual_layer, residual_layers

        if not residual_layers(list(cfg.model.hidden_sizes)):
            raise ConfigError(*no_residual_layer(list(cfg.model.hidden_sizes)))


def validate_activation(cfg: DictConfig) -> None:
    from mlpkit.activations import resolve_activation

    name = read(cfg, "activation.name", "an activation name, e.g. relu")
    params = {k: v for k, v in cfg.activation.items() if k != "name"}
    resolve_activation(name, params)  # checks the parameters' names and values


def validate_loss(cfg: DictConfig) -> None:
    check_rules(cfg, "loss")
    class_weights = OmegaConf.select(cfg, "loss.class_weights", default=None)
    if class_weights not in (None, "none") and OmegaConf.select(cfg, "loss.pos_weight", default=None) is not None:
        raise ConfigError("loss.class_weights", class_weights, "none when loss.pos_weight is set",
                          "both weight the classes of a binary loss: class_weights=[w0,w1] weighs the positive "
                          "samples w1/w0 times the negative ones, like pos_weight=w1/w0")


def validate_optimizer(cfg: DictConfig) -> None:
    """The keys torch.optim checks when the optimizer is built, checked before any data loads."""
    check_optimizer_keys(OmegaConf.to_container(read(cfg, "optimizer", "an optimizer group, e.g. optimizer=adam"),
                                                resolve=True))
    check_rules(cfg, "optimizer")
    optimizer = cfg.optimizer
    momentum, dampening = optimizer.get("momentum", 0), optimizer.get("dampening", 0)
    if optimizer.get("nesterov") and (momentum <= 0 or dampening != 0):
        given = f"optimizer.momentum={momentum}" if momentum <= 0 else f"optimizer.dampening={dampening}"
        raise ConfigError("optimizer.nesterov", "true", f"false with {given}: Nesterov momentum needs "
                          "momentum > 0 and dampening 0")


def validate_strategy(cfg: DictConfig) -> None:
    """trainer.strategy against how the run was started (torchrun or not); under ddp one device per
    rank, and no cross-validation (its folds are runs of their own: one torchrun each)."""
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="auto")
    if resolve_strategy(strategy) != "ddp":
        return
    check_ddp_device(OmegaConf.select(cfg, "trainer.device", default="auto"))
    folds = OmegaConf.select(cfg, "data.cv_folds", default=0)
    if folds and OmegaConf.select(cfg, "data.cv_fold", default=None) is None:
        raise ConfigError("data.cv_folds", folds, "0 with trainer.strategy=ddp",
                          "start each fold as a torchrun run of its own: data.cv_fold=<i>")


def validate_remedies(cfg: DictConfig) -> None:
    """A dev run takes one batch of each split: overfitting N batches would contradict it."""
    if OmegaConf.select(cfg, "trainer.fast_dev_run", default=False) and \
            OmegaConf.select(cfg, "trainer.overfit_batches", default=0):
        raise ConfigError("trainer.overfit_batches", cfg.trainer.overfit_batches,
                          "0 with trainer.fast_dev_run=true (a dev run takes one batch of each split)")


def validate_scheduler(cfg: DictConfig) -> None:
    """The scheduler group (absent from a checkpoint written before it existed: no schedule)."""
    if OmegaConf.select(cfg, "scheduler", default=None) is None:
        return
    check_rules(cfg, "scheduler")
    if cfg.scheduler.name == "onecycle" and OmegaConf.select(cfg, "scheduler.warmup_steps", default=0):
        raise ConfigError("scheduler.warmup_steps", cfg.scheduler.warmup_steps, "0 with scheduler=onecycle",
                          "onecycle warms up itself: set scheduler.pct_start")


def validate_data(cfg: DictConfig) -> None:
    check_rules(cfg, "data")
    fractions = cfg.data.val_fraction + cfg.data.test_fraction
    require(fractions < 1, "data.val_fraction + data.test_fraction", fractions,
            "a sum below 1, leaving samples to train on")
    if cfg.data.val_fraction == 0 and not OmegaConf.select(cfg, "data.val_path", default=None):
        refuse_without_validation(cfg)
    if OmegaConf.select(cfg, "data.stream", default=False):
        refuse_with_stream(cfg)


def refuse_with_stream(cfg: DictConfig) -> None:
    """data.stream=true with a setting that needs the training rows held (a fixed set of batches, the
    range test's random batches): one line naming it."""
    held = [(key, value) for key, value in (
        ("trainer.overfit_batches", OmegaConf.select(cfg, "trainer.overfit_batches", default=0)),
        ("lr_find.run", OmegaConf.select(cfg, "lr_find.run", default=False)),
        ("optimizer.lr", "auto" if str(cfg.optimizer.lr) == "auto" else None),
    ) if value]
    if held:
        key, value = held[0]
        raise ConfigError(key, value, "its default with data.stream=true", "it reads the training rows at random, "
                          "which a stream does not hold; run it on an in-memory sample of the table")


def refuse_without_validation(cfg: DictConfig) -> None:
    """data.val_fraction=0 (no validation split: the run trains on every row and watches its training
    loss) with a setting that watches validation metrics: one line naming both."""
    needs = [(key, value) for key, value, watches in (
        ("trainer.early_stopping.patience", OmegaConf.select(cfg, "trainer.early_stopping.patience", default=0),
         lambda patience: bool(patience)),
        ("scheduler", OmegaConf.select(cfg, "scheduler.name", default="none"), lambda name: name == "plateau"),
        ("objective.metric", cfg.objective.metric, lambda metric: metric != "loss"),
    ) if watches(value)]
    if needs:
        key, value = needs[0]
        raise ConfigError("data.val_fraction", 0, "a fraction in (0, 1) with " f"{key}={value}",
                          f"{key} watches the validation split, which data.val_fraction=0 leaves out (the run "
                          "then watches its training loss): give data.val_fraction=0.15, or turn "
                          f"{key} off")


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
        value = next((o.partition("=")[2] for o in overrides if o.lstrip("+~").split("=")[0] == full_key), "")
        refusal = _refused_by_schema(error.__cause__, full_key, value, overrides)
        if refusal is not None:
            return str(refusal)
        parent, _, key = full_key.rpartition(".")
        others = [o for o in overrides if o.lstrip("+~").split("=")[0] != full_key]
        names = _keys_of(parent, others, config_name)
        known = ", ".join(names)
        allowed = (f"a key of {parent}: {known}" if parent else f"one of {known}") if known else "an existing key"
        nearest = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f" (did you mean {parent + '.' if parent else ''}{nearest[0]}?)" if nearest else ""
        return f"{full_key}={value} is not valid: {key!r} is not a config key; expected {allowed}{hint}"
    return None


def _refused_by_schema(cause: BaseException | None, full_key: str, value: str, overrides: list[str]
                       ) -> ConfigError | None:
    """What the groups' schemas refuse at composition, said as validate would: a key deleted
    (``~trainer.seed``: a schema keeps all its keys) or one value given for a group of keys
    (``trainer.early_stopping=5``); None for any other error."""
    from omegaconf.errors import ConfigTypeError, ValidationError

    if isinstance(cause, ConfigTypeError) and f"~{full_key}" in (o.split("=")[0] for o in overrides):
        rule = CONSTRAINTS.get(full_key)
        return MissingKeyError(full_key, rule.allowed if rule else "a value (a key of the schema can be set, "
                               "not removed)")
    keys = [key for key in CONSTRAINTS if key.startswith(f"{full_key}.")]
    if isinstance(cause, ValidationError) and keys:
        return ConfigError(full_key, value, f"a value for each of its keys: {', '.join(keys)}, "
                           f"e.g. {keys[0]}=1")
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

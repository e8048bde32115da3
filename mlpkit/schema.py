"""Structured configs for the groups trainer, model, diagnostics, loss and scheduler: every key and
its default written once, as a dataclass field.

Each dataclass is stored in Hydra's ConfigStore (``register``, run on import) and is the first entry
of its YAML file's defaults list (Hydra 1.3's "Structured Config schema" pattern), e.g.
configs/trainer/default.yaml starts with ``defaults: [/trainer_schema@_here_, _self_]``. The YAML
files repeat the keys with a one-line comment each, for the reader (tests/test_schema.py holds them
equal); a key a YAML file or an experiment misspells fails at composition. The schemas are stored
without a group, so ``--help`` lists no extra choice.

Every field is typed ``Any``: OmegaConf's own conversion would turn ``loss.label_smoothing=2`` into
2.0 and ``model.bias=yes`` into true, and refuse ``trainer.batch_size=abc`` in its own words at
composition. The types and ranges live in ``mlpkit.config.CONSTRAINTS``, whose one-line messages name
the key, the value as typed and what is allowed.

``with_defaults`` gives a run saved before a key existed that key's default. The choice lists here
are the builders' registries (``mlpkit.model`` builds norms and inits from them); no torch is
imported, so ``python train.py --help`` stays quick.
"""
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpkit.verdicts import Thresholds

# model.init -> the torch.nn.init function that fills the Linear weights (default: torch's own)
INITS = {"default": None, "xavier_uniform": "xavier_uniform_", "xavier_normal": "xavier_normal_",
         "kaiming_uniform": "kaiming_uniform_", "kaiming_normal": "kaiming_normal_", "orthogonal": "orthogonal_"}
# model.norm -> the torch.nn layer between each hidden Linear and its activation (none: no layer)
NORMS = {"none": None, "batch": "BatchNorm1d", "layer": "LayerNorm"}
HEADS = ("auto", "softmax", "sigmoid", "identity")  # head.name (configs/head/); auto: from the loss and the task
OBJECTIVE_MODES = ("auto", "min", "max")  # objective.mode (auto: the metric's own, METRIC_MODES)
# Which way each validation metric improves: what objective.mode=auto means for it.
METRIC_MODES = {
    "loss": "min", "accuracy": "max", "balanced_accuracy": "max", "f1_macro": "max", "roc_auc": "max",
    "log_loss": "min", "rmse": "min", "mae": "min", "r2": "max",
}


def objective_mode(metric: str, mode: str) -> str:
    """``objective.mode`` as min or max: ``auto`` is the metric's own direction (a metric a source or a
    user added without one is minimised)."""
    return METRIC_MODES.get(str(metric), "min") if str(mode) == "auto" else str(mode)
PRECISIONS = ("32", "bf16-mixed", "16-mixed")  # trainer.precision, as text (the YAML's 32 is a number)
CLIP_ALGORITHMS = ("norm", "value")  # trainer.gradient_clip_algorithm
ON_NONFINITE = ("stop", "skip")  # trainer.on_nonfinite
ANNEAL_STRATEGIES = ("cos", "linear")  # scheduler.anneal_strategy (onecycle)


@dataclass
class EarlyStopping:
    patience: Any = 0
    min_delta: Any = 0.0


@dataclass
class Trainer:
    """configs/trainer/default.yaml: the training loop."""

    max_epochs: Any = 20
    batch_size: Any = 64
    seed: Any = 0
    device: Any = "auto"
    log_every_n_steps: Any = "auto"
    progress: Any = "auto"
    checkpoint_every_n_steps: Any = 0
    checkpoint_min_seconds: Any = 10
    on_nonfinite: Any = "stop"
    num_threads: Any = "auto"
    precision: Any = 32
    tf32: Any = True
    compile: Any = False
    cuda_graphs: Any = False
    gradient_clip_val: Any = 0
    gradient_clip_algorithm: Any = "norm"
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    overfit_batches: Any = 0
    fast_dev_run: Any = False
    callbacks: Any = field(default_factory=list)  # dotted import paths of Callback classes
    accumulate_grad_batches: Any = 1
    ema_decay: Any = 0.0
    swa_start: Any = 0
    deterministic: Any = False
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    strategy: Any = "auto"


@dataclass
class Model:
    """configs/model/mlp.yaml: the network between the data's inputs and outputs."""

    hidden_sizes: Any = field(default_factory=lambda: [128, 64])
    dropout: Any = 0.0
    init: Any = "default"
    bias: Any = True
    norm: Any = "none"
    residual: Any = False


@dataclass
class Diagnostics:
    """configs/diagnostics/default.yaml; the verdicts' thresholds are mlpkit.verdicts.Thresholds'."""

    histogram_every_n_steps: Any = 0
    figure_every_n_steps: Any = 100
    statistics_every: Any = "auto"
    vanishing_ratio: Any = Thresholds.vanishing_ratio
    patience: Any = Thresholds.patience
    exploding_growth: Any = Thresholds.exploding_growth
    dead_fraction: Any = Thresholds.dead_fraction
    saturated_derivative: Any = Thresholds.saturated_derivative


# --- loss: one schema per choice (configs/loss/<name>.yaml), each with only the keys it reads ---------
@dataclass
class MeanSquaredError:
    name: Any = "mse"


@dataclass
class WeightedLoss:
    """auto: the loss natural for the task."""

    name: Any = "auto"
    class_weights: Any = "none"


@dataclass
class CrossEntropy(WeightedLoss):
    name: Any = "ce"
    label_smoothing: Any = 0.0


@dataclass
class BinaryCrossEntropy(WeightedLoss):
    name: Any = "bce"
    pos_weight: Any = None


LOSSES: dict[str, type] = {"auto": WeightedLoss, "ce": CrossEntropy, "bce": BinaryCrossEntropy,
                           "mse": MeanSquaredError}


# --- scheduler: one schema per choice (configs/scheduler/<name>.yaml) ----------------------------------
@dataclass
class ConstantSchedule:
    name: Any = "none"
    warmup_steps: Any = 0


@dataclass
class StepSchedule(ConstantSchedule):
    name: Any = "step"
    step_size: Any = 10
    gamma: Any = 0.1


@dataclass
class CosineSchedule(ConstantSchedule):
    name: Any = "cosine"
    eta_min: Any = 0.0
    t_max: Any = None


@dataclass
class OneCycleSchedule(ConstantSchedule):
    name: Any = "onecycle"
    max_lr: Any = None
    pct_start: Any = 0.3
    div_factor: Any = 25.0
    final_div_factor: Any = 10000.0
    anneal_strategy: Any = "cos"


@dataclass
class PlateauSchedule(ConstantSchedule):
    name: Any = "plateau"
    factor: Any = 0.1
    patience: Any = 10
    threshold: Any = 0.0001
    min_lr: Any = 0.0


SCHEDULERS: dict[str, type] = {"none": ConstantSchedule, "step": StepSchedule, "cosine": CosineSchedule,
                               "onecycle": OneCycleSchedule, "plateau": PlateauSchedule}

GROUPS: dict[str, type] = {"trainer": Trainer, "model": Model, "diagnostics": Diagnostics}  # one schema each
CHOICES: dict[str, dict[str, type]] = {"loss": LOSSES, "scheduler": SCHEDULERS}  # one schema per `name`
ABSENT_MEANS_DEFAULT = ("scheduler",)  # a run saved before the group existed had no schedule: `none`


def schema_name(group: str, choice: str | None = None) -> str:
    """The ConfigStore name a YAML file's defaults list names: ``trainer_schema``, ``loss_ce_schema``."""
    return f"{group}_{choice}_schema" if choice is not None else f"{group}_schema"


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent); done on import, before any compose."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in GROUPS.items():
        store.store(name=schema_name(group), node=schema, provider="mlpkit")
    for group, choices in CHOICES.items():
        for choice, schema in choices.items():
            store.store(name=schema_name(group, choice), node=schema, provider="mlpkit")


def schema_of(group: str, node: Any) -> type | None:
    """The dataclass for a group's saved node (by its ``name`` for loss and scheduler); None if unknown."""
    if group in GROUPS:
        return GROUPS[group]
    name = node.get("name") if isinstance(node, (dict, DictConfig)) else None
    return CHOICES[group].get(name) if isinstance(name, str) else None


def defaults(schema: type) -> dict[str, Any]:
    """A schema's keys and defaults as plain values (nested groups as dicts)."""
    return OmegaConf.to_container(OmegaConf.structured(schema))


def with_defaults(config: Any) -> DictConfig:
    """A copy of a saved run's config (a DictConfig or a plain mapping) in which every key of the
    groups trainer, model, diagnostics, loss and scheduler that it lacks takes its default; a run
    saved before a key existed then reads as it ran. Nothing it holds is changed, and nothing is
    checked (``mlpkit.config.validate`` does that next): a group it lacks stays absent, but for the
    scheduler (none), and a loss or scheduler of an unknown name gets nothing."""
    saved = OmegaConf.create(OmegaConf.to_container(config, resolve=False) if OmegaConf.is_config(config)
                             else dict(config))
    filled: dict[str, Any] = {}
    for group in (*GROUPS, *CHOICES):
        node = saved.get(group)
        if node is None and group in ABSENT_MEANS_DEFAULT:
            node = {"name": next(iter(CHOICES[group]))}
        schema = schema_of(group, node) if isinstance(node, (dict, DictConfig)) else None
        if schema is not None:
            filled[group] = defaults(schema)
    return OmegaConf.merge(filled, saved)


register()

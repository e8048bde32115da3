"""Head + loss pairing for a task: the loss in logits space, predictions through the head, metrics."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlpkit.errors import ConfigError, show_value
from mlpkit.metrics import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    classification_metrics,
    regression_metrics,
)

TASKS = ("binary", "multiclass", "regression")
NATURAL_PAIR = {"multiclass": ("softmax", "ce"), "binary": ("sigmoid", "bce"), "regression": ("identity", "mse")}
HEAD_FOR_LOSS = {"ce": "softmax", "bce": "sigmoid"}
LOSS_FOR_HEAD = {"softmax": "ce", "sigmoid": "bce", "identity": "mse"}


CLASS_WEIGHTS = "loss.class_weights"  # none | balanced | [w1,w2,...]; for ce and bce


@dataclass
class Objective:
    """What the trainer optimises and reports. ``loss`` takes logits; ``predict`` applies the head.

    ``loss`` is the loss the optimizer minimises, with ``loss.class_weights`` or ``loss.pos_weight``;
    ``plain_loss`` (when weights are set) is the same loss unweighted, which ``metrics`` reports, so
    that runs with different weights compare on one scale (as Keras treats ``class_weight``).
    """

    head: str
    loss_name: str
    task: str
    out_features: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    target_mean: float = 0.0
    target_std: float = 1.0
    plain_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    class_weights: list[float] | None = None  # resolved per class, for the run's printout

    @property
    def metric_names(self) -> tuple[str, ...]:
        return CLASSIFICATION_METRICS if self.is_classification else REGRESSION_METRICS

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities (softmax/sigmoid head) or values in the target's original units, float64:
        float32 holds a target mean of 1e8 in steps of 8 (mps has no float64: there on the CPU).
        Nothing per step calls it; the metrics stay in standardised units."""
        if self.head == "softmax":
            return logits.softmax(dim=-1)
        if self.head == "sigmoid":
            return logits.sigmoid()
        values = logits.cpu() if logits.device.type == "mps" else logits
        return values.double() * self.target_std + self.target_mean

    def predict_class(self, logits: torch.Tensor) -> torch.Tensor:
        if self.head == "sigmoid":
            return (logits.squeeze(-1) > 0).long()
        return logits.argmax(dim=-1)

    def log_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """log p of each class, one column each (a sigmoid head's as log(1 - p), log p)."""
        if self.head == "sigmoid":
            return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=-1)
        return logits.log_softmax(dim=-1)

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``metric_names`` as 0-d tensors on the device (the caller decides when to pull them to the
        host); their definitions: ``mlpkit.metrics``."""
        values = {"loss": (self.plain_loss or self.loss)(logits, targets).detach()}
        if not self.is_classification:
            values.update(regression_metrics(logits, targets, self.target_std))
            return values
        log_probabilities = self.log_probabilities(logits)
        values.update(classification_metrics(self.predict_class(logits), targets, log_probabilities,
                                             self.ranking_scores(logits, log_probabilities)))
        return values

    def ranking_scores(self, logits: torch.Tensor, log_probabilities: torch.Tensor) -> torch.Tensor:
        """What ranks the rows as the probabilities do, without their float32 saturation (which ties
        rows the logits tell apart): a binary task's one column, the positive class's logit margin."""
        if self.head == "sigmoid":
            return logits
        if self.out_features == 2:
            return logits[:, 1:] - logits[:, :1]
        return log_probabilities


def resolve_pair(head: str, loss: str, task: str) -> tuple[str, str]:
    """Fill in ``auto`` head/loss from each other and the task."""
    if head == "auto" and loss == "auto":
        return NATURAL_PAIR[task]
    if head == "auto":
        head = HEAD_FOR_LOSS.get(loss, NATURAL_PAIR[task][0])
    if loss == "auto":
        loss = LOSS_FOR_HEAD[head]
    return head, loss


def check_pair(head: str, loss: str, task: str, dataset: str, n_classes: int) -> None:
    """Stop on combinations that cannot train, with the keys and the valid choices."""
    natural = "head={} loss={}".format(*NATURAL_PAIR[task])
    if task == "regression":
        if head != "identity" or loss != "mse":
            raise ConfigError(
                "head/loss", f"{head}/{loss}", "head=identity loss=mse for a regression dataset",
                f"data={dataset} has continuous targets; a squashing head or a classification loss "
                "cannot fit them",
            )
        return
    if head == "identity":
        raise ConfigError("head", head, "head=softmax or head=sigmoid for classification",
                          f"data={dataset} is {task} classification; try {natural}")
    if loss == "ce" and head != "softmax":
        raise ConfigError("loss", loss, "head=softmax with loss=ce (or head=sigmoid with loss=bce)",
                          "cross-entropy is computed on logits through log-softmax")
    if loss == "bce" and head != "sigmoid":
        raise ConfigError("loss", loss, "head=sigmoid with loss=bce (or head=softmax with loss=ce)",
                          f"binary cross-entropy scores one probability per output; data={dataset} "
                          f"with head=softmax has {n_classes} competing classes")
    if head == "sigmoid" and task == "multiclass":
        raise ConfigError("head", head, "head=softmax for a multiclass dataset",
                          f"data={dataset} has {n_classes} classes; try {natural}")


def build_objective(
    head: str, loss: str, task: str, dataset: str, n_classes: int = 0, n_targets: int = 1,
    label_smoothing: float = 0.0, pos_weight: float | None = None,
    target_mean: float = 0.0, target_std: float = 1.0,
    class_weights: Any = None, train_targets: torch.Tensor | None = None,
) -> Objective:
    """The head/loss pair for the task, checked, with the output size the model needs.

    ``class_weights`` (``loss.class_weights``: none, balanced or one weight per class) weight the
    training loss; ``balanced`` is computed from ``train_targets``, the training split's labels."""
    if task not in TASKS:
        raise ConfigError("data.task", task, f"one of {', '.join(TASKS)}")
    head, loss = resolve_pair(head, loss, task)
    check_pair(head, loss, task, dataset, n_classes)
    if task == "regression":
        out_features = n_targets
    else:
        out_features = 1 if head == "sigmoid" else n_classes
    weights = resolve_class_weights(class_weights, loss, dataset, n_classes, train_targets)
    weighted = _loss_function(head, loss, task, n_classes, label_smoothing, pos_weight, weights)
    plain = None
    if weights is not None or (loss == "bce" and pos_weight is not None):
        plain = _loss_function(head, loss, task, n_classes, label_smoothing, None, None)
    return Objective(head, loss, task, out_features, weighted, target_mean, target_std, plain, weights)


def resolve_class_weights(setting: Any, loss: str, dataset: str, n_classes: int,
                          train_targets: torch.Tensor | None) -> list[float] | None:
    """One weight per class from ``loss.class_weights``, or None: ``balanced`` is sklearn's
    n_samples / (n_classes * count of the class), counted on the training split only."""
    if setting is None or setting == "none":
        return None
    if loss not in ("ce", "bce"):
        raise ConfigError(CLASS_WEIGHTS, setting, f"none with loss={loss}: class weights apply to ce and bce")
    if setting == "balanced":
        from sklearn.utils.class_weight import compute_class_weight  # only a balanced run needs sklearn here

        if train_targets is None:
            raise ConfigError(CLASS_WEIGHTS, setting, "a list of weights when no training split is given")
        labels = train_targets.cpu().numpy().astype(int)
        counts = torch.bincount(torch.as_tensor(labels), minlength=n_classes).tolist()
        if min(counts) == 0:
            raise ConfigError(CLASS_WEIGHTS, setting, "none or a list of weights",
                              f"class {counts.index(0)} of data={dataset} has no sample in the training "
                              "split, so its balanced weight would be infinite")
        return compute_class_weight("balanced", classes=np.arange(n_classes), y=labels).tolist()
    weights = list(setting)
    if len(weights) != n_classes:
        raise ConfigError(CLASS_WEIGHTS, show_value(weights), f"a list of {n_classes} weights, one per class of "
                          f"data={dataset} ({len(weights)} given), or none or balanced")
    return [float(w) for w in weights]


def _placed(values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``values`` on a tensor's device and in its dtype, copied there once: a host-to-device copy
    each step would wait for the device."""
    copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.device, tensor.dtype)
        if key not in copies:
            copies[key] = values.to(*key)
        return copies[key]

    return like


def _loss_function(head, loss, task, n_classes, label_smoothing, pos_weight, class_weights: Sequence[float] | None):
    weights = None if class_weights is None else _placed(torch.tensor(class_weights, dtype=torch.float32))
    if loss == "ce":
        if weights is None:
            return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        return lambda logits, y: F.cross_entropy(logits, y, weight=weights(logits), label_smoothing=label_smoothing)
    if loss == "bce":
        positive = None if pos_weight is None else _placed(torch.tensor(float(pos_weight)))

        def bce(logits, y):
            w = None if positive is None else positive(logits)
            if weights is None:
                return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.to(logits.dtype), pos_weight=w)
            # each sample weighted by its class's weight, normalised as cross_entropy's weighted mean
            sample = weights(logits)[y.long()]
            each = F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.to(logits.dtype), reduction="none")
            return (each * sample).sum() / sample.sum()

        return bce
    if task == "regression":
        return F.mse_loss
    if head == "softmax":  # Brier score: probabilities against one-hot targets
        return lambda logits, y: F.mse_loss(logits.softmax(-1), F.one_hot(y, n_classes).to(logits.dtype))
    return lambda logits, y: F.mse_loss(logits.squeeze(-1).sigmoid(), y.to(logits.dtype))

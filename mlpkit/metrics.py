"""The metrics of a whole split, computed on the device as 0-d tensors (no host synchronisation:
no ``.item()``, no data-dependent shapes), and which way each one improves.

Classification (see ``classification_metrics`` for what each is computed from):

- ``accuracy``: the fraction of rows whose predicted class is the true one.
- ``balanced_accuracy``: the mean recall over the classes present in the split's targets; a class
  with no row in the split is left out of the mean, as ``sklearn.metrics.balanced_accuracy_score``
  does (it is not counted as a recall of 0).
- ``f1_macro``: the unweighted mean of the per-class F1 ``2 tp / (2 tp + fp + fn)`` over the classes
  that occur in the targets or the predictions (sklearn's ``f1_score(average="macro",
  zero_division=0)`` with its default labels): a class that is predicted but absent, or present
  but never predicted, counts 0; a class neither present nor predicted is left out.
- ``roc_auc``: the area under the ROC curve from the ranks of the scores, tied scores sharing their
  average rank (the Mann-Whitney statistic; equal to sklearn's ``roc_auc_score``). Binary: of the
  positive class; multiclass: one-vs-rest, averaged over the classes (macro). A class is left out of
  the average when the split has no row of it (its AUC is undefined; sklearn would return NaN for
  the whole average). With fewer than two classes in the split no AUC is defined and the value is
  NaN: such a NaN says the split is too small, not that the model broke (``UNDEFINED_AS_NAN``).
- ``log_loss``: the mean cross-entropy of the predicted probabilities, whatever the training loss
  (also with ``loss=mse`` or label smoothing), each probability clipped to ``[eps, 1 - eps]`` with
  the machine epsilon of its dtype, as ``sklearn.metrics.log_loss`` clips.

Regression, in standardised units scaled by the target's std: ``rmse``, ``mae``, ``r2``.
"""
from __future__ import annotations

import math

import torch

CLASSIFICATION_METRICS = ("loss", "accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss")
REGRESSION_METRICS = ("loss", "rmse", "mae", "r2")

from mlpkit.schema import METRIC_MODES  # noqa: E402,F401  (which way each metric improves: the config's table)

# Metrics that are NaN when the split cannot define them (roc_auc with one class present): not a
# broken model, so the final non-finite check leaves them out.
UNDEFINED_AS_NAN = frozenset({"roc_auc"})


def wide(values: torch.Tensor) -> torch.Tensor:
    """float64 where the device has it (mps has not)."""
    return values.float() if values.device.type == "mps" else values.double()


def confusion_matrix(targets: torch.Tensor, predicted: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts, rows the true class and columns the predicted one. A scatter-add, not ``bincount``,
    whose output size depends on the data (a host synchronisation on CUDA)."""
    cells = targets.long() * n_classes + predicted.long()
    counts = torch.zeros(n_classes * n_classes, dtype=torch.long, device=targets.device)
    return counts.scatter_add_(0, cells, torch.ones_like(cells)).reshape(n_classes, n_classes)


def balanced_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Mean recall over the classes present in the targets (an absent class's 0 / 0 is left out)."""
    confusion = wide(confusion)
    return (confusion.diagonal() / confusion.sum(dim=1)).nanmean()


def f1_macro(confusion: torch.Tensor) -> torch.Tensor:
    """Mean F1 = 2 tp / (2 tp + fp + fn) over the classes present in the targets or the predictions
    (a class in neither has 0 / 0 and is left out)."""
    confusion = wide(confusion)
    return (2 * confusion.diagonal() / (confusion.sum(dim=0) + confusion.sum(dim=1))).nanmean()


def doubled_ranks(ordered: torch.Tensor) -> torch.Tensor:
    """Twice the 1-based rank of each row's sorted values, tied values sharing their average rank
    (``scipy.stats.rankdata(method="average")``): a run of ties at sorted positions first..last ranks
    (first + last) / 2 + 1. Integers, so rank sums stay exact; linear after the sort, and without a
    data-dependent shape (``unique`` would have one)."""
    length = ordered.shape[1]
    positions = torch.arange(length, device=ordered.device)
    differs = ordered[:, 1:] != ordered[:, :-1]
    edge = torch.ones_like(ordered[:, :1], dtype=torch.bool)
    first = torch.where(torch.cat([edge, differs], dim=1), positions, 0).cummax(dim=1).values
    last = torch.where(torch.cat([differs, edge], dim=1), positions, length - 1).flip(1).cummin(dim=1).values.flip(1)
    return first + last + 2


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ROC AUC from ranks (Mann-Whitney): binary with one score column (the positive class's), else
    one-vs-rest macro over the classes that have rows in the split; NaN with none defined."""
    classes = torch.arange(max(scores.shape[1], 2), device=scores.device)
    classes = classes[1:] if scores.shape[1] == 1 else classes
    positive = targets.long().unsqueeze(0) == classes.unsqueeze(1)  # (classes, rows)
    ordered, order = scores.T.contiguous().sort(dim=1)  # a row per class: sorting along rows is the fast way
    doubled_rank_sums = (doubled_ranks(ordered) * positive.gather(1, order)).sum(dim=1)
    positives = positive.sum(dim=1)
    pairs = positives * (len(targets) - positives)
    areas = wide(doubled_rank_sums - positives * (positives + 1)) / wide(2 * pairs)
    return torch.where(pairs > 0, areas, math.nan).nanmean()


def log_loss(log_probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean -log of the true class's probability, clipped to [eps, 1 - eps] as sklearn clips the
    probability (here its logarithm: the same value, without rounding the probability first)."""
    eps = torch.finfo(log_probabilities.dtype).eps
    true_class = log_probabilities.gather(1, targets.long().unsqueeze(1))
    return -true_class.clamp(math.log(eps), math.log1p(-eps)).mean()


def classification_metrics(predicted: torch.Tensor, targets: torch.Tensor, log_probabilities: torch.Tensor,
                           scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """``predicted``: the class of each row; ``log_probabilities``: one column per class;
    ``scores``: what ranks the rows for roc_auc (the log-probabilities, or one column for binary)."""
    confusion = confusion_matrix(targets, predicted, log_probabilities.shape[1])
    return {
        "accuracy": (predicted == targets).float().mean(),
        "balanced_accuracy": balanced_accuracy(confusion),
        "f1_macro": f1_macro(confusion),
        "roc_auc": roc_auc(scores, targets),
        "log_loss": log_loss(log_probabilities, targets),
    }


def regression_metrics(outputs: torch.Tensor, targets: torch.Tensor, target_std: float) -> dict[str, torch.Tensor]:
    """In standardised units, scaled by the std: the error is the same, and float32 keeps its digits
    where it would round both values at a target mean of 1e8 (steps of 8); r2 has no units."""
    targets = targets.to(outputs.dtype)
    error = outputs - targets
    return {
        "rmse": error.pow(2).mean().sqrt() * target_std,
        "mae": error.abs().mean() * target_std,
        "r2": 1 - error.pow(2).sum() / (targets - targets.mean(dim=0)).pow(2).sum().clamp_min(1e-12),
    }

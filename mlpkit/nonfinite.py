"""The one rule for a non-finite loss, gradient or metric (``trainer.on_nonfinite``): ``skip`` the
step (the epoch's loss leaves it out), or ``stop`` the run at the first non-finite step, keeping the
last good checkpoint (exit 3). The trainer calls these wherever a value can be found non-finite:
a measured step, a skipped step's check, an epoch's losses, a checkpoint, the final metrics."""
from __future__ import annotations

import math

import torch

from mlpkit.errors import EXIT_NONFINITE, TrainingStopped
from mlpkit.metrics import UNDEFINED_AS_NAN

SKIPPED = "step %d: loss %s or a gradient is not finite; step skipped (trainer.on_nonfinite=skip)"


def stop_at_step(epoch_losses: torch.Tensor, step: int, next_batch: int, epoch: int,
                 layers: dict[str, dict[str, float]] | None = None) -> TrainingStopped:
    """The stop at the epoch's first non-finite batch loss (``epoch_losses``: the epoch's so far, the
    current step's ``step - next_batch`` steps after its first), naming the layers whose gradient is
    not finite."""
    bad_batches = (~torch.isfinite(epoch_losses)).nonzero().flatten().tolist()
    first = step - next_batch + bad_batches[0] if bad_batches else step
    bad_layers = [name for name, entry in (layers or {}).items() if not math.isfinite(entry.get("grad_norm", 0.0))]
    where = f"; gradients not finite in {', '.join(bad_layers)}" if bad_layers else ""
    return TrainingStopped(f"loss/train became non-finite at step {first} (epoch {epoch + 1}){where}. The last "
                           f"good checkpoint is kept; lower optimizer.lr, change model.init, or set "
                           f"trainer.on_nonfinite=skip", exit_code=EXIT_NONFINITE)


def stop_at_end(final: dict[str, dict[str, float]], skipped_steps: int, steps: int) -> TrainingStopped | None:
    """A run whose final metrics are not finite failed, whatever it skipped on the way; a metric that
    a split cannot define (``UNDEFINED_AS_NAN``: roc_auc with one class present) may be NaN."""
    bad = [f"{metric}/{split} {value}" for split, metrics in final.items() for metric, value in metrics.items()
           if not math.isfinite(value) and not (metric in UNDEFINED_AS_NAN and math.isnan(value))]
    if not bad:
        return None
    skipped = (f" after skipping {skipped_steps} of {steps} steps (trainer.on_nonfinite=skip)"
               if skipped_steps else "")
    return TrainingStopped(f"training ended with non-finite metrics ({', '.join(bad[:4])}){skipped}; lower "
                           "optimizer.lr or change model.init", exit_code=EXIT_NONFINITE)

"""The trainer's settings object, and the counts that follow from it: batches and rows per epoch,
the logging interval, an epoch's mean loss. ``mlpkit.assemble`` reads the settings from a config."""
from __future__ import annotations

import math
from dataclasses import dataclass

from mlpkit.errors import ConfigError

POINTS_PER_RUN = 50  # trainer.log_every_n_steps=auto: at least this many logged steps on every curve


@dataclass
class TrainerSettings:
    """What the loop needs besides its parts.

    ``precision="bf16-mixed"``: forward passes under bf16 autocast. ``compile`` (and ``cuda_graphs``):
    a torch.compile'd forward and loss with static shapes (each epoch's last partial batch is dropped;
    measured steps run eagerly). Sanity checks: ``overfit_batches`` (the same first N batches every
    epoch, unshuffled), ``fast_dev_run`` (one epoch of one batch, validation and test on one batch).
    ``config``: the run's resolved config, kept in every checkpoint."""

    max_epochs: int
    batch_size: int
    seed: int = 0
    log_every_n_steps: int | str = "auto"
    metric: str = "loss"  # the validation metric best.pt follows
    mode: str = "min"
    on_nonfinite: str = "stop"  # or "skip" (one host check per step)
    precision: str = "32"
    compile: bool = False
    cuda_graphs: bool = False
    overfit_batches: int = 0
    fast_dev_run: bool = False
    progress: bool = False
    config: dict | None = None
    accumulate_grad_batches: int = 1  # batches of batch_size rows whose gradients make one optimizer step
    limit_train_batches: int | float = 1.0  # steps per epoch: an int, or a fraction of the epoch's
    limit_val_batches: int | float = 1.0  # validation batches of batch_size rows: an int, or a fraction

    @property
    def step_rows(self) -> int:
        """Rows one optimizer step takes: ``batch_size`` x ``accumulate_grad_batches``."""
        return self.batch_size * self.accumulate_grad_batches

    @property
    def drop_last(self) -> bool:
        """Static shapes (compiled): every step sees batch_size rows."""
        return self.compile or self.cuda_graphs

    @property
    def epochs(self) -> int:
        return 1 if self.fast_dev_run else self.max_epochs

    def batches_per_epoch(self, rows: int) -> int:
        """Optimizer steps an epoch of ``rows`` training rows takes, each on ``step_rows`` rows (the
        sanity checks' few, or ``limit_train_batches``)."""
        batches = rows // self.step_rows if self.drop_last else math.ceil(rows / self.step_rows)
        limit = 1 if self.fast_dev_run else (self.overfit_batches or None)
        batches = batches if limit is None else min(batches, limit)
        return min(batches, limited(self.limit_train_batches, batches))

    def rows_per_epoch(self, rows: int) -> int:
        """Training rows one epoch steps on: all of them, or whole batches only when compiled (or
        the sanity checks' few batches, or the limited ones)."""
        stepped = self.batches_per_epoch(rows) * self.step_rows
        return stepped if self.drop_last else min(stepped, rows)

    def val_rows(self, rows: int) -> int:
        """Rows of a validation split each evaluation reads (``limit_val_batches``)."""
        return min(rows, limited(self.limit_val_batches, math.ceil(rows / self.batch_size)) * self.batch_size)

    def check_rows(self, rows: int) -> None:
        """A compiled step drops partial batches: the training rows must fill one."""
        if self.drop_last and rows < self.step_rows:
            raise ConfigError("trainer.batch_size", self.batch_size, f"at most {rows} (the training rows) when "
                              "trainer.compile or trainer.cuda_graphs drops partial batches"
                              + (" (times trainer.accumulate_grad_batches)" if self.accumulate_grad_batches > 1
                                 else ""))

    def total_steps(self, rows: int) -> int:
        return self.epochs * self.batches_per_epoch(rows)


def limited(limit: int | float, batches: int) -> int:
    """``limit_train_batches``/``limit_val_batches`` of ``batches``: an int is a count, a float a
    fraction (1.0: all; at least one batch)."""
    if isinstance(limit, float):
        return batches if limit >= 1.0 else max(1, math.floor(limit * batches))
    return min(int(limit), batches)


def log_interval(setting: int | str, total_steps: int) -> int:
    """``trainer.log_every_n_steps``: an integer, or ``auto`` (every step for runs under
    POINTS_PER_RUN steps, else as often as gives POINTS_PER_RUN points)."""
    if str(setting) == "auto":
        return max(1, total_steps // POINTS_PER_RUN)
    return int(setting)


def epoch_mean(batch_losses: list[float], batch_size: int, rows_seen: int) -> float:
    """The mean loss over an epoch's rows: a last, smaller batch weighs less. Steps skipped for a
    non-finite loss (NaN) do not count; NaN when every one was."""
    weights = [batch_size] * (len(batch_losses) - 1) + [rows_seen - batch_size * (len(batch_losses) - 1)]
    if all(math.isfinite(loss) for loss in batch_losses):
        *full, last = batch_losses
        return (math.fsum(full) * batch_size + last * weights[-1]) / rows_seen
    kept = [(loss, weight) for loss, weight in zip(batch_losses, weights) if math.isfinite(loss)]
    if not kept:
        return math.nan
    return math.fsum(loss * weight for loss, weight in kept) / math.fsum(weight for _, weight in kept)

"""``trainer.overfit_batches``: train on the same first N batches every epoch, unshuffled, then say
whether their loss went near zero (a net that cannot learn a few batches has a bug, not a tuning
problem). The batches are the trainer's (``TrainerSettings``); the verdict is this callback's."""
from __future__ import annotations

from typing import Any

from mlpkit.callbacks import Callback

OVERFIT_LOSS = 0.05  # the loss on those batches a net that can learn them goes below


class OverfitCheck(Callback):
    def on_fit_end(self, trainer: Any, final: dict[str, dict[str, float]]) -> None:
        """metrics.json's ``overfit_batches``: their loss, evaluated after training (dropout off)."""
        rows = trainer.rows_per_epoch()
        loss = trainer.evaluate(trainer.data.train.head(rows))["loss"]
        trainer.checks["overfit_batches"] = {"batches": trainer.batches_per_epoch(), "rows": rows, "loss": loss,
                                             "threshold": OVERFIT_LOSS, "reached": loss < OVERFIT_LOSS}

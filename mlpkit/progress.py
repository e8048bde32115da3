"""What a run shows of its epochs: a tqdm bar (``trainer.progress``: on a terminal or in a notebook)
or, without one, a log line per epoch. A callback the trainer always has."""
from __future__ import annotations

import logging
from typing import Any

from tqdm.auto import tqdm

from mlpkit.callbacks import Callback

log = logging.getLogger("mlpkit")


class EpochProgress(Callback):
    def __init__(self, bar: bool):
        self.shows_bar, self.bar = bar, None

    def on_fit_start(self, trainer: Any) -> None:
        if self.shows_bar:
            self.bar = tqdm(desc="epochs", unit="epoch", initial=trainer.epoch, total=trainer.max_epochs,
                            dynamic_ncols=True)

    def on_validation_end(self, trainer: Any, metrics: dict[str, float], improved: bool) -> None:
        entry = trainer.history[-1]
        summary = "  ".join(f"{k} {v:.4g}" for k, v in entry.items() if "/" in k)
        if "loss/train_epoch" not in entry:  # every step of the epoch was skipped, nothing trained
            summary = f"every step skipped (trainer.on_nonfinite=skip)  {summary}"
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix_str(summary)
        else:
            log.info("epoch %d/%d  %s", entry["epoch"], trainer.max_epochs, summary)

    def on_fit_end(self, trainer: Any, final: dict[str, dict[str, float]]) -> None:
        self.close()

    def on_stop(self, trainer: Any, stop: Exception) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

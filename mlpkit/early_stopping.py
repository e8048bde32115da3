"""``trainer.early_stopping``: stop once the validation metric has not beaten its best by more than
``min_delta`` for ``patience`` epochs (0: never). Its state travels in checkpoints, so a resumed run
stops where the uninterrupted one would have."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlpkit.checkpoint import is_better


@dataclass
class EarlyStopping:
    patience: int = 0
    min_delta: float = 0.0
    mode: str = "min"  # "min" or "max": the direction the metric improves in
    best: float | None = None  # the value later epochs must beat by min_delta
    wait: int = 0  # epochs since the last improvement
    stopped: dict[str, Any] | None = None  # metrics.json's stopped_early, once it stopped

    def update(self, value: float, *, epoch: int, max_epochs: int, best_epoch: int | None, metric: str) -> None:
        """After an epoch's validation: count an epoch without improvement, or start again."""
        if not self.patience:
            return
        target = None if self.best is None else (
            self.best - self.min_delta if self.mode == "min" else self.best + self.min_delta)
        if is_better(value, target, self.mode):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.wait >= self.patience and epoch < max_epochs:
            self.stopped = {"epoch": epoch, "best_epoch": best_epoch, "metric": metric,
                            "patience": self.patience, "min_delta": self.min_delta}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (its ``early_stopping`` and ``stopped_early`` entries)."""
        return {"early_stopping": {"best": self.best, "wait": self.wait}, "stopped_early": self.stopped}

    def load(self, extra: dict[str, Any]) -> None:
        saved = extra.get("early_stopping") or {}
        self.best, self.wait = saved.get("best", self.best), saved.get("wait", self.wait)
        self.stopped = extra.get("stopped_early")

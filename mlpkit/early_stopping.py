"""``trainer.early_stopping``: stop once the validation metric has not beaten its best by more than
``min_delta`` for ``patience`` epochs (0: never). Its state travels in checkpoints, so a resumed run
stops where the uninterrupted one would have."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlpkit.callbacks import Callback
from mlpkit.checkpoint import is_better


@dataclass
class EarlyStopping(Callback):
    patience: int = 0
    min_delta: float = 0.0
    mode: str = "min"  # "min" or "max": the direction the metric improves in
    best: float | None = None  # the value later epochs must beat by min_delta
    wait: int = 0  # epochs since the last improvement
    stopped: dict[str, Any] | None = None  # metrics.json's stopped_early, once it stopped
    state_key = "early_stopping"

    def on_fit_start(self, trainer: Any) -> None:
        if self.stopped is not None:  # a resume of a run that stopped early trains no further
            trainer.should_stop, trainer.stopped_early = True, self.stopped

    def on_validation_end(self, trainer: Any, metrics: dict[str, float], improved: bool) -> None:
        """After an epoch's validation: count an epoch without improvement, or start again."""
        if not self.patience:
            return
        value = metrics[trainer.metric]
        target = None if self.best is None else (
            self.best - self.min_delta if self.mode == "min" else self.best + self.min_delta)
        if is_better(value, target, self.mode):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.wait >= self.patience and trainer.epoch < trainer.max_epochs:
            self.stopped = {"epoch": trainer.epoch, "best_epoch": trainer.best["epoch"], "metric": trainer.metric,
                            "patience": self.patience, "min_delta": self.min_delta}
            trainer.should_stop, trainer.stopped_early = True, self.stopped

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best", self.best), state.get("wait", self.wait)
        self.stopped = state.get("stopped")

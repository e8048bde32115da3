"""When a run writes its checkpoints, and the best epoch kept in memory between them: a callback.

``checkpoints/last.pt`` at the first and last epochs (and an early stop), at any other epoch's end
once ``min_seconds`` have passed since the last checkpoint, every ``every_n_steps`` steps when set,
and when a signal stops the run. An epoch that improves but writes no checkpoint keeps its state in
host memory; it becomes ``best.pt`` with the next checkpoint (best.pt before last.pt: a last.pt never
names a best epoch best.pt lacks). What is saved is ``trainer.state()``: plain values and tensors,
written atomically by ``mlpkit.checkpoint``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from mlpkit.callbacks import Callback
from mlpkit.checkpoint import atomic_save, host_copy, load_checkpoint
from mlpkit.errors import TrainingStopped, environment_fault
from mlpkit.rundir import BEST_CHECKPOINT, LAST_CHECKPOINT

CHECKPOINT_MIN_SECONDS = 10.0  # trainer.checkpoint_min_seconds: see Checkpointer.due


class Checkpointer(Callback):
    def __init__(self, directory: Path, every_n_steps: int = 0, min_seconds: float = CHECKPOINT_MIN_SECONDS):
        self.directory, self.every_n_steps, self.min_seconds = Path(directory), every_n_steps, min_seconds
        self.last_time = -math.inf  # time.monotonic() of the last checkpoint written
        self.best_state: dict[str, Any] | None = None  # an improving epoch's state not yet in best.pt

    def on_train_batch_end(self, trainer: Any, loss: Any) -> None:
        if self.every_n_steps and trainer.step % self.every_n_steps == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: Any, metrics: dict[str, float], improved: bool) -> None:
        if self.due(trainer):
            self.save(trainer, best_is_current=improved)
        elif improved:
            self.best_state = host_copy(trainer.state())  # a fraction of a write's cost

    def on_stop(self, trainer: Any, stop: TrainingStopped) -> None:
        if stop.nonfinite:
            self.write_kept_best()  # the best epoch before the failure, if it was only in memory
        elif not stop.completed:
            self.save(trainer)  # a signal: the run resumes from here

    def on_fit_end(self, trainer: Any, final: dict[str, dict[str, float]]) -> None:
        """``test_best``: the test metrics of best.pt (users quote the best model, not the last); the
        model keeps its last weights."""
        best_epoch = trainer.best["epoch"]
        if best_epoch is None or not len(trainer.data.test) or not (self.directory / BEST_CHECKPOINT).is_file():
            return
        if best_epoch == trainer.epoch:  # the last weights are the best
            final["test_best"] = trainer.evaluate(trainer.data.test)
            return
        model = trainer.model
        last = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(load_checkpoint(self.directory / BEST_CHECKPOINT, map_location=trainer.device)["model"])
        try:
            final["test_best"] = trainer.evaluate(trainer.data.test)
        finally:
            model.load_state_dict(last)

    def due(self, trainer: Any) -> bool:
        """Whether this epoch's end writes last.pt. Writing a checkpoint slows the steps after it (on 2
        CPU cores a digits checkpoint cost the next few steps 0.8 ms, as much as one step), so runs of
        short epochs write one every few seconds rather than every few milliseconds."""
        return (trainer.epoch >= trainer.max_epochs or trainer.should_stop
                or time.monotonic() - self.last_time >= self.min_seconds)

    def save(self, trainer: Any, best_is_current: bool = False) -> None:
        """last.pt; with ``best_is_current`` best.pt too (the same file, a second name), else first
        best.pt from a kept state, if an epoch since the last checkpoint improved."""
        if trainer.logger is not None:
            trainer.logger.flush()  # a checkpoint's curves are on disk before it is: a resume only adds to them
        state = trainer.state()
        if best_is_current:
            self.best_state = None
            self.write(state, LAST_CHECKPOINT, BEST_CHECKPOINT)
        else:
            self.write_kept_best()
            self.write(state, LAST_CHECKPOINT)
        self.last_time = time.monotonic()

    def write_kept_best(self) -> None:
        if self.best_state is not None:
            self.write(self.best_state, BEST_CHECKPOINT)
            self.best_state = None

    def write(self, state: dict[str, Any], first: str, *others: str) -> None:
        try:
            atomic_save(state, self.directory / first, *(self.directory / name for name in others))
        except OSError as error:  # a full disk, a directory gone read-only: the last good file stays
            name = next((name for name in (first, *others) if name in str(error.filename or "")), first)
            raise environment_fault(error, f"write checkpoint {name} (the last good one is kept)") from None

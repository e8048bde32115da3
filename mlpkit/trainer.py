"""The training loop, top to bottom: batches by index, loss, backward, step, log, evaluate; the
callbacks (``mlpkit.callbacks``) plug in at the points named there."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch

from mlpkit import nonfinite
from mlpkit.acceleration import autocast, compile_loss
from mlpkit.callbacks import Callback, Callbacks, saved_states
from mlpkit.checkpoint import checkpoint_state, is_better, restore
from mlpkit.data import Data, Split
from mlpkit.diagnostics import GradientMonitor, Measurement, Packed
from mlpkit.distributed import GradientSync
from mlpkit.epoch import BETWEEN_EPOCHS, EpochInProgress
from mlpkit.errors import TrainingStopped
from mlpkit.loss_scaling import LossScaler
from mlpkit.model import EVAL_CHUNK, MLP
from mlpkit.objective import Objective
from mlpkit.progress import EpochProgress
from mlpkit.settings import TrainerSettings, epoch_mean, log_interval
from mlpkit.verdicts import summary as verdict_summary

log = logging.getLogger("mlpkit")


class ScalarLogger(Protocol):
    def log_scalars(self, values: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...  # before every checkpoint: what it logged is on disk with it


class Trainer:
    """Trains ``model`` on ``data.train``, evaluates on ``data.val`` every epoch.

    Every ``log_every_n_steps`` steps (``auto``: see ``log_interval``) the loop writes ``loss/train``
    and, with a ``monitor``, the per-layer gradient diagnostics to ``logger``: the monitor measures
    on the device and the values reach the host in one transfer with the callbacks' ``log_values``,
    the loop's only host synchronisation besides the per-epoch evaluation (and, with
    ``on_nonfinite="skip"``, one check per step)."""

    def __init__(self, model: MLP, objective: Objective, optimizer: torch.optim.Optimizer, data: Data,
                 settings: TrainerSettings, *, logger: ScalarLogger | None = None,
                 monitor: GradientMonitor | None = None, callbacks: Iterable[Callback] = ()):
        self.model, self.objective, self.optimizer, self.data, self.settings = model, objective, optimizer, data, settings
        self.logger, self.monitor = logger, monitor
        self.run_dir: Path | None = None  # the run's directory, when it has one (the CLI and mlpkit.train set it)
        self.scaler = LossScaler(data.device) if settings.precision == "16-mixed" else None
        self.callbacks = Callbacks([*([monitor] if monitor is not None else []), EpochProgress(settings.progress),
                                    *([self.scaler] if self.scaler is not None else []), *callbacks])
        self.parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
        self.device = data.device  # where the model trains; the data may stay in pinned host memory
        self.max_epochs = settings.epochs
        self.batch_size, self.metric = settings.step_rows, settings.metric  # rows per optimizer step
        self.batch_generator = torch.Generator().manual_seed(settings.seed)
        self.step, self.epoch, self.history, self.skipped_steps = 0, 0, [], 0
        self.best: dict[str, Any] = {"metric": f"{settings.metric}/val", "mode": settings.mode, "value": None,
                                     "epoch": None}
        self.should_stop, self.stopped_early = False, None  # set by a callback (early stopping)
        self.checks: dict[str, Any] = {}  # the sanity checks' verdicts (mlpkit.sanity), for metrics.json
        self.stop_signal: int | None = None  # set by a signal handler; checked after every step
        self.sync: GradientSync | None = None  # trainer.strategy=ddp: this rank's share and the all-reduce
        # time and rows trained over every session of the run (a resume adds to them)
        self.train_seconds, self.samples_trained, self.wall_seconds_before = 0.0, 0, 0.0
        self.session_started = time.perf_counter()
        self.current: EpochInProgress | None = None
        settings.check_rows(len(data.train))
        total_steps = settings.total_steps(len(data.train))
        self.log_every_n_steps = log_interval(settings.log_every_n_steps, total_steps)
        if monitor is not None:
            monitor.plan(self.log_every_n_steps, total_steps)
        self.step_loss = compile_loss(self.forward_loss, settings.cuda_graphs) if settings.drop_last \
            else self.forward_loss

    # --- one step ------------------------------------------------------------------------------
    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.settings.precision):
            return self.objective.loss(self.model.logits(x), y)

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, measuring: bool) -> torch.Tensor:
        if measuring:
            self.monitor.watch(self.step)  # activation hooks, on measured steps only
            return self.forward_loss(x, y)
        if self.settings.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
            return self.step_loss(x, y).clone()  # the graph's own output is overwritten by the next replay
        return self.step_loss(x, y)

    def backward(self, x: torch.Tensor, y: torch.Tensor, measuring: bool) -> torch.Tensor:
        """The step's gradients in ``.grad`` (unscaled, with fp16 loss scaling) and its mean loss. With
        ``accumulate_grad_batches``, ``batch_size`` rows at a time, each batch's loss weighted by its
        share of the step's rows: the gradient of one step on all of them (activation statistics:
        the last batch's)."""
        for parameter in self.parameters:  # optimizer.zero_grad(set_to_none=True) without its profiler
            parameter.grad = None  # record and per-call checks: 16 of a digits step's 700 us on 2 CPU cores
        size = self.settings.batch_size
        if len(x) <= size and self.sync is None:
            loss = self.batch_loss(x, y, measuring)
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        else:
            parts = list(zip(x.split(size), y.split(size))) if self.sync is None else self.rank_parts(x, y)
            loss = torch.zeros((), device=x.device)
            for index, (rows, targets) in enumerate(parts):
                share = self.batch_loss(rows, targets, measuring and index == len(parts) - 1) * (len(rows) / len(x))
                (share if self.scaler is None else self.scaler.scale(share)).backward()
                loss = loss + share.detach().float()
        if self.sync is not None:  # the step's gradient and loss over every rank, before anything reads them
            loss = self.sync.all_reduce(self.parameters, loss, self.stop_signal)
        if self.scaler is not None:
            self.scaler.unscale(self.optimizer)
        return loss

    def rank_parts(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """trainer.strategy=ddp: this rank's contiguous share of each batch of the step's rows (a
        rank may have none of a last, small batch: it adds zeros to the sum)."""
        size, parts = self.settings.batch_size, []
        for start in range(0, len(x), size):
            share = self.sync.share(min(size, len(x) - start))
            rows = slice(start + share.start, start + share.stop)
            if rows.stop > rows.start:
                parts.append((x[rows], y[rows]))
        return parts

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_step = self.step % self.log_every_n_steps == 0
        monitor = self.monitor
        measuring = monitor is not None and (log_step or monitor.is_histogram_step(self.step))
        loss = self.backward(x, y, measuring)
        self.callbacks.call("on_after_backward", self)
        logged = self.callbacks.log_values(self) if log_step else {}
        device_values = {name: value for name, value in logged.items() if isinstance(value, torch.Tensor)}
        measurement = None
        if measuring:  # the interval's one host transfer
            measurement = monitor.measure(self.step, loss, extra=device_values, judge_nonfinite=self.scaler is None)
            if not measurement.finite and self.scaler is None:  # caught before the step: the weights are still finite
                self.log_measurement(measurement, logged, {})
                return self.nonfinite_step(loss, measurement.layers)
        elif log_step and self.logger is not None:
            self.log_loss(loss, logged, device_values)
        if self.settings.on_nonfinite == "skip" and not torch.isfinite(loss).item():
            return self.nonfinite_step(loss)
        self.callbacks.call("on_before_optimizer_step", self)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
        if measurement is not None:
            self.log_measurement(measurement, logged, monitor.after_update(self.step))
        self.callbacks.call("on_after_optimizer_step", self)
        return loss.detach()

    def host_values(self, logged: dict[str, Any], fetched: dict[str, list[float]]) -> dict[str, float]:
        """``lr/group<i>`` (a Python float already) and the callbacks' logged values, fetched."""
        scalars = {f"lr/group{index}": float(group["lr"]) for index, group in enumerate(self.optimizer.param_groups)}
        scalars.update({name: fetched[name][0] if name in fetched else value for name, value in logged.items()})
        return scalars

    def log_loss(self, loss: torch.Tensor, logged: dict[str, Any], device_values: dict[str, torch.Tensor]) -> None:
        """A logged step without the monitor: loss/train and the callbacks' values, one transfer."""
        packed = Packed()
        packed.add("loss/train", loss)
        for name, value in device_values.items():
            packed.add(name, value)
        fetched = packed.fetch()
        self.logger.log_scalars({"loss/train": fetched["loss/train"][0], **self.host_values(logged, fetched)},
                                self.step)

    def log_measurement(self, measurement: Measurement, logged: dict[str, Any], update_ratios: dict[str, float]):
        """loss/train, every per-layer figure and the update it led to (one event), histograms, and
        a verdict line when one fires."""
        for line in measurement.verdict_lines:
            log.warning(line)
        if self.logger is None:
            return
        if self.step % self.log_every_n_steps == 0:
            self.logger.log_scalars({"loss/train": measurement.loss, **measurement.scalars(), **update_ratios,
                                     **self.host_values(logged, measurement.extra)}, self.step)
        for tag, values in measurement.histograms.items():
            self.logger.log_histogram(tag, values, self.step)
        for line in measurement.verdict_lines:
            self.logger.log_text("gradient_health", line, self.step)

    # --- a non-finite value: one rule (mlpkit.nonfinite) ----------------------------------------
    def nonfinite_step(self, loss: torch.Tensor, layers: dict[str, dict[str, float]] | None = None) -> torch.Tensor:
        """A step whose loss or gradient is not finite: skipped, or the run stops."""
        self.stop_nonfinite(layers)
        self.skipped_steps += 1
        log.warning(nonfinite.SKIPPED, self.step, loss.item())
        return torch.full((), math.nan, device=self.device)  # the epoch's loss leaves it out

    def stop_nonfinite(self, layers: dict[str, dict[str, float]] | None = None) -> None:
        """Stop at the first non-finite step (returns with ``on_nonfinite=skip``)."""
        if self.settings.on_nonfinite != "skip":
            next_batch = self.current.next_batch if self.current is not None else 0
            self.stop(nonfinite.stop_at_step(self.losses_so_far(), self.step, next_batch, self.epoch, layers))

    def stop(self, stop: TrainingStopped) -> None:
        self.callbacks.call("on_stop", self, stop)  # the checkpointer saves (a signal) or keeps the last good one
        raise stop

    def gradient_health(self, log: bool = True) -> dict[str, Any] | None:
        """The monitor's verdicts so far (metrics.json's ``gradient_health``); None without a monitor."""
        if self.monitor is None:
            return None
        health = self.monitor.finish(self.log_every_n_steps)
        if self.logger is not None and log:
            self.logger.log_text("gradient_health/summary", verdict_summary(health), self.step)
        return health

    # --- one epoch -----------------------------------------------------------------------------
    def losses_so_far(self) -> torch.Tensor:
        """The loss of each batch of the epoch in progress so far, one tensor on the device."""
        return self.current.losses_so_far(self.device) if self.current else torch.zeros(0, device=self.device)

    def batches_per_epoch(self) -> int:
        return self.settings.batches_per_epoch(len(self.data.train))

    def rows_per_epoch(self) -> int:
        return self.settings.rows_per_epoch(len(self.data.train))

    def new_epoch_order(self, split: Split) -> torch.Tensor:
        """A fresh shuffle; ``overfit_batches`` takes the first rows in their order every epoch."""
        if self.settings.overfit_batches:
            return torch.arange(self.rows_per_epoch(), device=split.x.device)
        return split.epoch_order(self.batch_generator)

    def train_epoch(self) -> float:
        split = self.data.train
        if not self.model.training:  # evaluate() hands the model back as it found it
            self.model.train()
        if self.current is None:  # a fresh epoch; a resumed one keeps its saved order
            self.current = EpochInProgress(self.new_epoch_order(split))
        epoch = self.current
        epoch.start()
        for x, y in split.batches(epoch.order, self.batch_size, epoch.next_batch, self.batches_per_epoch(),
                                  self.device):
            self.callbacks.call("on_train_batch_start", self)
            loss = self.train_step(x, y)
            epoch.add(loss)
            self.step += 1
            self.callbacks.call("on_train_batch_end", self, loss)
            if (self.stop_signal if self.sync is None else self.sync.stop_signal) is not None:
                self.stop_by_signal()
        if self.sync is not None:  # the ranks' BatchNorm statistics, averaged: every rank evaluates one model
            self.sync.average_buffers(self.model)
        epoch_loss = self.epoch_loss(self.losses_so_far().tolist())
        self.train_seconds, self.samples_trained = self.trained_so_far()
        self.current = None
        return epoch_loss

    def stop_by_signal(self) -> None:
        """A signal asked the run to stop (under ddp: any rank's, agreed by all after the same step)."""
        self.stop_signal = self.stop_signal or self.sync.stop_signal
        self.stop(TrainingStopped.by_signal(f"stopped by signal {self.stop_signal} at step {self.step} "
                                            f"(epoch {self.epoch + 1}); checkpoint saved", self.stop_signal))

    def epoch_loss(self, batch_losses: list[float]) -> float:
        """The epoch's mean loss (``settings.epoch_mean``); a non-finite one stops the run unless
        steps are skipped."""
        if not all(math.isfinite(loss) for loss in batch_losses):
            self.stop_nonfinite()  # returns only with trainer.on_nonfinite=skip
        return epoch_mean(batch_losses, self.batch_size, self.rows_per_epoch())

    def trained_so_far(self) -> tuple[float, int]:
        """Training seconds and rows over every session, the epoch in progress included."""
        seconds, rows = self.current.trained(self.batch_size, self.rows_per_epoch()) if self.current else (0.0, 0)
        return self.train_seconds + seconds, self.samples_trained + rows

    @torch.no_grad()
    def evaluate(self, split: Split, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Every metric of the objective on a whole split (one host transfer) by ``model`` (the one
        training, or averaged weights); one batch of it in a ``fast_dev_run``."""
        model = self.model if model is None else model
        if self.settings.fast_dev_run:
            split = split.head(self.batch_size)
        was_training = model.training
        model.eval()
        logits, targets = [], []
        with autocast(self.device, self.settings.precision):
            for x, y in split.chunks(EVAL_CHUNK, self.device):
                logits.append(model.logits(x))
                targets.append(y)
        metrics = self.objective.metrics(torch.cat(logits).float(), torch.cat(targets))
        model.train(was_training)
        values = torch.stack([v.float() for v in metrics.values()]).tolist()
        return dict(zip(metrics, values))

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly here (``checkpoint_state``: the live tensors)."""
        done = self.losses_so_far()
        if not torch.isfinite(done).all():
            self.stop_nonfinite()  # never let a NaN-poisoned model replace a good checkpoint
        train_seconds, samples_trained = self.trained_so_far()
        extra = {"history": self.history, "skipped_steps": self.skipped_steps,
                 "train_seconds": train_seconds, "samples_trained": samples_trained,
                 "wall_seconds": self.wall_seconds(),
                 **(self.current.state(done) if self.current is not None else BETWEEN_EPOCHS),
                 "callbacks": self.callbacks.state_dicts()}
        return checkpoint_state(model=self.model, optimizer=self.optimizer, epoch=self.epoch, step=self.step,
                                batch_generator=self.batch_generator, config=self.settings.config, best=self.best,
                                extra=extra)

    def resume_from(self, state: dict) -> None:
        """Weights, optimizer, RNG states, counters, history, the callbacks' states and a half-done
        epoch's place, from a loaded checkpoint (``checkpoint.load_checkpoint``)."""
        restore(state, model=self.model, optimizer=self.optimizer, batch_generator=self.batch_generator)
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        extra = state["extra"]
        self.history, self.skipped_steps = extra.get("history", []), extra.get("skipped_steps", 0)
        self.train_seconds, self.samples_trained = extra.get("train_seconds", 0.0), extra.get("samples_trained", 0)
        self.wall_seconds_before = extra.get("wall_seconds", 0.0)
        self.callbacks.load_state_dicts(saved_states(state), state.get("path", "<in memory>"))
        self.current = EpochInProgress.from_state(extra, self.data.train.x.device, self.device)

    # --- the whole run -------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train up to ``max_epochs`` and return final metrics, timing and per-epoch history."""
        start_step, self.should_stop = self.step, False
        self.callbacks.call("on_fit_start", self)
        last_epoch = self.max_epochs
        while self.epoch < last_epoch and not self.should_stop:  # a resume of a stopped run trains none
            train_loss = self.train_epoch()
            val = self.evaluate(self.validation_rows()) if len(self.data.val) else None
            self.record_epoch(train_loss, val)
            self.epoch += 1  # epochs completed, as checkpoints count them
            improved = val is not None and is_better(val[self.metric], self.best["value"], self.best["mode"])
            if improved:
                self.best.update(value=val[self.metric], epoch=self.epoch)
            # progress, schedule, early stop, checkpoint; without a validation split they watch the training loss
            self.callbacks.call("on_validation_end", self, {"loss": train_loss} if val is None else val, improved)
        final = {name: self.evaluate(split) for name, split in
                 (("train", self.data.train), ("val", self.validation_rows()), ("test", self.data.test)) if len(split)}
        self.callbacks.call("on_fit_end", self, final)  # test_best from the checkpointer
        if (failed := nonfinite.stop_at_end(final, self.skipped_steps, self.step)) is not None:
            self.stop(failed)
        return self.result(final, logs_health=self.step > start_step or start_step == 0)

    def validation_rows(self) -> Split:
        """The validation split, or its first ``limit_val_batches`` batches."""
        rows = self.settings.val_rows(len(self.data.val))
        val = self.data.val
        return val if rows == len(val) else val.head(rows)

    def result(self, final: dict[str, dict[str, float]], logs_health: bool) -> dict[str, Any]:
        """metrics.json's training part; ``logs_health``: false for a resume that trains no step
        (of a finished run), whose summary is logged already."""
        return {
            **final, "best": self.best, "stopped_early": self.stopped_early, **self.checks,
            **({"fast_dev_run": True} if self.settings.fast_dev_run else {}),
            "epochs": self.epoch, "steps": self.step, "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            "samples_per_second": self.samples_trained / self.train_seconds if self.train_seconds > 0 else 0.0,
            "history": self.history, "gradient_health": self.gradient_health(log=logs_health),
        }

    def wall_seconds(self) -> float:
        """Seconds since the run started, over every session (each from its Trainer's creation)."""
        return self.wall_seconds_before + time.perf_counter() - self.session_started

    def record_epoch(self, train_loss: float, val: dict[str, float] | None) -> None:
        entry = {"epoch": self.epoch + 1, "step": self.step}
        if math.isfinite(train_loss):  # NaN: every step of the epoch was skipped, nothing trained
            entry["loss/train_epoch"] = train_loss
        entry.update({f"{name}/val": value for name, value in (val or {}).items()})
        self.history.append(entry)
        if self.logger is not None:
            self.logger.log_scalars({k: v for k, v in entry.items() if "/" in k}, self.step)

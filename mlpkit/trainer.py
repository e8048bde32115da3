"""The training loop, top to bottom: batches by index, loss, backward, step, log, evaluate, save."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from mlpkit.acceleration import autocast, compile_loss
from mlpkit.checkpoint import (
    BEST,
    LAST,
    atomic_save,
    checkpoint_state,
    host_copy,
    is_better,
    load_checkpoint,
    restore,
)
from mlpkit.clipping import GradientClipper
from mlpkit.data import Data, Split
from mlpkit.diagnostics import GradientMonitor, Measurement, Packed
from mlpkit.early_stopping import EarlyStopping
from mlpkit.errors import EXIT_NONFINITE, ConfigError, TrainingStopped, environment_fault
from mlpkit.model import MLP
from mlpkit.objective import Objective
from mlpkit.schedules import build_schedule
from mlpkit.verdicts import summary as verdict_summary

log = logging.getLogger("mlpkit")
EVAL_CHUNK = 8192  # rows per forward pass when evaluating a whole split


class ScalarLogger(Protocol):
    def log_scalars(self, values: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...  # before every checkpoint: what it logged is on disk with it


CHECKPOINT_MIN_SECONDS = 10.0  # trainer.checkpoint_min_seconds: see Trainer.checkpoint_due
POINTS_PER_RUN = 50  # trainer.log_every_n_steps=auto: at least this many logged steps on every curve
OVERFIT_LOSS = 0.05  # trainer.overfit_batches: the loss on those batches a net that can learn them goes below


def log_interval(setting: int | str, total_steps: int) -> int:
    """``trainer.log_every_n_steps``: an integer, or ``auto`` (every step for runs under
    POINTS_PER_RUN steps, else as often as gives POINTS_PER_RUN points)."""
    if str(setting) == "auto":
        return max(1, total_steps // POINTS_PER_RUN)
    return int(setting)


class Trainer:
    """Trains ``model`` on ``data.train``, evaluates on ``data.val`` every epoch, saves checkpoints
    (``checkpoint_due``: the first and last epochs, others at least ``checkpoint_min_seconds`` apart).

    Every ``log_every_n_steps`` steps (``auto``: see ``log_interval``) the loop writes ``loss/train``
    and, with a ``monitor``, the per-layer gradient diagnostics to ``logger``: the monitor measures
    on the device and the values reach the host in one transfer, the loop's only host
    synchronisation besides the per-epoch evaluation (and, with ``on_nonfinite="skip"``, one check
    per step).

    ``precision="bf16-mixed"`` runs forward passes under bf16 autocast. ``compile_step`` (and
    ``cuda_graphs``) trains through a torch.compile'd forward and loss with static shapes: the last
    partial batch of each epoch is dropped, and measured steps run eagerly (their forward hooks
    would otherwise recompile the step).

    Remedies: ``scheduler`` (the ``scheduler`` config group as a dict, see ``mlpkit.schedules``),
    ``gradient_clip_val``/``gradient_clip_algorithm``, ``early_stopping_patience``/``min_delta`` on
    ``metric``/``mode``. Sanity checks: ``overfit_batches`` (the same first N batches every epoch,
    unshuffled) and ``fast_dev_run`` (one epoch of one batch, validation and test on one batch).
    """

    def __init__(
        self,
        model: MLP,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        data: Data,
        *,
        max_epochs: int,
        batch_size: int,
        seed: int,
        log_every_n_steps: int | str = "auto",
        logger: ScalarLogger | None = None,
        monitor: GradientMonitor | None = None,
        progress: bool = False,
        checkpoint_dir: Path | None = None,
        checkpoint_every_n_steps: int = 0,
        checkpoint_min_seconds: float = CHECKPOINT_MIN_SECONDS,
        config: dict | None = None,
        metric: str = "loss",
        mode: str = "min",
        on_nonfinite: str = "stop",
        precision: str = "32",
        compile_step: bool = False,
        cuda_graphs: bool = False,
        scheduler: dict | None = None,
        gradient_clip_val: float = 0.0,
        gradient_clip_algorithm: str = "norm",
        early_stopping_patience: int = 0,
        early_stopping_min_delta: float = 0.0,
        overfit_batches: int = 0,
        fast_dev_run: bool = False,
    ):
        self.model, self.objective, self.optimizer, self.data = model, objective, optimizer, data
        self.parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
        self.max_epochs, self.batch_size = max_epochs, batch_size
        self.logger, self.monitor = logger, monitor
        self.progress = progress
        self.checkpoint_dir, self.checkpoint_every_n_steps = checkpoint_dir, checkpoint_every_n_steps
        self.checkpoint_min_seconds = checkpoint_min_seconds
        self.last_checkpoint_time = -math.inf  # time.monotonic() of the last checkpoint written
        self.best_state: dict[str, Any] | None = None  # an improving epoch's state not yet in best.pt
        self.config = config
        self.on_nonfinite = on_nonfinite
        self.batch_generator = torch.Generator().manual_seed(seed)
        self.device = data.device  # where the model trains; the data may stay in pinned host memory
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.metric = metric  # the validation metric best.pt follows
        self.best: dict[str, Any] = {"metric": f"{metric}/val", "mode": mode, "value": None, "epoch": None}
        self.stop_signal: int | None = None  # set by a signal handler; checked after every step
        self.skipped_steps = 0
        # time and rows trained over every session of the run (a resume adds to them)
        self.train_seconds, self.samples_trained, self.wall_seconds_before = 0.0, 0, 0.0
        self.session_started = time.perf_counter()
        self.epoch_started: tuple[float, int] | None = None  # the epoch in progress: when, from which batch
        # The epoch in progress: its batch order, the next batch, and each batch's loss so far (on
        # the device: one copy per step, read at the epoch's end, at checkpoints and when stopping).
        self.epoch_order: torch.Tensor | None = None
        self.next_batch = 0
        self.epoch_losses: list[torch.Tensor] = []
        self.precision, self.cuda_graphs = precision, cuda_graphs
        self.drop_last = compile_step or cuda_graphs  # static shapes: every step sees batch_size rows
        if self.drop_last and len(data.train) < batch_size:
            raise ConfigError("trainer.batch_size", batch_size, f"at most {len(data.train)} (the training "
                              "rows) when trainer.compile or trainer.cuda_graphs drops partial batches")
        # sanity checks: fewer batches (and, for overfit_batches, always the same ones)
        self.overfit_batches, self.fast_dev_run = overfit_batches, fast_dev_run
        self.limit_batches = 1 if fast_dev_run else (overfit_batches or None)
        if fast_dev_run:
            self.max_epochs = 1
        total_steps = self.max_epochs * self.batches_per_epoch()
        self.log_every_n_steps = log_interval(log_every_n_steps, total_steps)
        if monitor is not None:
            monitor.plan(self.log_every_n_steps, total_steps)
        self.step_loss = compile_loss(self.forward_loss, cuda_graphs) if self.drop_last else self.forward_loss
        # remedies: the learning-rate schedule, gradient clipping, early stopping
        self.schedule = build_schedule(optimizer, scheduler, total_steps=total_steps,
                                       steps_per_epoch=self.batches_per_epoch(), mode=mode, dev_run=fast_dev_run)
        self.clipper = (GradientClipper(model.parameters(), gradient_clip_val, gradient_clip_algorithm, self.device)
                        if gradient_clip_val > 0 else None)
        self.early_stopping = EarlyStopping(early_stopping_patience, early_stopping_min_delta, mode)

    # --- one step ------------------------------------------------------------------------------
    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.objective.loss(self.model.logits(x), y)

    def is_log_step(self) -> bool:
        return self.step % self.log_every_n_steps == 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_step = self.is_log_step()
        measuring = self.monitor is not None and (log_step or self.monitor.is_histogram_step(self.step))
        if measuring:
            self.monitor.watch(self.step)  # activation hooks, on measured steps only
            loss = self.forward_loss(x, y)
        elif self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
            loss = self.step_loss(x, y).clone()  # the graph's own output is overwritten by the next replay
        else:
            loss = self.step_loss(x, y)
        for parameter in self.parameters:  # optimizer.zero_grad(set_to_none=True) without its profiler
            parameter.grad = None  # record and per-call checks: 16 of a digits step's 700 us on 2 CPU cores
        loss.backward()
        if self.clipper is not None:
            self.clipper.inspect()  # the total norm before clipping, and whether clipping acts (on the device)
        measurement = None
        if measuring:  # the interval's one host transfer
            measurement = self.monitor.measure(self.step, loss, extra=self.device_scalars())
            if not measurement.finite:  # caught before optimizer.step(): the weights are still finite
                self.log_measurement(measurement, {})
                if self.on_nonfinite == "skip":
                    return self.skip_step(loss)
                self.stop_on_nonfinite(measurement.layers)
        elif self.logger is not None and log_step:
            self.log_loss(loss)
        if self.on_nonfinite == "skip" and not torch.isfinite(loss).item():
            return self.skip_step(loss)
        if self.clipper is not None:
            self.clipper.clip()
        self.optimizer.step()
        if measurement is not None:
            self.log_measurement(measurement, self.monitor.after_update(self.step))
        if self.schedule is not None:
            self.schedule.after_step()  # after logging: lr/group0 is the lr this step trained with
        return loss.detach()

    def device_scalars(self) -> dict[str, torch.Tensor]:
        """Device values a logged step fetches with its loss, in the same transfer."""
        return self.clipper.pending() if self.clipper is not None and self.is_log_step() else {}

    def host_scalars(self, fetched: dict[str, list[float]]) -> dict[str, float]:
        """``lr/group<i>`` (a Python float already) and the clipping figures, for a logged step."""
        scalars = {f"lr/group{index}": float(group["lr"]) for index, group in enumerate(self.optimizer.param_groups)}
        if self.clipper is not None:
            scalars.update(self.clipper.scalars(fetched))
        return scalars

    def log_loss(self, loss: torch.Tensor) -> None:
        """A logged step without the monitor: loss/train and the step's other figures, one transfer."""
        packed = Packed()
        packed.add("loss", loss)
        for name, value in self.device_scalars().items():
            packed.add(name, value)
        fetched = packed.fetch()
        self.logger.log_scalars({"loss/train": fetched["loss"][0], **self.host_scalars(fetched)}, self.step)

    def log_measurement(self, measurement: Measurement, update_ratios: dict[str, float]) -> None:
        """loss/train, every per-layer figure and the update it led to (one event), histograms, and
        a verdict line when one fires."""
        for line in measurement.verdict_lines:
            log.warning(line)
        if self.logger is None:
            return
        if self.is_log_step():
            self.logger.log_scalars({"loss/train": measurement.loss, **measurement.scalars(), **update_ratios,
                                     **self.host_scalars(measurement.extra)}, self.step)
        for tag, values in measurement.histograms.items():
            self.logger.log_histogram(tag, values, self.step)
        for line in measurement.verdict_lines:
            self.logger.log_text("gradient_health", line, self.step)

    def skip_step(self, loss: torch.Tensor) -> torch.Tensor:
        self.skipped_steps += 1
        log.warning("step %d: loss %s or a gradient is not finite; step skipped "
                    "(trainer.on_nonfinite=skip)", self.step, loss.item())
        return torch.full((), math.nan, device=self.device)  # the epoch's loss leaves it out

    def stop_on_nonfinite(self, layers: dict[str, dict[str, float]] | None = None) -> None:
        """Stop with the first non-finite step and the input-most layer whose gradient is not finite."""
        if self.on_nonfinite == "skip":
            return
        self.write_kept_best()  # the best epoch before the failure, if it was only in memory
        done = self.losses_so_far()
        bad_batches = (~torch.isfinite(done)).nonzero().flatten().tolist()
        step = self.step - self.next_batch + bad_batches[0] if bad_batches else self.step
        bad_layers = [name for name, entry in (layers or {}).items()
                      if not math.isfinite(entry.get("grad_norm", 0.0))]
        where = f"; gradients not finite in {', '.join(bad_layers)}" if bad_layers else ""
        raise TrainingStopped(
            f"loss/train became non-finite at step {step} (epoch {self.epoch + 1}){where}. The last "
            f"good checkpoint is kept; lower optimizer.lr, change model.init, or set "
            f"trainer.on_nonfinite=skip", exit_code=EXIT_NONFINITE)

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
        return torch.stack(self.epoch_losses) if self.epoch_losses else torch.zeros(0, device=self.device)

    def batches_per_epoch(self) -> int:
        rows = len(self.data.train)
        batches = rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)
        return batches if self.limit_batches is None else min(batches, self.limit_batches)

    def rows_per_epoch(self) -> int:
        """Training rows one epoch steps on: all of them, or whole batches only when compiled (or
        the sanity checks' few batches)."""
        rows = self.batches_per_epoch() * self.batch_size
        return rows if self.drop_last else min(rows, len(self.data.train))

    def new_epoch_order(self, split: Split) -> torch.Tensor:
        """A fresh shuffle; ``overfit_batches`` takes the first rows in their order every epoch."""
        if self.overfit_batches:
            return torch.arange(self.rows_per_epoch(), device=split.x.device)
        return torch.randperm(len(split), generator=self.batch_generator).to(split.x.device)

    def train_epoch(self) -> float:
        split = self.data.train
        if not self.model.training:  # evaluate() hands the model back as it found it
            self.model.train()
        if self.epoch_order is None:  # a fresh epoch; a resumed one keeps its saved order
            self.epoch_order = self.new_epoch_order(split)
            self.next_batch = 0
            self.epoch_losses = []
        losses, size, n_batches = self.epoch_losses, self.batch_size, self.batches_per_epoch()
        self.epoch_started = (time.perf_counter(), self.next_batch)
        for x, y in split.batches(self.epoch_order, size, self.next_batch, n_batches, self.device):
            losses.append(self.train_step(x, y))
            self.step += 1
            self.next_batch += 1
            if self.checkpoint_every_n_steps and self.step % self.checkpoint_every_n_steps == 0:
                self.save()
            if self.stop_signal is not None:
                self.save()
                raise TrainingStopped.by_signal(f"stopped by signal {self.stop_signal} at step {self.step} "
                                                f"(epoch {self.epoch + 1}); checkpoint saved", self.stop_signal)
        epoch_loss = self.epoch_loss(self.losses_so_far().tolist())
        self.train_seconds, self.samples_trained = self.trained_so_far()
        self.epoch_order, self.epoch_started = None, None
        return epoch_loss

    def epoch_loss(self, batch_losses: list[float]) -> float:
        """The mean over the epoch's rows: a last, smaller batch weighs less (summed on the host: one
        transfer). Steps skipped for a non-finite loss (NaN) do not count; NaN when every one was."""
        size, rows_seen = self.batch_size, self.rows_per_epoch()
        weights = [size] * (len(batch_losses) - 1) + [rows_seen - size * (len(batch_losses) - 1)]
        if all(math.isfinite(loss) for loss in batch_losses):
            *full, last = batch_losses
            return (math.fsum(full) * size + last * weights[-1]) / rows_seen
        self.stop_on_nonfinite()  # returns only with trainer.on_nonfinite=skip
        kept = [(loss, weight) for loss, weight in zip(batch_losses, weights) if math.isfinite(loss)]
        if not kept:
            return math.nan
        return math.fsum(loss * weight for loss, weight in kept) / math.fsum(weight for _, weight in kept)

    def trained_so_far(self) -> tuple[float, int]:
        """Training seconds and rows over every session, the epoch in progress included."""
        if self.epoch_started is None:
            return self.train_seconds, self.samples_trained
        started, first_batch = self.epoch_started
        rows = self.rows_per_epoch()
        done = min(self.next_batch * self.batch_size, rows) - min(first_batch * self.batch_size, rows)
        return self.train_seconds + time.perf_counter() - started, self.samples_trained + done

    @torch.no_grad()
    def evaluate(self, split: Split) -> dict[str, float]:
        """Every metric of the objective on a whole split (one host transfer); one batch of it in a
        ``fast_dev_run``."""
        if self.fast_dev_run:
            split = Split(split.x[:self.batch_size], split.y[:self.batch_size])
        was_training = self.model.training
        self.model.eval()
        with autocast(self.device, self.precision):
            logits = torch.cat([self.model.logits(split.batch(slice(i, i + EVAL_CHUNK), self.device)[0])
                                for i in range(0, len(split), EVAL_CHUNK)]).float()
        metrics = self.objective.metrics(logits, split.y.to(self.device))
        self.model.train(was_training)
        values = torch.stack([v.float() for v in metrics.values()]).tolist()
        return dict(zip(metrics, values))

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly here (``checkpoint_state``: the live tensors)."""
        mid_epoch = self.epoch_order is not None
        done = self.losses_so_far() if mid_epoch else None
        if done is not None and not torch.isfinite(done).all():
            self.stop_on_nonfinite()  # never let a NaN-poisoned model replace a good checkpoint
        train_seconds, samples_trained = self.trained_so_far()
        extra = {"history": self.history, "skipped_steps": self.skipped_steps,
                 "train_seconds": train_seconds, "samples_trained": samples_trained,
                 "wall_seconds": self.wall_seconds(),
                 "epoch_order": self.epoch_order.cpu() if mid_epoch else None,
                 "next_batch": self.next_batch if mid_epoch else 0,
                 "epoch_losses": done.cpu() if done is not None else None,
                 **(self.monitor.state() if self.monitor is not None else {"verdicts": None}),
                 **self.early_stopping.state()}
        return checkpoint_state(model=self.model, optimizer=self.optimizer, epoch=self.epoch,
                                step=self.step, batch_generator=self.batch_generator,
                                config=self.config, best=self.best, extra=extra, scheduler=self.schedule)

    def keep_best(self) -> None:
        """An epoch that improved but writes no checkpoint now: its state is copied to host memory
        (a fraction of a write's cost) and becomes best.pt with the next checkpoint."""
        if self.checkpoint_dir is not None:
            self.best_state = host_copy(self.state())

    def save(self, best_is_current: bool = False) -> None:
        """checkpoints/last.pt, atomically; with ``best_is_current`` best.pt too (the same file, a
        second name), else first best.pt from a kept state, if an epoch since the last checkpoint
        improved (best.pt before last.pt: a last.pt never names a best epoch best.pt lacks)."""
        if self.checkpoint_dir is None:
            return
        if self.logger is not None:
            self.logger.flush()  # a checkpoint's curves are on disk before it is: a resume only adds to them
        state = self.state()
        if best_is_current:
            self.best_state = None
            self.write(state, LAST, BEST)
        else:
            self.write_kept_best()
            self.write(state, LAST)
        self.last_checkpoint_time = time.monotonic()

    def write_kept_best(self) -> None:
        if self.best_state is not None:
            self.write(self.best_state, BEST)
            self.best_state = None

    def write(self, state: dict[str, Any], first: str, *others: str) -> None:
        try:
            atomic_save(state, self.checkpoint_dir / first, *(self.checkpoint_dir / name for name in others))
        except OSError as error:  # a full disk, a directory gone read-only: the last good file stays
            name = next((name for name in (first, *others) if name in str(error.filename or "")), first)
            raise environment_fault(error, f"write checkpoint {name} (the last good one is kept)") from None

    def resume_from(self, state: dict) -> None:
        """Weights, optimizer, RNG states, counters, history and a half-done epoch's place, from a
        loaded checkpoint (``checkpoint.load_checkpoint``)."""
        restore(state, model=self.model, optimizer=self.optimizer, batch_generator=self.batch_generator,
                scheduler=self.schedule)
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        extra = state["extra"]
        self.history, self.skipped_steps = extra.get("history", []), extra.get("skipped_steps", 0)
        self.train_seconds, self.samples_trained = extra.get("train_seconds", 0.0), extra.get("samples_trained", 0)
        self.wall_seconds_before = extra.get("wall_seconds", 0.0)
        self.early_stopping.load(extra)
        if self.monitor is not None:
            self.monitor.load(extra)
        if extra.get("epoch_order") is not None:
            self.epoch_order = extra["epoch_order"].to(self.data.train.x.device)
            self.next_batch = extra["next_batch"]
            saved = extra["epoch_losses"]
            self.epoch_losses = list(saved.to(self.device).unbind()) if saved is not None else []

    # --- the whole run -------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train up to ``max_epochs`` and return final metrics, timing and per-epoch history."""
        start_epoch = self.epoch
        last_epoch = self.max_epochs if self.early_stopping.stopped is None else start_epoch  # a resume of a stopped run
        bar = tqdm(range(start_epoch, last_epoch), desc="epochs", unit="epoch", initial=start_epoch,
                   total=self.max_epochs, disable=not self.progress, dynamic_ncols=True)
        start_step = self.step
        try:
            for self.epoch in bar:
                train_loss = self.train_epoch()
                val = self.evaluate(self.data.val)
                self.record_epoch(train_loss, val, bar)
                self.epoch += 1  # epochs completed, as checkpoints count them
                improved = is_better(val[self.metric], self.best["value"], self.best["mode"])
                if improved:
                    self.best.update(value=val[self.metric], epoch=self.epoch)
                self.after_validation(val[self.metric])  # the plateau schedule and early stopping
                if self.checkpoint_due():
                    self.save(best_is_current=improved)
                elif improved:
                    self.keep_best()
                if self.early_stopping.stopped is not None:
                    break
        finally:
            bar.close()
        final = {name: self.evaluate(split) for name, split in
                 (("train", self.data.train), ("val", self.data.val), ("test", self.data.test))}
        final.update(self.evaluate_best())
        self.refuse_nonfinite(final)
        checks = {"overfit_batches": self.overfit_check()} if self.overfit_batches else {}
        return {
            **final,
            "best": self.best,
            "stopped_early": self.early_stopping.stopped,
            **checks,
            **({"fast_dev_run": True} if self.fast_dev_run else {}),
            "epochs": self.epoch,
            "steps": self.step,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            "samples_per_second": self.samples_trained / self.train_seconds if self.train_seconds > 0 else 0.0,
            "history": self.history,
            # a resume that trains no step (of a finished run) has logged its summary already
            "gradient_health": self.gradient_health(log=self.step > start_step or start_step == 0),
        }

    def wall_seconds(self) -> float:
        """Seconds since the run started, over every session (each from its Trainer's creation)."""
        return self.wall_seconds_before + time.perf_counter() - self.session_started

    def checkpoint_due(self) -> bool:
        """Whether this epoch's end writes last.pt: the run's first and last epochs (and an early
        stop) always do, any other once ``checkpoint_min_seconds`` have passed since the last
        checkpoint. Writing a checkpoint slows the steps after it (on 2 CPU cores a digits
        checkpoint cost the next few steps 0.8 ms, as much as one step), so runs of short epochs
        write one every few seconds rather than every few milliseconds. An epoch that improves
        but writes none keeps its state in memory for best.pt (``keep_best``)."""
        return (self.epoch >= self.max_epochs or self.early_stopping.stopped is not None
                or time.monotonic() - self.last_checkpoint_time >= self.checkpoint_min_seconds)

    def after_validation(self, value: float) -> None:
        """Per epoch, on the validation objective: the plateau schedule's step, and early stopping."""
        if self.schedule is not None:
            self.schedule.after_epoch(value)
        self.early_stopping.update(value, epoch=self.epoch, max_epochs=self.max_epochs,
                                   best_epoch=self.best["epoch"], metric=self.metric)

    def evaluate_best(self) -> dict[str, dict[str, float]]:
        """``test_best``: the test metrics of checkpoints/best.pt (users quote the best model, not
        the last); the model keeps its last weights."""
        if self.checkpoint_dir is None or self.best["epoch"] is None or not (self.checkpoint_dir / BEST).is_file():
            return {}
        if self.best["epoch"] == self.epoch:  # the last weights are the best
            return {"test_best": self.evaluate(self.data.test)}
        last = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        self.model.load_state_dict(load_checkpoint(self.checkpoint_dir / BEST, map_location=self.device)["model"])
        try:
            return {"test_best": self.evaluate(self.data.test)}
        finally:
            self.model.load_state_dict(last)

    def overfit_check(self) -> dict[str, Any]:
        """Whether the net drove the loss of its ``overfit_batches`` below OVERFIT_LOSS (evaluated
        after training, dropout off)."""
        rows = self.rows_per_epoch()
        loss = self.evaluate(Split(self.data.train.x[:rows], self.data.train.y[:rows]))["loss"]
        return {"batches": self.batches_per_epoch(), "rows": rows, "loss": loss, "threshold": OVERFIT_LOSS,
                "reached": loss < OVERFIT_LOSS}

    def refuse_nonfinite(self, final: dict[str, dict[str, float]]) -> None:
        """A run whose final metrics are not finite failed, whatever it skipped on the way."""
        bad = [f"{metric}/{split} {value}" for split, metrics in final.items() for metric, value in metrics.items()
               if not math.isfinite(value)]
        if not bad:
            return
        skipped = (f" after skipping {self.skipped_steps} of {self.step} steps (trainer.on_nonfinite=skip)"
                   if self.skipped_steps else "")
        raise TrainingStopped(f"training ended with non-finite metrics ({', '.join(bad[:4])}){skipped}; lower "
                              "optimizer.lr or change model.init", exit_code=EXIT_NONFINITE)

    def record_epoch(self, train_loss: float, val: dict[str, float], bar: tqdm) -> None:
        entry = {"epoch": self.epoch + 1, "step": self.step}
        if math.isfinite(train_loss):  # NaN: every step of the epoch was skipped, nothing trained
            entry["loss/train_epoch"] = train_loss
        entry.update({f"{name}/val": value for name, value in val.items()})
        self.history.append(entry)
        if self.logger is not None:
            self.logger.log_scalars({k: v for k, v in entry.items() if "/" in k}, self.step)
        summary = "  ".join(f"{k} {v:.4g}" for k, v in entry.items() if "/" in k)
        if not math.isfinite(train_loss):
            summary = f"every step skipped (trainer.on_nonfinite=skip)  {summary}"
        if self.progress:
            bar.set_postfix_str(summary)
        else:
            log.info("epoch %d/%d  %s", self.epoch + 1, self.max_epochs, summary)

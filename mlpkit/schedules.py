"""Learning-rate schedules (``configs/scheduler/``) built from torch.optim.lr_scheduler.

A schedule steps once per optimizer step (``step``, ``cosine``, ``onecycle``, and the linear warmup
of ``scheduler.warmup_steps``), except ``plateau``, which steps once per epoch on the validation
objective. A schedule over the run (cosine, onecycle) has the length of the run it started with:
a resume with more epochs keeps the lr at its last value once that length is reached. Settings
that contradict the run they are in are refused before any step (``check_schedule``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler

from mlpkit.callbacks import Callback
from mlpkit.errors import ConfigError

log = logging.getLogger("mlpkit")


class Schedule(Callback):
    """A callback: a step after every optimizer step (after the step is logged: ``lr/group0`` is
    the lr the step trained with), an epoch step with the validation objective; its state travels
    in checkpoints.

    ``per_step``: a torch scheduler stepped every optimizer step for ``length`` steps (None: for
    ever); ``plateau``: a ReduceLROnPlateau stepped per epoch once the warmup is over."""

    def __init__(self, name: str, per_step: lr_scheduler.LRScheduler | None, length: int | None,
                 plateau: lr_scheduler.ReduceLROnPlateau | None = None, warmup_steps: int = 0):
        self.name, self.per_step, self.length, self.plateau = name, per_step, length, plateau
        self.warmup_steps = warmup_steps
        self.steps = 0  # optimizer steps taken under this schedule

    state_key = "scheduler"

    def on_after_optimizer_step(self, trainer: Any) -> None:
        self.after_step()

    def on_validation_end(self, trainer: Any, metrics: dict[str, float], improved: bool) -> None:
        self.after_epoch(metrics[trainer.metric])

    def after_step(self) -> None:
        self.steps += 1
        if self.per_step is not None and (self.length is None or self.steps <= self.length):
            self.per_step.step()

    def after_epoch(self, value: float) -> None:
        """ReduceLROnPlateau's epoch step; epochs that end inside the warmup do not count."""
        if self.plateau is not None and self.steps >= self.warmup_steps:
            self.plateau.step(value)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "length": self.length,
                "per_step": self.per_step.state_dict() if self.per_step is not None else None,
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"the checkpoint's schedule is {state.get('name')}, the run's {self.name}")
        self.steps, self.length = state["steps"], state["length"]
        if self.per_step is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


def build_schedule(optimizer: torch.optim.Optimizer, settings: Mapping[str, Any] | None, *, total_steps: int,
                   steps_per_epoch: int, mode: str = "min", dev_run: bool = False) -> Schedule | None:
    """The run's schedule from ``cfg.scheduler`` (None, or ``none`` without warmup: no schedule).

    ``total_steps``: optimizer steps of the whole run (cosine and onecycle span them by default);
    ``mode``: ``objective.mode``, for plateau; ``dev_run``: a ``trainer.fast_dev_run`` of one step,
    whose schedule lengths are the real run's and are not checked against it. Settings that
    contradict the run (``check_schedule``) raise ConfigError before any step."""
    settings = dict(settings or {"name": "none"})
    name, warmup = settings.get("name", "none"), int(settings.get("warmup_steps", 0))
    if name == "none" and warmup == 0:
        return None
    lr = min(float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups)
    check_schedule(settings, lr, total_steps=None if dev_run else total_steps, steps_per_epoch=steps_per_epoch)
    main_steps = max(1, total_steps - warmup)  # what follows the warmup
    plateau, length = None, None
    if name == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=max(1, int(settings["step_size"]) * steps_per_epoch),
                                   gamma=float(settings["gamma"]))
    elif name == "cosine":
        t_max = settings.get("t_max")
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(t_max) if t_max else main_steps,
                                              eta_min=float(settings["eta_min"]))
        length = warmup + (int(t_max) if t_max else main_steps)
    elif name == "onecycle":
        max_lr, pct_start = settings.get("max_lr"), float(settings["pct_start"])
        cycle_steps = max(2, total_steps)
        if pct_start * cycle_steps == 1:  # OneCycleLR divides by zero; only a dev run gets here (check_schedule)
            cycle_steps += 1
        main = lr_scheduler.OneCycleLR(
            optimizer, max_lr=float(max_lr) if max_lr else [g["lr"] for g in optimizer.param_groups],
            total_steps=cycle_steps, pct_start=pct_start,
            div_factor=float(settings["div_factor"]), final_div_factor=float(settings["final_div_factor"]),
            anneal_strategy=str(settings["anneal_strategy"]), cycle_momentum=False)
        length = cycle_steps - 1  # OneCycleLR refuses to step past its total
    else:  # none or plateau: only the warmup steps per optimizer step
        main = None
        if name == "plateau":
            plateau = lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=float(settings["factor"]), patience=int(settings["patience"]),
                threshold=float(settings["threshold"]), min_lr=float(settings["min_lr"]))
    if warmup:
        # the lr rises linearly: step i (from 0) trains at lr * (i + 1) / (warmup_steps + 1)
        ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
        per_step = ramp if main is None else lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
        length = warmup if main is None else length
    else:
        per_step = main
    return Schedule(name, per_step, length, plateau, warmup)


# --- settings that contradict the run ------------------------------------------------------------
def check_schedule(settings: Mapping[str, Any], lr: float, *, total_steps: int | None, steps_per_epoch: int) -> None:
    """Refuse (ConfigError) a schedule that would do the opposite of what it is for, or nothing, in
    this run: an lr annealed or cut *up* to eta_min/min_lr, a warmup as long as the run (it would
    train at a fraction of optimizer.lr and be reported healthy), a step schedule whose first decay
    comes after the last step. Warn where it does less than its name says: a warmup over half the
    run, a cosine longer than the run, a plateau patience the run cannot reach. ``lr``: the
    optimizer's; ``total_steps`` None: lengths not checked (a dev run). A resume with more epochs
    only lengthens the run, so a run that started never fails these on its resume."""
    name = settings.get("name", "none")
    floor_key = {"cosine": "eta_min", "plateau": "min_lr"}.get(name)
    if floor_key is not None and float(settings[floor_key]) >= lr:
        goal = "anneals from optimizer.lr down to it" if name == "cosine" else "cuts the lr down to it, never up"
        raise ConfigError(f"scheduler.{floor_key}", settings[floor_key], f"a number below optimizer.lr={lr:g}",
                          f"scheduler={name} {goal}")
    if total_steps is None:
        return
    warmup = int(settings.get("warmup_steps", 0))
    check_warmup(warmup, total_steps, steps_per_epoch)
    main_steps = total_steps - warmup  # what the schedule after the warmup has of the run
    if name == "step":
        check_step_size(int(settings["step_size"]), warmup, main_steps, steps_per_epoch)
    elif name == "cosine" and settings.get("t_max") and int(settings["t_max"]) > main_steps:
        t_max, eta_min = int(settings["t_max"]), float(settings["eta_min"])
        last_lr = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * main_steps / t_max)) / 2
        log.warning("scheduler.t_max=%d is longer than the %d steps the run has after its warmup: the lr ends at "
                    "%.3g, not at scheduler.eta_min=%g (t_max=null spans the run)", t_max, main_steps, last_lr, eta_min)
    elif name == "onecycle" and float(settings["pct_start"]) * total_steps <= 1:
        raise ConfigError("scheduler.pct_start", settings["pct_start"], f"a fraction above {1 / total_steps:.3g}, "
                          f"1 of {_run_steps(total_steps, steps_per_epoch)}",
                          "the rise to max_lr must span at least one step (at exactly one torch's OneCycleLR "
                          "divides by zero)")
    elif name == "plateau":
        warn_plateau_unreachable(int(settings["patience"]), warmup, total_steps, steps_per_epoch)


def _run_steps(total_steps: int, steps_per_epoch: int) -> str:
    return f"the run's {total_steps} optimizer steps ({total_steps // steps_per_epoch} epochs of {steps_per_epoch})"


def check_warmup(warmup: int, total_steps: int, steps_per_epoch: int) -> None:
    """A warmup is a short ramp in front of the run: refused when it lasts the whole run, warned
    over half of it (step i trains at optimizer.lr * (i + 1) / (warmup_steps + 1))."""
    if warmup >= total_steps:
        raise ConfigError("scheduler.warmup_steps", warmup, f"an integer below {total_steps}, "
                          f"{_run_steps(total_steps, steps_per_epoch)}",
                          "a warmup that long trains the whole run at a fraction of optimizer.lr")
    if 2 * warmup > total_steps:
        log.warning("scheduler.warmup_steps=%d is %.0f%% of %s: the lr reaches optimizer.lr only at step %d, "
                    "%d steps before the end", warmup, 100 * warmup / total_steps,
                    _run_steps(total_steps, steps_per_epoch), warmup, total_steps - warmup)


def check_step_size(step_size: int, warmup: int, main_steps: int, steps_per_epoch: int) -> None:
    """scheduler=step decays first at step warmup + step_size epochs: refused after the run's last step."""
    if step_size * steps_per_epoch < main_steps:
        return
    after = " after its warmup" if warmup else ""
    raise ConfigError("scheduler.step_size", step_size, f"an integer below {main_steps / steps_per_epoch:g}, the "
                      f"epochs the run trains{after} ({main_steps} optimizer steps, {steps_per_epoch} an epoch)",
                      "the first decay would come after the last step and the lr would never change")


def warn_plateau_unreachable(patience: int, warmup: int, total_steps: int, steps_per_epoch: int) -> None:
    """ReduceLROnPlateau cuts at the earliest on the (patience + 2)th epoch it counts (the first sets
    the best); a cut after the last epoch trains nothing."""
    epochs = total_steps // steps_per_epoch
    counted = epochs - max(1, math.ceil(warmup / steps_per_epoch)) + 1  # epochs ending after the warmup
    if patience + 2 >= counted:
        log.warning("scheduler.patience=%d: scheduler=plateau cuts the lr after %d epochs without improvement, and "
                    "the run validates %d times%s: the lr cannot change before the run ends", patience,
                    patience + 1, counted, " after its warmup" if warmup else "")

"""Learning-rate schedules (``configs/scheduler/``) built from torch.optim.lr_scheduler.

A schedule steps once per optimizer step (``step``, ``cosine``, ``onecycle``, and the linear warmup
of ``scheduler.warmup_steps``), except ``plateau``, which steps once per epoch on the validation
objective. A schedule over the run (cosine, onecycle) has the length of the run it started with:
a resume with more epochs keeps the lr at its last value once that length is reached.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler


class Schedule:
    """What the trainer calls: ``after_step()`` after every optimizer step, ``after_epoch(value)``
    with the validation objective; ``state_dict``/``load_state_dict`` for checkpoints.

    ``per_step``: a torch scheduler stepped every optimizer step for ``length`` steps (None: for
    ever); ``plateau``: a ReduceLROnPlateau stepped per epoch once the warmup is over."""

    def __init__(self, name: str, per_step: lr_scheduler.LRScheduler | None, length: int | None,
                 plateau: lr_scheduler.ReduceLROnPlateau | None = None, warmup_steps: int = 0):
        self.name, self.per_step, self.length, self.plateau = name, per_step, length, plateau
        self.warmup_steps = warmup_steps
        self.steps = 0  # optimizer steps taken under this schedule

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
                   steps_per_epoch: int, mode: str = "min") -> Schedule | None:
    """The run's schedule from ``cfg.scheduler`` (None, or ``none`` without warmup: no schedule).

    ``total_steps``: optimizer steps of the whole run (cosine and onecycle span them by default);
    ``mode``: ``objective.mode``, for plateau."""
    settings = dict(settings or {"name": "none"})
    name, warmup = settings.get("name", "none"), int(settings.get("warmup_steps", 0))
    if name == "none" and warmup == 0:
        return None
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
        max_lr = settings.get("max_lr")
        main = lr_scheduler.OneCycleLR(
            optimizer, max_lr=float(max_lr) if max_lr else [g["lr"] for g in optimizer.param_groups],
            total_steps=max(2, total_steps), pct_start=float(settings["pct_start"]),
            div_factor=float(settings["div_factor"]), final_div_factor=float(settings["final_div_factor"]),
            anneal_strategy=str(settings["anneal_strategy"]), cycle_momentum=False)
        length = max(2, total_steps) - 1  # OneCycleLR refuses to step past its total
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

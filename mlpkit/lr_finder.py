"""The learning-rate range test (Smith 2017; fastai's ``lr_find``, Lightning's tuner): train a copy
of the run's freshly initialised model for a bounded number of steps with the learning rate growing
exponentially from ``lr_find.min_lr`` to ``lr_find.max_lr``, stop when the loss diverges, and suggest
a learning rate from the smoothed loss curve.

Rules (``lr_find.rule``): ``minimum``, the lr where the smoothed loss is lowest, divided by 10 (the
loss there is about to blow up; a tenth of it still descends quickly); ``steepest``, the lr where
the smoothed loss falls fastest per decade of lr. The test runs on a deep copy of the model and
its own optimizer, draws its batches with a generator of its own and puts torch's global random
state back afterwards, so the run that follows starts exactly as it would without it.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mlpkit.errors import ConfigError

log = logging.getLogger("mlpkit")

RULES = ("minimum", "steepest")
SMOOTHING = 0.98  # the loss's exponential moving average (fastai's beta), debiased
DIVERGED = 4.0  # the test stops once the smoothed loss exceeds this multiple of its lowest value
SKIP_START = 5  # the first points are too noisy to judge a slope from
FIGURE = "lr_find.png"
RESULT = "lr_find.json"


@dataclass
class LRFinderResult:
    """The range test's curve and its suggestion (``lr_find.json``)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    rule: str
    stopped: str  # why the test ended: "diverged at lr ...", "reached lr_find.max_lr"
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        how = ("the lowest smoothed loss's lr / 10" if self.rule == "minimum"
               else "the steepest descent of the smoothed loss")
        return (f"lr_find: {len(self.lrs)} steps from lr {self.lrs[0]:.3g} to {self.lrs[-1]:.3g} ({self.stopped}); "
                f"suggested optimizer.lr={self.suggestion:.3g} (rule {self.rule}: {how})")


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """``lr_find``'s keys, checked: one line each for an empty or inverted range or too few steps."""
    found = OmegaConf.to_container(cfg.lr_find, resolve=True)
    min_lr, max_lr, steps, rule = found["min_lr"], found["max_lr"], found["steps"], found["rule"]
    for key, value in (("lr_find.min_lr", min_lr), ("lr_find.max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(key, value, "a finite positive learning rate, e.g. 1e-7")
    if max_lr <= min_lr:
        raise ConfigError("lr_find.max_lr", max_lr, f"a learning rate above lr_find.min_lr={min_lr}",
                          "the range test sweeps from lr_find.min_lr up to lr_find.max_lr")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
        raise ConfigError("lr_find.steps", steps, "an integer >= 10 (a curve to read a slope from)")
    if rule not in RULES:
        raise ConfigError("lr_find.rule", rule, f"one of {', '.join(RULES)}")
    return found


def wants_lr_found(cfg: DictConfig) -> bool:
    """``optimizer.lr=auto`` (or a onecycle ``scheduler.max_lr=auto``): the range test sets it."""
    return str(cfg.optimizer.lr) == "auto" or str(OmegaConf.select(cfg, "scheduler.max_lr", default=None)) == "auto"


def placeholder(cfg: DictConfig) -> DictConfig:
    """``cfg`` with a numeric lr in place of ``auto`` (the probe's optimizer is rebuilt anyway)."""
    probe = copy.deepcopy(cfg)
    with open_dict(probe):
        if str(probe.optimizer.lr) == "auto":
            probe.optimizer.lr = 1e-3
        if str(OmegaConf.select(probe, "scheduler.max_lr", default=None)) == "auto":
            probe.scheduler.max_lr = None
    return probe


def find_lr(cfg: DictConfig, data: Any) -> LRFinderResult:
    """The range test for the run ``cfg`` describes, on ``data``: its model as the run would
    initialise it (``mlpkit.assemble``), trained on a copy; nothing of the run is changed."""
    from mlpkit.assemble import assemble

    found = settings_of(cfg)
    global_state, level = torch.random.get_rng_state(), log.level
    log.setLevel(logging.WARNING)  # the probe's model printout: the run prints its own
    try:
        parts = assemble(placeholder(cfg), data, diagnostics=False)
    finally:
        log.setLevel(level)
    try:
        return range_test(parts, found, int(cfg.trainer.seed))
    finally:
        torch.random.set_rng_state(global_state)


def range_test(parts: Any, found: dict[str, Any], seed: int) -> LRFinderResult:
    from mlpkit.assemble import build_run_optimizer

    trainer, train = parts.trainer, parts.data.train
    model = copy.deepcopy(parts.model).train()
    cfg = OmegaConf.create(trainer.settings.config)
    optimizer = build_run_optimizer(cfg, model, parts.device)
    steps, min_lr, max_lr = found["steps"], float(found["min_lr"]), float(found["max_lr"])
    generator = torch.Generator().manual_seed(seed)
    batch = trainer.settings.batch_size
    lrs, losses, smoothed, average, stopped = [], [], [], 0.0, "reached lr_find.max_lr"
    order = torch.randperm(len(train), generator=generator)
    for step in range(steps):
        lr = min_lr * (max_lr / min_lr) ** (step / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        start = (step * batch) % max(1, len(train) - batch + 1)
        x, y = train.batch(order[start:start + batch].to(train.x.device), parts.device)
        optimizer.zero_grad(set_to_none=True)
        loss = parts.objective.loss(model.logits(x), y)
        loss.backward()
        optimizer.step()
        value = loss.item()  # one host transfer a step: the test must see the loss to stop
        if not math.isfinite(value):
            stopped = f"the loss became {value} at lr {lr:.3g}"
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        lrs.append(lr), losses.append(value), smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
        if step > SKIP_START and smoothed[-1] > DIVERGED * min(smoothed):
            stopped = f"diverged at lr {lr:.3g}"
            break
    if len(lrs) <= SKIP_START + 2:
        raise ConfigError("lr_find.min_lr", min_lr, "a range whose first steps train",
                          f"the loss diverged after {len(lrs)} of {steps} steps: lower lr_find.min_lr")
    suggestion = suggest(np.asarray(lrs), np.asarray(smoothed), found["rule"])
    return LRFinderResult(lrs, losses, smoothed, suggestion, found["rule"], stopped, found)


def suggest(lrs: np.ndarray, smoothed: np.ndarray, rule: str) -> float:
    """The suggested lr of a smoothed curve by ``rule`` (the first SKIP_START points left out)."""
    lrs, smoothed = lrs[SKIP_START:], smoothed[SKIP_START:]
    if rule == "minimum":
        return float(lrs[int(np.argmin(smoothed))] / 10)
    slopes = np.gradient(smoothed, np.log10(lrs))
    lowest = int(np.argmin(smoothed))
    return float(lrs[int(np.argmin(slopes[:lowest + 1]))])  # steepest before the minimum


def apply(cfg: DictConfig, result: LRFinderResult) -> None:
    """The suggestion into the run's config: ``optimizer.lr`` (and a onecycle ``scheduler.max_lr``) that
    were ``auto``; the config the run saves then holds the lr it trained with."""
    with open_dict(cfg):
        if str(cfg.optimizer.lr) == "auto":
            cfg.optimizer.lr = result.suggestion
        if str(OmegaConf.select(cfg, "scheduler.max_lr", default=None)) == "auto":
            cfg.scheduler.max_lr = result.suggestion


def write(result: LRFinderResult, run_dir: Path, logger: Any = None) -> None:
    """``lr_find.json``, the figure ``lr_find.png`` and, with a logger, the curve as TensorBoard scalars
    (``lr_find/loss``, ``lr_find/loss_smoothed``, ``lr_find/lr`` by step) and the figure."""
    import json

    from mlpkit.figures import figure_to_rgb, lr_find_figure, save_png

    (Path(run_dir) / RESULT).write_text(json.dumps(asdict(result), indent=2) + "\n")
    figure = lr_find_figure(result.lrs, result.losses, result.smoothed, result.suggestion, result.rule)
    save_png(figure, Path(run_dir) / FIGURE)
    if logger is not None:
        for step, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed)):
            logger.log_scalars({"lr_find/lr": lr, "lr_find/loss": loss, "lr_find/loss_smoothed": smooth}, step)
        logger.log_image("lr_find", figure_to_rgb(figure), step=0)
        logger.log_text("lr_find", result.describe())

"""Build a run's parts from its config: device, data, objective, model, optimizer, monitor, callbacks
and the Trainer that holds them. The command line, the Python API, the benchmark, the calibration
script and the tests all build a run here, so a run is the same whichever way it starts.

Every check that can refuse the run (memory, batch norm on one-row batches, a schedule that
contradicts the run, a callback that does not import) runs here, before the caller writes anything.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mlpkit.averaging import WeightAveraging
from mlpkit.callbacks import Callback, import_callbacks
from mlpkit.checkpointing import Checkpointer
from mlpkit.clipping import GradientClipper
from mlpkit.data import Data, build_data
from mlpkit.data.stream import check_stream_ranks
from mlpkit.diagnostics import GradientMonitor
from mlpkit.distributed import check_ranks_fit, gradient_sync, rank_device, resolve_strategy
from mlpkit.early_stopping import EarlyStopping
from mlpkit.errors import ConfigError
from mlpkit.model import (
    MLP,
    check_batch_norm_batches,
    check_fits_memory,
    count_parameters,
    model_from_config,
    model_summary,
)
from mlpkit.objective import Objective, build_objective
from mlpkit.optimizers import build_optimizer
from mlpkit.pruning import pruning_callbacks
from mlpkit.runtime import limit_threads, seed_everything
from mlpkit.sanity import OverfitCheck
from mlpkit.schedules import build_schedule
from mlpkit.schema import objective_mode
from mlpkit.settings import TrainerSettings
from mlpkit.trainer import Trainer
from mlpkit.verdicts import Thresholds

log = logging.getLogger("mlpkit")


@dataclass
class Parts:
    """A run ready to train: ``trainer.fit()``."""

    device: torch.device
    data: Data
    objective: Objective
    model: MLP
    optimizer: torch.optim.Optimizer
    trainer: Trainer
    checkpointer: Checkpointer | None


def prepare_device(cfg: DictConfig) -> torch.device:
    """``trainer.device`` resolved and checked, with its matmul precision and torch's thread count."""
    from mlpkit.acceleration import check_settings, resolve_device, set_matmul_precision

    device = resolve_device(str(cfg.trainer.device))
    if resolve_strategy(cfg.trainer.strategy) == "ddp":
        device = rank_device(device)  # cuda:LOCAL_RANK: one GPU per rank
    check_settings(device, cfg.trainer.compile, cfg.trainer.cuda_graphs, str(cfg.trainer.precision))
    set_matmul_precision(device, cfg.trainer.tf32)
    limit_threads(cfg.trainer.num_threads)
    if cfg.trainer.deterministic:
        make_deterministic(device)
    return device


def make_deterministic(device: torch.device) -> None:
    """``trainer.deterministic=true``: torch's deterministic algorithms (an operation without one
    raises), and on CUDA the cuBLAS workspace they need; said at the start."""
    import os

    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: set before any matmul
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    log.info("trainer.deterministic=true: torch.use_deterministic_algorithms(True)%s; the same seed gives the "
             "same weights, bit for bit, on this machine", ", CUBLAS_WORKSPACE_CONFIG=:4096:8" if device.type == "cuda"
             else "")


def load_data(cfg: DictConfig, device: torch.device) -> Data:
    return build_data(OmegaConf.to_container(cfg.data, resolve=True), device)


def assemble(cfg: DictConfig, data: Data, *, checkpoint_dir: Path | None = None, progress: bool = False,
             callbacks: Sequence[Callback] = (), logger: Any = None, diagnostics: bool = True) -> Parts:
    """The parts of the run ``cfg`` describes (validated: ``mlpkit.config.validate``), on ``data``.
    ``checkpoint_dir``: where checkpoints go (None: none are written); ``callbacks``: a user's own,
    after those ``trainer.callbacks`` names; ``logger``: the TensorBoard logger, or None (the caller
    may set ``trainer.logger`` once the run's directory is ready); ``diagnostics=False``: no gradient
    monitor (the benchmark measures what it costs)."""
    device = data.device
    objective = build_run_objective(cfg, data)
    check_fits_memory(data.in_features, objective.out_features, list(cfg.model.hidden_sizes), device)
    settings = trainer_settings(cfg, progress)
    check_batch_norm_batches(cfg.model.norm, len(data.train), settings.batch_size, drop_last=settings.drop_last,
                             limit_batches=1 if settings.fast_dev_run else settings.overfit_batches)
    sync = gradient_sync(cfg.trainer.strategy)
    if sync is not None:
        check_ranks_fit(sync.ranks, len(data.train), settings.batch_size, str(cfg.model.norm), settings.drop_last)
        check_stream_ranks(data.train, sync.ranks)
    seed_everything(settings.seed)
    model = model_from_config(cfg, data.in_features, objective.out_features, objective.head).to(device)
    if sync is not None:
        sync.broadcast_model(model)  # equal already (the same seed): a guard
    log.info("model: head=%s loss=%s, %d parameters on %s\n%s\n%s", objective.head, objective.loss_name,
             count_parameters(model), device, model, model_summary(model))
    optimizer = build_run_optimizer(cfg, model, device)
    monitor = None if not diagnostics else GradientMonitor(model, histogram_every_n_steps=cfg.diagnostics.histogram_every_n_steps,
                              figure_every_n_steps=cfg.diagnostics.figure_every_n_steps,
                              statistics_every=cfg.diagnostics.statistics_every,
                              thresholds=Thresholds.from_mapping(cfg.diagnostics))
    parts = [*remedies(cfg, optimizer, model, settings, len(data.train), device),
             *pruning_callbacks(cfg.get("sweep"), cfg.data.get("cv_fold")),
             *import_callbacks(list(cfg.trainer.callbacks)), *callbacks]
    checkpointer = None
    if checkpoint_dir is not None:  # last: a checkpoint holds every other callback's state
        checkpointer = Checkpointer(checkpoint_dir, cfg.trainer.checkpoint_every_n_steps,
                                    cfg.trainer.checkpoint_min_seconds)
        parts.append(checkpointer)
    trainer = Trainer(model, objective, optimizer, data, settings, logger=logger, monitor=monitor, callbacks=parts)
    trainer.sync = sync
    return Parts(device, data, objective, model, optimizer, trainer, checkpointer)


def build_run_objective(cfg: DictConfig, data: Data) -> Objective:
    """The head and loss for the data's task, and the validation metric checked against it."""
    loss = cfg.loss
    objective = build_objective(
        cfg.head.name, loss.name, data.task, data.name, data.n_classes, data.n_targets,
        # each loss group has the keys its loss takes (configs/loss/, mlpkit.schema)
        label_smoothing=loss.get("label_smoothing", 0.0), pos_weight=loss.get("pos_weight"),
        target_mean=data.target_mean, target_std=data.target_std, class_weights=loss.get("class_weights"),
        train_targets=data.train.y if loss.get("class_weights") == "balanced" else None)  # a stream reads them
    if objective.class_weights is not None:
        log.info("loss.class_weights=%s: %s", loss.class_weights, ", ".join(
            f"{name} {weight:.3g}" for name, weight in zip(data.class_names, objective.class_weights)))
    if cfg.objective.metric not in objective.metric_names:
        raise ConfigError("objective.metric", cfg.objective.metric,
                          f"one of {', '.join(objective.metric_names)} for a {data.task} task")
    return objective


def build_run_optimizer(cfg: DictConfig, model: MLP, device: torch.device) -> torch.optim.Optimizer:
    from mlpkit.acceleration import resolve_fused

    settings = OmegaConf.to_container(cfg.optimizer, resolve=True)
    fused = {"fused": resolve_fused(settings["fused"], device)} if "fused" in settings else {}
    return build_optimizer(settings, model.parameters(), **fused)


def trainer_settings(cfg: DictConfig, progress: bool = False) -> TrainerSettings:
    trainer = cfg.trainer
    return TrainerSettings(
        max_epochs=trainer.max_epochs, batch_size=trainer.batch_size, seed=trainer.seed,
        log_every_n_steps=trainer.log_every_n_steps, metric=cfg.objective.metric,
        mode=objective_mode(cfg.objective.metric, cfg.objective.mode),
        on_nonfinite=trainer.on_nonfinite, precision=str(trainer.precision), compile=trainer.compile,
        cuda_graphs=trainer.cuda_graphs, overfit_batches=int(trainer.overfit_batches),
        fast_dev_run=bool(trainer.fast_dev_run), progress=progress,
        config=OmegaConf.to_container(cfg, resolve=True),
        accumulate_grad_batches=int(trainer.accumulate_grad_batches),
        limit_train_batches=trainer.limit_train_batches, limit_val_batches=trainer.limit_val_batches)


def remedies(cfg: DictConfig, optimizer: torch.optim.Optimizer, model: MLP, settings: TrainerSettings, rows: int,
             device: torch.device) -> list[Callback]:
    """Gradient clipping, the learning-rate schedule and early stopping, as callbacks."""
    trainer = cfg.trainer
    built: list[Callback] = []
    if trainer.gradient_clip_val > 0:
        built.append(GradientClipper(model.parameters(), trainer.gradient_clip_val,
                                     str(trainer.gradient_clip_algorithm), device))
    scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") is not None else None
    schedule = build_schedule(optimizer, scheduler, total_steps=settings.total_steps(rows),
                              steps_per_epoch=settings.batches_per_epoch(rows), mode=settings.mode,
                              dev_run=settings.fast_dev_run)
    if schedule is not None:
        built.append(schedule)
    early = trainer.early_stopping
    built.append(EarlyStopping(int(early.patience), float(early.min_delta), settings.mode))
    if settings.overfit_batches:
        built.append(OverfitCheck())
    if trainer.ema_decay or trainer.swa_start:
        built.append(WeightAveraging(model, float(trainer.ema_decay), int(trainer.swa_start)))
    return built

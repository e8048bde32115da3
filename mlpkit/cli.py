"""The Hydra entry point: compose, validate, wire data -> model -> trainer -> loggers, report."""
from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlpkit.config import ConfigError, validate

log = logging.getLogger("mlpkit")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    """Train one run; return the validation objective so sweepers can minimise or maximise it."""
    hydra_cfg = HydraConfig.get()
    try:
        return run(cfg, Path(hydra_cfg.runtime.output_dir))
    except ConfigError as error:
        log.error("Config error: %s", error)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the launcher marks this job failed and the sweep goes on
        sys.exit(2)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu", "no CUDA device is available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu", "no MPS device is available here")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def show_progress(setting: str | bool) -> bool:
    if str(setting) == "auto":
        return sys.stdout.isatty() and sys.stderr.isatty()
    return bool(setting)


def run(cfg: DictConfig, run_dir: Path) -> float:
    """Everything one run does, from a composed config to metrics.json."""
    from mlpkit.data import build_data
    from mlpkit.model import build_model, count_parameters
    from mlpkit.objective import build_objective
    from mlpkit.tensorboard import TensorBoardLogger
    from mlpkit.trainer import Trainer

    started = time.perf_counter()
    validate(cfg)
    device = resolve_device(str(cfg.trainer.device))
    data = build_data(OmegaConf.to_container(cfg.data, resolve=True), device)
    log.info(data.describe())
    objective = build_objective(
        cfg.head.name, cfg.loss.name, data.task, data.name, data.n_classes, data.n_targets,
        label_smoothing=cfg.loss.get("label_smoothing", 0.0), pos_weight=cfg.loss.get("pos_weight"),
        target_mean=data.target_mean, target_std=data.target_std,
    )
    if cfg.objective.metric not in objective.metric_names:
        raise ConfigError("objective.metric", cfg.objective.metric,
                          f"one of {', '.join(objective.metric_names)} for a {data.task} task")

    seed_everything(cfg.trainer.seed)
    activation_params = {k: v for k, v in cfg.activation.items() if k != "name"}
    model = build_model(
        data.in_features, objective.out_features, list(cfg.model.hidden_sizes), cfg.activation.name,
        activation_params, objective.head, dropout=cfg.model.dropout, init=cfg.model.init,
        bias=cfg.model.get("bias", True),
    ).to(device)
    log.info("model: head=%s loss=%s, %d parameters on %s\n%s", objective.head, objective.loss_name,
             count_parameters(model), device, model)
    optimizer = hydra.utils.instantiate(cfg.optimizer, params=model.parameters(), _convert_="all")

    logger = TensorBoardLogger(run_dir)
    logger.log_text("model", str(model))
    logger.log_text("config", OmegaConf.to_yaml(cfg))
    trainer = Trainer(
        model, objective, optimizer, data,
        max_epochs=cfg.trainer.max_epochs, batch_size=cfg.trainer.batch_size, seed=cfg.trainer.seed,
        log_every_n_steps=cfg.trainer.log_every_n_steps, logger=logger,
        progress=show_progress(cfg.trainer.progress),
    )
    try:
        result = trainer.fit()
    finally:
        logger.close()

    result = {
        "dataset": data.name, "task": data.task, "head": objective.head, "loss": objective.loss_name,
        "activation": cfg.activation.name, "hidden_sizes": list(cfg.model.hidden_sizes),
        "parameters": count_parameters(model), "device": str(device), **result,
        "wall_seconds": time.perf_counter() - started,
    }
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    report(result, run_dir)
    return result["val"][cfg.objective.metric]


def report(result: dict, run_dir: Path) -> None:
    def line(split: str) -> str:
        return ", ".join(f"{name} {value:.4g}" for name, value in result[split].items())

    log.info("done in %.1fs (%.0f samples/s): %d epochs, %d steps",
             result["wall_seconds"], result["samples_per_second"], result["epochs"], result["steps"])
    for split in ("train", "val", "test"):
        log.info("  %-5s %s", split, line(split))
    log.info("run directory: %s", run_dir)
    log.info("view it: tensorboard --logdir %s", run_dir)

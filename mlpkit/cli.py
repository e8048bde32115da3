"""The Hydra entry point: compose, validate, wire data -> model -> trainer -> loggers, report.

Torch, numpy and every module that imports them load inside the functions that train, not here:
``python train.py --help`` and ``--cfg job`` import this module and need none of them (torch alone
takes over a second to import).
"""
from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlpkit.config import CONFIG_DIR, report_config_errors, validate
from mlpkit.errors import EXIT_CONFIG, EXIT_NONFINITE, EXIT_SIGNAL, ConfigError, TrainingStopped
from mlpkit.rundir import check_new_run_dir, record_resume, register_resolvers, write_json

log = logging.getLogger("mlpkit")


def main() -> None:
    """`python train.py` and `mlpkit-train`: Hydra's CLI, with config mistakes as one line, exit 2."""
    register_resolvers()  # configs/hydra/default.yaml names run directories through them
    report_config_errors(train, "train")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train(cfg: DictConfig) -> float:
    """Train one run; return the validation objective so sweepers can minimise or maximise it."""
    hydra_cfg = HydraConfig.get()
    try:
        # the overrides as typed: resolving them (data.path='${nope}') would fail before the config is checked
        overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
        return run(cfg, Path(hydra_cfg.runtime.output_dir), overrides)
    except (ConfigError, TrainingStopped) as error:
        exit_code = error.exit_code
        if hydra_cfg.mode == RunMode.MULTIRUN and exit_code in (EXIT_CONFIG, EXIT_NONFINITE):
            raise  # the launcher marks this job failed and the sweep goes on
        sys.exit(exit_code)  # a signal stops a whole sweep too


@contextmanager
def stop_on_signals(trainer):
    """SIGINT (Ctrl-C) and SIGTERM (what SLURM sends before time runs out) ask the trainer to save
    a checkpoint and stop after the current step; a second Ctrl-C interrupts at once. Off the main
    thread (mlpkit.train from a worker thread) Python allows no handlers: the signals keep their own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        trainer.stop_signal = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    # A signal the parent set to be ignored stays ignored (Python's own rule for SIGINT): a script's
    # shell starts a command run in the background with `&` so, and a Ctrl-C to the script must
    # not stop it.
    handling = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, request_stop) for sig in handling}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if trainer.stop_signal is not None:
        # It came after the last step (the run's checkpoints and metrics.json are written): pass it
        # on as the exit code, so that a Ctrl-C during the final evaluation still stops the process,
        # or a sweep of many runs.
        stop = TrainingStopped.by_signal(f"stopped by signal {trainer.stop_signal} after the last step; the run "
                                         "is complete", trainer.stop_signal)
        stop.completed = True
        raise stop


@contextmanager
def held_run_log(run_dir: Path, holding: bool):
    """While ``holding`` (a resume not yet accepted), lines for the run's train.log are held back: a
    refused resume leaves the run's log as it was (the console still shows them), an accepted one
    writes them."""
    if not holding:
        yield
        return
    run_dir = Path(run_dir).resolve()
    files = [handler for logger in (logging.getLogger(), log) for handler in logger.handlers
             if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir]
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    for handler in files:
        handler.addFilter(hold)
    yield  # refused: the handlers keep dropping the run's lines, its error line too, until the run ends
    for handler in files:
        handler.removeFilter(hold)
    for record in held:  # accepted: the lines reach train.log after all
        for handler in files:
            handler.handle(record)


def limit_threads(setting: int | str) -> None:
    """Jobs x threads <= cores when a launcher runs jobs side by side."""
    import torch  # here, not at the top: see the module docstring

    from mlpkit.acceleration import torch_threads

    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    threads = torch_threads(setting, launcher)
    if threads is not None:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    import numpy as np  # here, not at the top: see the module docstring
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def show_progress(setting: str | bool) -> bool:
    if str(setting) == "auto":  # a terminal, or a Jupyter notebook: its output is no tty, but tqdm.auto draws there
        return (sys.stdout.isatty() and sys.stderr.isatty()) or in_notebook()
    return bool(setting)


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (the test tqdm.auto makes, without importing IPython)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def run(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> float:
    """Everything one run does, from a composed config (and the command-line ``overrides`` it was
    composed with) to metrics.json; errors logged once."""
    try:
        return train_run(cfg, run_dir, overrides)
    except ConfigError as error:
        log.error("Config error: %s", error)
        raise
    except TrainingStopped as stop:
        log.error("%s", stop)
        if not stop.nonfinite and not stop.completed:
            log.error("resume with: python train.py resume=%s", run_dir)
        raise


def train_run(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> float:
    from mlpkit import figures  # cheap: matplotlib is imported inside the figure functions
    from mlpkit.acceleration import check_settings, resolve_device, resolve_fused, set_matmul_precision
    from mlpkit.checkpoint import CHECKPOINT_DIR
    from mlpkit.data import build_data, save_label_mapping, save_preprocessing
    from mlpkit.diagnostics import GradientMonitor, layout
    from mlpkit.model import (
        activation_params,
        check_batch_norm_batches,
        check_fits_memory,
        count_parameters,
        model_from_config,
        model_summary,
    )
    from mlpkit.objective import build_objective
    from mlpkit.optimizers import build_optimizer
    from mlpkit.resume import accept_resume, start_continued_dir, write_continued_config
    from mlpkit.resume import describe as describe_resume
    from mlpkit.runs import check_same_data
    from mlpkit.tensorboard import TensorBoardLogger
    from mlpkit.trainer import CHECKPOINT_MIN_SECONDS, Trainer
    from mlpkit.verdicts import Thresholds

    started = time.perf_counter()
    resume = None
    with held_run_log(run_dir, holding=bool(cfg.get("resume"))):
        if cfg.get("resume"):  # the run goes on with its saved config: nothing is written before it is accepted
            cfg, resume = accept_resume(cfg, run_dir, list(overrides))
        else:
            check_new_run_dir(run_dir)
        validate(cfg)  # before anything is loaded
        device = resolve_device(str(cfg.trainer.device))
        check_settings(device, cfg.trainer.compile, cfg.trainer.cuda_graphs)
        set_matmul_precision(device, cfg.trainer.tf32)
        limit_threads(cfg.trainer.num_threads)
        data = build_data(OmegaConf.to_container(cfg.data, resolve=True), device)
        log.info(data.describe())
        if resume is not None and resume.source_dir is not None:
            check_same_data(resume.source_dir, data.fingerprint(), "resume", cfg.resume,
                            "a run whose data is unchanged")
    fresh = resume is None or not resume.here  # a new directory: the run's own files are written there
    thresholds = Thresholds.from_mapping(cfg.diagnostics)
    objective = build_objective(
        cfg.head.name, cfg.loss.name, data.task, data.name, data.n_classes, data.n_targets,
        label_smoothing=cfg.loss.get("label_smoothing", 0.0), pos_weight=cfg.loss.get("pos_weight"),
        target_mean=data.target_mean, target_std=data.target_std,
        class_weights=cfg.loss.get("class_weights"), train_targets=data.train.y,
    )
    if objective.class_weights is not None:
        log.info("loss.class_weights=%s: %s", cfg.loss.class_weights, ", ".join(
            f"{name} {weight:.3g}" for name, weight in zip(data.class_names, objective.class_weights)))
    if cfg.objective.metric not in objective.metric_names:
        raise ConfigError("objective.metric", cfg.objective.metric,
                          f"one of {', '.join(objective.metric_names)} for a {data.task} task")

    check_fits_memory(data.in_features, objective.out_features, list(cfg.model.hidden_sizes), device)
    check_batch_norm_batches(cfg.model.get("norm", "none"), len(data.train), cfg.trainer.batch_size,
                             drop_last=cfg.trainer.compile or cfg.trainer.cuda_graphs,
                             limit_batches=1 if cfg.trainer.get("fast_dev_run") else cfg.trainer.get("overfit_batches"))
    seed_everything(cfg.trainer.seed)
    model = model_from_config(cfg, data.in_features, objective.out_features, objective.head).to(device)
    log.info("model: head=%s loss=%s, %d parameters on %s\n%s\n%s", objective.head, objective.loss_name,
             count_parameters(model), device, model, model_summary(model))
    fused = resolve_fused(cfg.optimizer.get("fused"), device)
    optimizer = build_optimizer(OmegaConf.to_container(cfg.optimizer, resolve=True), model.parameters(),
                                **({"fused": fused} if "fused" in cfg.optimizer else {}))

    if fresh:
        save_label_mapping(data, run_dir)
        save_preprocessing(data, run_dir)
    if resume is not None and not resume.here:
        write_continued_config(run_dir, cfg)
    logger = TensorBoardLogger(run_dir, purge_step=purge_step(resume.state) if resume and resume.here else None)
    monitor = GradientMonitor(model, histogram_every_n_steps=cfg.diagnostics.histogram_every_n_steps,
                              figure_every_n_steps=cfg.diagnostics.figure_every_n_steps,
                              statistics_every=cfg.diagnostics.get("statistics_every", "auto"), thresholds=thresholds)
    trainer = Trainer(
        model, objective, optimizer, data, logger=logger, monitor=monitor,
        max_epochs=cfg.trainer.max_epochs, batch_size=cfg.trainer.batch_size, seed=cfg.trainer.seed,
        log_every_n_steps=cfg.trainer.log_every_n_steps, progress=show_progress(cfg.trainer.progress),
        checkpoint_dir=run_dir / CHECKPOINT_DIR,
        checkpoint_every_n_steps=cfg.trainer.checkpoint_every_n_steps,
        checkpoint_min_seconds=cfg.trainer.get("checkpoint_min_seconds", CHECKPOINT_MIN_SECONDS),
        config=OmegaConf.to_container(cfg, resolve=True), metric=cfg.objective.metric,
        mode=cfg.objective.mode, on_nonfinite=cfg.trainer.on_nonfinite,
        precision=str(cfg.trainer.precision), compile_step=cfg.trainer.compile, cuda_graphs=cfg.trainer.cuda_graphs,
        **remedy_settings(cfg),
    )
    trainer.session_started = started  # the wall clock a checkpoint keeps counts from the command's start
    if trainer.fast_dev_run:
        log.info("fast_dev_run: one batch of train, val and test through every code path; the numbers mean nothing")
    if resume is not None:
        trainer.resume_from(resume.state)
        trainer.wall_seconds_before = resume.wall_seconds_before()
        if not resume.here:
            start_continued_dir(resume, trainer, run_dir / CHECKPOINT_DIR)
        resumes = record_resume(run_dir, resume.path, resume.state, resume.changes)
        log.info(describe_resume(resume, run_dir))
        warn_if_schedule_ended(trainer)
    if resume is not None and resume.here and resume.changes:  # the config it goes on with, at its step
        logger.log_text("config", OmegaConf.to_yaml(cfg), trainer.step)
    if fresh:  # once per run directory; a run resumed in its own logged them already
        logger.log_layout(layout())
        logger.log_text("model", f"{model}\n\n{model_summary(model)}")
        logger.log_text("config", OmegaConf.to_yaml(cfg))
        logger.log_graph(model, data.train.x[:2])
        logger.log_image(f"activation/{cfg.activation.name}",
                         figures.activation_image(cfg.activation.name, activation_params(cfg.activation)), step=0)
    with stop_on_signals(trainer):  # over the end of the run too: a Ctrl-C there still gets metrics.json
        result = fit_and_log(trainer, logger, run_dir, cfg, resume.ended_already if resume is not None else None)
        if resume is not None:
            result["resumes"] = resumes
        result = {
            "status": "completed", "dataset": data.name, "task": data.task, "head": objective.head,
            "loss": objective.loss_name, "activation": cfg.activation.name,
            "hidden_sizes": list(cfg.model.hidden_sizes), "parameters": count_parameters(model),
            "device": str(device), **result, "wall_seconds": trainer.wall_seconds(),  # over every session
        }
        write_metrics(run_dir, result)
        report(result, run_dir)
    return result["val"][cfg.objective.metric]


def fit_and_log(trainer, logger, run_dir: Path, cfg: DictConfig, ended_already: Callable[[int], bool] | None) -> dict:
    """Train; log the end of the run (or, when it stops, its verdicts and metrics.json).
    ``ended_already(step)``: whether the run's end is logged already (a finished run resumed)."""
    from mlpkit import figures

    try:
        result = trainer.fit()
    except TrainingStopped as stop:
        health = trainer.gradient_health()
        figures.log_gradient_flow(logger, run_dir, trainer.monitor, cfg.activation.name)
        write_metrics(run_dir, {"status": "stopped" if stop.exit_code > EXIT_SIGNAL else "failed",
                                "error": str(stop), "steps": trainer.step, "history": trainer.history,
                                "gradient_health": health})
        raise
    else:
        # a signal after the last step skips the figures: metrics.json is written, then the run stops
        if trainer.stop_signal is None and not (ended_already and ended_already(trainer.step)):
            log_end_of_run(logger, run_dir, cfg, trainer, result)
    finally:
        logger.close()
    return result


def log_end_of_run(logger, run_dir: Path, cfg: DictConfig, trainer, result: dict) -> None:
    """The end-of-run figures and the HParams entry with the final metrics."""
    from mlpkit import figures
    from mlpkit.tensorboard import final_metrics, run_hparams

    figures.log_gradient_flow(logger, run_dir, trainer.monitor, cfg.activation.name)
    prediction = figures.prediction_figure(trainer.model, trainer.objective, trainer.data)  # 2-D or 1-D sets
    if prediction is not None:
        tag = "decision_boundary/train" if trainer.objective.is_classification else "regression_fit/train"
        logger.log_image(tag, figures.figure_to_rgb(prediction), step=trainer.step)
    logger.log_hparams(run_hparams(cfg), final_metrics(result), step=trainer.step)


def warn_if_schedule_ended(trainer) -> None:
    """A schedule over the run (cosine, onecycle) keeps the length it started with on a longer resume:
    say that the added steps train at the lr it ended on (0 for a cosine to eta_min=0)."""
    schedule = trainer.schedule
    total_steps = trainer.max_epochs * trainer.batches_per_epoch()
    if schedule is not None and schedule.name in ("cosine", "onecycle") and schedule.length < total_steps:
        log.warning("scheduler=%s spans the run's first %d steps; steps %d to %d train at the lr it ended on, %g "
                    "(start a new run for a schedule over the longer run)", schedule.name, schedule.length,
                    schedule.length, total_steps, trainer.optimizer.param_groups[0]["lr"])


def remedy_settings(cfg: DictConfig) -> dict:
    """The Trainer's scheduler, clipping, early-stopping and sanity-check arguments (a run saved
    before they existed resumes with them off)."""
    trainer = cfg.trainer
    early = trainer.get("early_stopping") or {}
    scheduler = cfg.get("scheduler")
    return {
        "scheduler": OmegaConf.to_container(scheduler, resolve=True) if scheduler is not None else None,
        "gradient_clip_val": float(trainer.get("gradient_clip_val", 0.0)),
        "gradient_clip_algorithm": str(trainer.get("gradient_clip_algorithm", "norm")),
        "early_stopping_patience": int(early.get("patience", 0)),
        "early_stopping_min_delta": float(early.get("min_delta", 0.0)),
        "overfit_batches": int(trainer.get("overfit_batches", 0)),
        "fast_dev_run": bool(trainer.get("fast_dev_run", False)),
    }


def purge_step(resumed: dict | None) -> int | None:
    """TensorBoard's purge step for a resumed run: events the run wrote after its checkpoint (before
    it was killed) are hidden. An end-of-epoch checkpoint comes after that epoch's own events at its
    step, which are kept."""
    if resumed is None:
        return None
    at_epoch_end = resumed["extra"].get("epoch_order") is None
    return resumed["step"] + 1 if at_epoch_end else resumed["step"]


def write_metrics(run_dir: Path, result: dict) -> None:
    """metrics.json, replaced atomically; a disk that refuses it loses the file, not the run's line."""
    try:
        write_json(run_dir / "metrics.json", result)
    except OSError as error:
        log.error("could not write %s: %s", run_dir / "metrics.json", error.strerror or error)


def report(result: dict, run_dir: Path) -> None:
    from mlpkit.verdicts import summary as verdict_summary  # imports torch (through mlpkit.activations)

    def line(split: str) -> str:
        return ", ".join(f"{name} {value:.4g}" for name, value in result[split].items())

    log.info("done in %.1fs (%.0f samples/s): %d epochs, %d steps",
             result["wall_seconds"], result["samples_per_second"], result["epochs"], result["steps"])
    if result.get("fast_dev_run"):
        log.info("this was a dev run (trainer.fast_dev_run=true): one batch of each split, not a result")
    stopped = result.get("stopped_early")
    if stopped:
        log.info("stopped early after epoch %d: %s/val did not improve by more than %g for %d epochs (best epoch %d)",
                 stopped["epoch"], stopped["metric"], stopped["min_delta"], stopped["patience"], stopped["best_epoch"])
    for split in ("train", "val", "test"):
        log.info("  %-5s %s", split, line(split))
    if result.get("test_best") is not None:
        log.info("  test with checkpoints/best.pt (epoch %d): %s", result["best"]["epoch"], line("test_best"))
    overfit = result.get("overfit_batches")
    if overfit:
        verdict = ("went near zero: the net can learn them" if overfit["reached"] else
                   "did not go near zero: train longer (trainer.max_epochs), change optimizer.lr, "
                   "or read the gradient verdict below")
        log.info("overfit_batches=%d (%d rows): their loss %.4g %s %g, %s", overfit["batches"], overfit["rows"],
                 overfit["loss"], "<" if overfit["reached"] else ">=", overfit["threshold"], verdict)
    if result.get("gradient_health"):
        log.info(verdict_summary(result["gradient_health"]))
    log.info("run directory: %s", run_dir)
    log.info("view it: tensorboard --logdir %s", run_dir)

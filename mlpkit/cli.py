"""The Hydra entry point: compose, validate, wire data -> model -> trainer -> loggers, report.

Torch, numpy and every module that imports them load inside the functions that train, not here:
``python train.py --help`` and ``--cfg job`` import this module and need none of them (torch alone
takes over a second to import).
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlpkit import distributed
from mlpkit.config import CONFIG_DIR, report_config_errors, validate
from mlpkit.config_keys import override_key
from mlpkit.errors import EXIT_CONFIG, EXIT_NONFINITE, EXIT_SIGNAL, ConfigError, TrainingStopped, show_value
from mlpkit.new_dirs import register_resolvers
from mlpkit.rundir import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    METRICS_FILE,
    check_new_run_dir,
    check_same_data,
    record_resume,
    write_json,
)

if TYPE_CHECKING:
    from mlpkit.assemble import Parts
    from mlpkit.data import Data
    from mlpkit.loggers import Loggers
    from mlpkit.lr_finder import LRFinderResult
    from mlpkit.resume import Resume

log = logging.getLogger("mlpkit")


def main() -> None:
    """`python train.py` and `mlpkit-train`: Hydra's CLI, with config mistakes as one line, exit 2."""
    register_resolvers()  # configs/hydra/default.yaml names run directories through them
    if distributed.launched():  # torchrun: before Hydra composes, whose run-directory resolver asks rank 0
        refuse_ddp_multirun(sys.argv[1:])
        distributed.start()
    report_config_errors(train, "train")


def refuse_ddp_multirun(arguments: Sequence[str]) -> None:
    """A sweep under torchrun would start one sweep per rank: one line, exit 2."""
    if any(argument in ("-m", "--multirun") for argument in arguments):
        print(f"Config error: hydra.mode=MULTIRUN under torchrun ({distributed.world_size()} ranks): a sweep's jobs "
              "are separate runs; run the sweep with python train.py -m, or each job with torchrun", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train(cfg: DictConfig) -> float:
    """Train one run; return the validation objective so sweepers can minimise or maximise it."""
    hydra_cfg = HydraConfig.get()
    if not distributed.writes_files():
        quiet_other_rank(Path(hydra_cfg.runtime.output_dir))
    try:
        # the overrides as typed: resolving them (data.path='${nope}') would fail before the config is checked
        overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
        return run(cfg, Path(hydra_cfg.runtime.output_dir), overrides)
    except (ConfigError, TrainingStopped) as error:
        exit_code = error.exit_code
        if hydra_cfg.mode == RunMode.MULTIRUN and exit_code in (EXIT_CONFIG, EXIT_NONFINITE):
            raise  # the launcher marks this job failed and the sweep goes on
        sys.exit(exit_code)  # a signal stops a whole sweep too


def quiet_other_rank(run_dir: Path) -> None:
    """A ddp rank other than 0 writes nothing: not to train.log (rank 0 does), and to the console only
    its errors (every rank trains the same steps: rank 0 says what they did)."""
    run_dir = run_dir.resolve()
    for logger in (logging.getLogger(), log):
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
                logger.removeHandler(handler)
                handler.close()
    log.setLevel(logging.ERROR)


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


def run(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = (), callbacks: Sequence = (),
        data: Data | None = None) -> float:
    """Everything one run does, from a composed config (and the command-line ``overrides`` it was
    composed with) to metrics.json; errors logged once. ``callbacks``: a user's own (mlpkit.train's);
    ``data``: the data already in memory (an estimator's ``fit(X, y)``), else ``cfg.data`` loads."""
    try:
        return train_run(cfg, run_dir, overrides, callbacks, data)
    except ConfigError as error:
        log.error("Config error: %s", error)
        raise
    except TrainingStopped as stop:
        from mlpkit.cross_validation import FoldStopped  # its message names the fold to resume

        if distributed.writes_files():  # rank 0 says it for every rank of a ddp run
            log.error("%s", stop)
            if not stop.nonfinite and not stop.completed and not isinstance(stop, FoldStopped):
                log.error("resume with: python train.py resume=%s", run_dir)
        if distributed.launched() and not stop.completed:  # every rank stopped after the same step
            leave_together()
        raise


def leave_together() -> None:
    """A ddp run stopped: every rank waits for rank 0's checkpoint and metrics.json, then exits; the
    signal torchrun sends the others once the first has exited comes too late to matter."""
    import signal

    distributed.barrier()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def train_run(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = (), callbacks: Sequence = (),
              data: Data | None = None) -> float:
    started = time.perf_counter()
    resume = None
    with held_run_log(run_dir, holding=bool(cfg.get("resume"))):
        if cfg.get("resume"):  # the run goes on with its saved config: nothing is written before it is accepted
            from mlpkit.resume import accept_resume

            cfg, resume = accept_resume(cfg, run_dir, list(overrides))
            forget_checkpoint_callbacks(cfg, overrides)
        else:
            check_new_run_dir(run_dir)
        validate(cfg)  # before anything is loaded, and before torch is imported: a mistake costs no second
        from mlpkit.assemble import assemble, load_data, prepare_device
        from mlpkit.model import count_parameters
        from mlpkit.runtime import show_progress, stop_on_signals

        if int(cfg.data.get("cv_folds") or 0) and cfg.data.get("cv_fold") is None:
            from mlpkit.cross_validation import run_folds

            refuse_cv_resume(resume)
            return run_folds(cfg, run_dir, lambda fold_cfg, fold_dir: train_run(fold_cfg, fold_dir, (), callbacks))
        data = load_data(cfg, prepare_device(cfg)) if data is None else data
        log.info(data.describe())
        if resume is not None and resume.source_dir is not None:
            check_same_data(resume.source_dir, data.fingerprint(), "resume", cfg.resume,
                            "a run whose data is unchanged")
    writes = distributed.writes_files()  # rank 0 of a ddp run, and every single-process run
    found = find_lr_first(cfg, data) if resume is None else None
    if found is not None and OmegaConf.select(cfg, "lr_find.run", default=False):
        return lr_find_only(found, run_dir) if writes else found.suggestion
    parts = assemble(cfg, data, checkpoint_dir=run_dir / CHECKPOINT_DIR if writes else None, callbacks=callbacks,
                     progress=writes and show_progress(cfg.trainer.progress))  # every refusal comes before a write
    trainer = parts.trainer
    if not writes:
        return follow_rank_zero(cfg, trainer, resume)
    trainer.run_dir = run_dir
    trainer.session_started = started  # the wall clock a checkpoint keeps counts from the command's start
    if trainer.settings.fast_dev_run:
        log.info("fast_dev_run: one batch of train, val and test through every code path; the numbers mean nothing")
    logger, resumes = start_run_files(cfg, run_dir, parts, resume)
    if found is not None:
        from mlpkit.lr_finder import write

        write(found, run_dir, logger)
        resumes["lr_find"] = {"suggestion": found.suggestion, "rule": found.rule, "steps": len(found.lrs)}
    # over the end of the run too: a Ctrl-C there still gets metrics.json; the loggers close after it (a
    # tracker takes metrics.json with it)
    with stop_on_signals(trainer), closing(logger):
        result = fit_and_log(trainer, logger, run_dir, cfg, resume.ended_already if resume is not None else None)
        result = {
            "status": "completed", "dataset": data.name, "task": data.task, "head": parts.objective.head,
            "loss": parts.objective.loss_name, "activation": cfg.activation.name,
            "hidden_sizes": list(cfg.model.hidden_sizes), "parameters": count_parameters(parts.model),
            "device": str(parts.device), **result, **resumes,
            "wall_seconds": trainer.wall_seconds(),  # over every session
        }
        write_metrics(run_dir, result)
        report(result, run_dir)
    return result.get("val", result["train"])[cfg.objective.metric]  # data.val_fraction=0: the training loss


def follow_rank_zero(cfg: DictConfig, trainer, resume: Resume | None) -> float:
    """A ddp rank other than 0: the same steps, in step with rank 0 (one all-reduce a step); no logger,
    no checkpoint, no file."""
    from mlpkit.runtime import stop_on_signals

    if resume is not None:
        trainer.resume_from(resume.state)
    with stop_on_signals(trainer):
        result = trainer.fit()
    return result.get("val", result["train"])[cfg.objective.metric]


def find_lr_first(cfg: DictConfig, data: Data) -> LRFinderResult | None:
    """The learning-rate range test, when ``lr_find.run=true`` or ``optimizer.lr=auto`` asks for it;
    with ``auto`` its suggestion goes into the config the run trains with (and saves)."""
    from mlpkit import lr_finder

    if not (OmegaConf.select(cfg, "lr_find.run", default=False) or lr_finder.wants_lr_found(cfg)):
        return None
    found = lr_finder.find_lr(cfg, data)
    log.info(found.describe())
    if not cfg.lr_find.run:
        lr_finder.apply(cfg, found)
    return found


def lr_find_only(found: LRFinderResult, run_dir: Path) -> float:
    """``lr_find.run=true``: the test's figure, curve (TensorBoard too) and suggestion; no training."""
    from mlpkit.lr_finder import FIGURE, write
    from mlpkit.tensorboard import TensorBoardLogger

    logger = TensorBoardLogger(run_dir)
    try:
        write(found, run_dir, logger)
    finally:
        logger.close()
    log.info("the range test's curve: %s; train with its lr: python train.py optimizer.lr=%.3g (or optimizer.lr=auto)",
             run_dir / FIGURE, found.suggestion)
    return found.suggestion


def refuse_cv_resume(resume: Resume | None) -> None:
    """A cross-validation's folds are runs of their own: each resumes on its own."""
    if resume is not None:
        raise ConfigError("resume", resume.path, "one fold's run directory (<run>/fold_<i>) with data.cv_folds",
                          "a cross-validation resumes fold by fold: resume=<run>/fold_<i>")


def forget_checkpoint_callbacks(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """A resume imports no code its checkpoint names: ``trainer.callbacks`` comes from the command line."""
    typed = any(override_key(override) == "trainer.callbacks" for override in overrides)
    saved = OmegaConf.select(cfg, "trainer.callbacks", default=None)
    if not typed and saved:
        log.warning("the run was trained with trainer.callbacks=%s; a resume imports no code its checkpoint names: "
                    "give trainer.callbacks=... again to use them", show_value(list(saved)))
        cfg.trainer.callbacks = []


def start_run_files(cfg: DictConfig, run_dir: Path, parts: Parts, resume: Resume | None
                    ) -> tuple[Loggers, dict]:
    """The run directory's own files (label mapping, preprocessing, the config a continued run trains
    with), the TensorBoard logger, and the resume's place and record (metrics.json's ``resumes``, from
    resumes.json); the model, config and layout are logged once per run directory."""
    from mlpkit import figures
    from mlpkit.data import save_label_mapping, save_preprocessing
    from mlpkit.diagnostics import layout
    from mlpkit.loggers import build_loggers
    from mlpkit.model import activation_params, model_summary
    from mlpkit.resume import describe, start_continued_dir, write_continued_config

    trainer, model, data = parts.trainer, parts.model, parts.data
    fresh = resume is None or not resume.here  # a new directory: the run's own files are written there
    if fresh:
        save_label_mapping(data, run_dir)
        save_preprocessing(data, run_dir)
    if resume is not None and not resume.here:
        write_continued_config(run_dir, cfg)
    logger = trainer.logger = build_loggers(
        cfg, run_dir, purge_step=purge_step(resume.state) if resume is not None and resume.here else None)
    if resume is not None:
        trainer.resume_from(resume.state)
        trainer.wall_seconds_before = resume.wall_seconds_before()
        if not resume.here:
            start_continued_dir(resume, trainer, parts.checkpointer)
        resumes = {"resumes": record_resume(run_dir, resume.path, resume.state, resume.changes)}
        log.info(describe(resume, run_dir))
        warn_if_schedule_ended(trainer)
        if resume.here and resume.changes:  # the config it goes on with, at its step
            logger.log_text("config", OmegaConf.to_yaml(cfg), trainer.step)
    if fresh:  # once per run directory; a run resumed in its own logged them already
        logger.log_layout(layout())
        logger.log_text("model", f"{model}\n\n{model_summary(model)}")
        logger.log_text("config", OmegaConf.to_yaml(cfg))
        logger.log_graph(model, next(data.train.head(2).chunks(2, data.device))[0])
        logger.log_image(f"activation/{cfg.activation.name}",
                         figures.activation_image(cfg.activation.name, activation_params(cfg.activation)), step=0)
    return logger, resumes if resume is not None else {}


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
    from mlpkit.schedules import Schedule

    schedule = next((callback for callback in trainer.callbacks.callbacks if isinstance(callback, Schedule)), None)
    total_steps = trainer.max_epochs * trainer.batches_per_epoch()
    if schedule is not None and schedule.name in ("cosine", "onecycle") and schedule.length < total_steps:
        log.warning("scheduler=%s spans the run's first %d steps; steps %d to %d train at the lr it ended on, %g "
                    "(start a new run for a schedule over the longer run)", schedule.name, schedule.length,
                    schedule.length, total_steps, trainer.optimizer.param_groups[0]["lr"])


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
        write_json(run_dir / METRICS_FILE, result)
    except OSError as error:
        log.error("could not write %s: %s", run_dir / METRICS_FILE, error.strerror or error)


def report(result: dict, run_dir: Path) -> None:
    from mlpkit.verdicts import summary as verdict_summary

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
    for split in (split for split in ("train", "val", "test") if split in result):  # a fraction of 0: none
        log.info("  %-5s %s", split, line(split))
    if result.get("test_best") is not None:
        log.info("  test with %s/%s (epoch %d): %s", CHECKPOINT_DIR, BEST_CHECKPOINT, result["best"]["epoch"],
                 line("test_best"))
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

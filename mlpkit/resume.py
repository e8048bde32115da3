"""``resume=``: which checkpoint, which config and which directory a resumed run goes on with.

A run directory's checkpoint continues in that directory. A checkpoint resumed into another
directory (a bare ``.pt`` file, which has none, or ``hydra.run.dir=<new>``) continues the same
training there: a new run directory that starts where the checkpoint ended, with the run's saved
config. Nothing is written before the resume is accepted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpkit.errors import ConfigError
from mlpkit.rundir import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    HYDRA_DIR,
    METRICS_FILE,
    RUN_CONFIG,
    check_new_run_dir,
    resumed_config,
)


@dataclass
class Resume:
    path: Path  # the checkpoint file
    state: dict[str, Any]  # what it holds (mlpkit.checkpoint.load_checkpoint)
    changes: dict[str, Any] = field(default_factory=dict)  # the RESUMABLE keys the command line changed
    source_dir: Path | None = None  # the run directory the checkpoint belongs to; None for a bare file
    here: bool = True  # whether it goes on in that directory (else in a new one)
    metrics: dict[str, Any] = field(default_factory=dict)  # its run's metrics.json ({} when none)

    def ended_already(self, step: int) -> bool:
        """A resume of a completed run in its own directory that trained no further step: the run's
        end (figures, HParams) is in its TensorBoard already."""
        return self.here and step == self.state["step"] and self.metrics.get("status") == "completed"

    def wall_seconds_before(self) -> float:
        """The run's wall time before this session: its metrics.json's when that describes the
        checkpoint's step (a finished run's end, after its last checkpoint, counts), else the checkpoint's."""
        saved = float(self.state["extra"].get("wall_seconds", 0.0))
        ended = self.metrics.get("wall_seconds")
        if self.metrics.get("steps") == self.state["step"] and isinstance(ended, (int, float)):
            return max(saved, float(ended))
        return saved


def checkpoint_run_dir(path: Path) -> Path | None:
    """The run directory of a checkpoint in its ``checkpoints/`` folder (None for a bare file)."""
    path = path.resolve()
    if path.parent.name == CHECKPOINT_DIR and (path.parent.parent / HYDRA_DIR).is_dir():
        return path.parent.parent
    return None


def accept_resume(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> tuple[DictConfig, Resume]:
    """The config a resume continues with and what it resumes; ConfigError (nothing written) if refused."""
    import hydra

    from mlpkit.checkpoint import load_checkpoint, resolve_resume_path

    path = resolve_resume_path(hydra.utils.to_absolute_path(str(cfg.resume)))
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise ConfigError("resume", cfg.resume, "a checkpoint written by python train.py (it holds the run's "
                          "config)", f"{path} holds no config")
    resumed_cfg, changes = resumed_config(state["config"], cfg, overrides, str(cfg.resume))
    if resumed_cfg.data.get("download"):  # a checkpoint's word never writes outside the run: the files are
        resumed_cfg.data.download = False  # where the run found them (data.root), or the resume stops
    source_dir = checkpoint_run_dir(path)
    here = source_dir is not None and source_dir == Path(run_dir).resolve()
    if not here:
        check_new_run_dir(run_dir)  # a checkpoint goes on in a new directory, never in another run's
    return resumed_cfg, Resume(path, state, changes, source_dir, here, run_metrics(source_dir))


def run_metrics(run_dir: Path | None) -> dict[str, Any]:
    """A run's metrics.json as a dict; {} when there is none or it cannot be read (a run killed
    mid-epoch has none: the checkpoint alone tells where it stands)."""
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text()) if run_dir is not None else {}
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def write_continued_config(run_dir: Path, cfg: DictConfig) -> None:
    """A run continued in a new directory: its .hydra/config.yaml is the config it trains with (Hydra
    wrote the command line's there), so that loading the run rebuilds the right model."""
    config_file = Path(run_dir) / RUN_CONFIG
    if config_file.parent.is_dir():
        OmegaConf.save(cfg, config_file)


def start_continued_dir(resume: Resume, trainer: Any, checkpointer: Any) -> None:
    """A new directory holds its checkpoint from the start (a resume that trains no further epoch
    leaves a loadable run too); the source run's best.pt comes along, as the best it names."""
    import shutil

    checkpoint_dir = checkpointer.directory
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    source_best = resume.source_dir / CHECKPOINT_DIR / BEST_CHECKPOINT if resume.source_dir is not None else None
    if source_best is not None and source_best.is_file():
        shutil.copyfile(source_best, checkpoint_dir / BEST_CHECKPOINT)
    checkpointer.save(trainer)


def describe(resume: Resume, run_dir: Path) -> str:
    """The start line of a resumed run."""
    state, changes = resume.state, resume.changes
    where = "" if resume.here else f" into the new run directory {run_dir}"
    changed = f"; changed {', '.join(f'{k}={v}' for k, v in changes.items())}" if changes else ""
    return f"resumed from {resume.path}{where}: {state['epoch']} epochs done, step {state['step']}{changed}"

"""The run directory: the names of the files a run writes (here, and only here), finding a run and
its checkpoint, reading and writing its files, the new-run check and the record of its resumes.

Every module that names one of a run's files imports the name from here. This module imports
nothing heavy (no torch, no numpy): the data package and ``python train.py --help`` import it.
Naming NEW run and sweep directories (Hydra's resolvers) is mlpkit.new_dirs.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpkit.errors import ConfigError, show_value

# --- the files a run directory holds ---------------------------------------------------------------
HYDRA_DIR = ".hydra"                  # Hydra's record of the run, written before any mlpkit code runs:
CONFIG_FILE = "config.yaml"           #   the composed config,
HYDRA_FILE = "hydra.yaml"             #   Hydra's own settings (hydra.runtime.cwd: where the run was launched),
OVERRIDES_FILE = "overrides.yaml"     #   the command line's overrides
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.pt"           # the best validation epoch's state
LAST_CHECKPOINT = "last.pt"           # the latest state: what resume= continues
CHECKPOINTS = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}  # the commands' checkpoint= choices
METRICS_FILE = "metrics.json"         # final metrics, history, gradient health: written when the run ends
LABELS_FILE = "labels.json"           # class index -> label (classification runs)
PREPROCESSING_FILE = "preprocessing.json"  # raw rows -> model inputs, outputs -> values; the data fingerprint
RESUMES_FILE = "resumes.json"         # what each resume of a run changed, in order
JOB_STATUS_FILE = "job_status.json"   # a sweep job's status, written by the sweep callback
EVALUATION_FILE = "evaluation.json"   # the evaluate command's report
CONFUSION_MATRIX_FIGURE = "confusion_matrix.png"    # the evaluate command's figure for a classifier
PREDICTED_VS_TRUE_FIGURE = "predicted_vs_true.png"  # and for a regression
GRADIENT_FLOW_FIGURE = "gradient_flow.png"
CV_SUMMARY_FILE = "cv_summary.json"   # a cross-validation's folds: mean, std, per-fold metrics, verdict counts
CV_CURVES_FIGURE = "cv_val_curves.png"  # each fold's validation objective per epoch
RUN_CONFIG = f"{HYDRA_DIR}/{CONFIG_FILE}"  # what makes a directory a run directory
# What a run and the tools on it write into its directory: folders whose every file is the run's,
# and names at its top (metrics.json, labels.json, preprocessing.json, evaluation.json, train.log,
# the figures, TensorBoard's event files). predict never writes over one of them, by any name.
RUN_FOLDERS = (CHECKPOINT_DIR, HYDRA_DIR)
RUN_FILES = ("*.json", "*.log", "*.png", "*.pt", "events.out.tfevents.*")

RUN_HINT = "a run directory written by python train.py, e.g. run=outputs/2024-05-01/12-00-00"
# What a resume may change: where and how it runs, and how long (trainer.max_epochs upward only).
RESUMABLE = ("trainer.max_epochs", "trainer.progress", "trainer.device", "trainer.num_threads",
             "trainer.checkpoint_min_seconds", "trainer.callbacks", "logger", "tracking")
_held_a_run: dict[str, bool] = {}  # run directory -> whether it held a run before this process started


# --- finding and reading a run ---------------------------------------------------------------------
def find_run(run: Any) -> Path:
    """The run directory, checked: it exists and holds the config the run was composed with."""
    if run is None or str(run).strip() in ("", "???"):
        raise ConfigError("run", run, RUN_HINT)
    path = Path(str(run)).expanduser()
    if not path.is_dir():
        raise ConfigError("run", run, RUN_HINT, f"{path.resolve()} "
                          f"{'is a file' if path.exists() else 'does not exist'}")
    if not (path / RUN_CONFIG).is_file():
        raise ConfigError("run", run, RUN_HINT, f"{path.resolve()} has no {RUN_CONFIG}, so it "
                          "is not a run directory")
    return path


def find_checkpoint(run_dir: Path, choice: str = "auto") -> Path:
    """checkpoints/best.pt, or last.pt when there is no best.pt (``choice``: auto, best, last)."""
    if choice not in ("auto", *CHECKPOINTS):
        raise ConfigError("checkpoint", choice, f"auto ({BEST_CHECKPOINT}, else {LAST_CHECKPOINT}), best or last")
    names = [CHECKPOINTS[choice]] if choice in CHECKPOINTS else list(CHECKPOINTS.values())
    for name in names:
        if (run_dir / CHECKPOINT_DIR / name).is_file():
            return run_dir / CHECKPOINT_DIR / name
    wanted = " or ".join(f"{CHECKPOINT_DIR}/{name}" for name in names)
    raise ConfigError("run", run_dir, f"a run directory holding {wanted}",
                      f"{run_dir.resolve()} has none; did the run stop before its first epoch ended?")


def run_config(run_dir: Path) -> DictConfig:
    """The run's composed config, data paths made absolute against the directory it was launched from."""
    cfg = OmegaConf.load(run_dir / RUN_CONFIG)
    hydra_file = run_dir / HYDRA_DIR / HYDRA_FILE
    launched_from = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd") \
        if hydra_file.is_file() else None
    for key in ("path", "val_path", "test_path", "root"):  # table files (csv), data.root (torchvision sets)
        value = OmegaConf.select(cfg, f"data.{key}")
        if launched_from and isinstance(value, str) and not Path(value).expanduser().is_absolute() \
                and (Path(launched_from) / value).exists():
            cfg.data[key] = str(Path(launched_from) / value)
    return cfg


def read_preprocessing(run_dir: Path) -> dict[str, Any]:
    path = run_dir / PREPROCESSING_FILE
    if not path.is_file():
        raise ConfigError("run", run_dir, f"a run directory holding {PREPROCESSING_FILE} (written by "
                          "every training run since mlpkit 0.1)", f"{path.resolve()} does not exist")
    return read_json(path, run_dir)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json, which a run writes when it ends."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise ConfigError("run", run_dir, f"a finished run directory (it holds {METRICS_FILE})",
                          f"{path} does not exist")
    return read_json(path, run_dir)


def read_json(path: Path, run_dir: Path) -> Any:
    """A JSON file of the run; a damaged one (a disk that filled, a hand edit) is one ConfigError."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError("run", run_dir, "a run directory whose files are as the run wrote them",
                          f"{path.resolve()} is not valid JSON ({error})") from None


def check_same_data(run_dir: Path, fingerprint: str, key: str, value: Any, allowed: str, allow: bool = False) -> None:
    """Refuse data that is not what the run trained on (its preprocessing.json fingerprint): a changed
    file would silently give another test split. ``allow`` goes on, with a warning."""
    saved = read_preprocessing(run_dir).get("fingerprint")
    if saved is None or saved == fingerprint:
        return
    problem = (f"the data loaded now differs from the data {run_dir} trained on (fingerprint {fingerprint[:12]} "
               f"against {saved[:12]}): a file behind it changed, or rows were added or reordered")
    if not allow:
        raise ConfigError(key, value, allowed, problem)
    print(f"warning: {problem}; going on ({key}=true)", file=sys.stderr)  # the commands print, not log


# --- writing into a run ----------------------------------------------------------------------------
def write_atomically(target: Path, write: Any) -> None:
    """``write(temporary)`` beside ``target``, then os.replace onto it: a failed or killed write leaves
    the old file or none, never half of one, whoever writes last (an export, a sweep report)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """``path`` replaced atomically by ``value`` as JSON, through a temporary file of this process's own."""
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(value, indent=2) + "\n"))


def run_file(path: Path, run_dir: Path) -> str | None:
    """Which of the run's own files (RUN_FOLDERS, RUN_FILES) ``path`` is, by any spelling, symlink
    or hard link, or None: what predict must not write over."""
    target = path.expanduser().resolve()  # symlinks followed, ".." gone
    for folder in RUN_FOLDERS:
        inside = next((parent for parent in (target, *target.parents) if same_file(parent, run_dir / folder)), None)
        if inside is not None:
            return f"{folder}/{target.relative_to(inside)}".removesuffix("/.")
    if same_file(target.parent, run_dir) and any(fnmatch(target.name, pattern) for pattern in RUN_FILES):
        return target.name
    if target.is_file():  # a hard link elsewhere: the same file under another name
        own = [*(p for pattern in RUN_FILES for p in run_dir.glob(pattern)),
               *(p for folder in RUN_FOLDERS for p in (run_dir / folder).rglob("*"))]
        for file in own:
            if same_file(file, target):
                return str(file.relative_to(run_dir))
    return None


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file (os.path.samefile); False when either does not exist."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


# --- a new run never writes into another run's directory -------------------------------------------
def holds_run(path: Path) -> bool:
    """Whether a directory holds a run: its config, a checkpoint or its metrics."""
    return any((path / name).exists() for name in (RUN_CONFIG, CHECKPOINT_DIR, METRICS_FILE))


def note_whether_held(path: Path) -> bool:
    """Whether ``path`` holds a run now, remembered for this process: Hydra writes ``.hydra/`` into
    a new run's directory before any mlpkit code runs, so the question is asked before that
    (by mlpkit.new_dirs.output_subdir, when Hydra resolves it)."""
    _held_a_run[str(path.resolve())] = holds_run(path)
    return _held_a_run[str(path.resolve())]


def held_a_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` held a run before this one started in it."""
    key = str(Path(run_dir).resolve())
    return _held_a_run[key] if key in _held_a_run else holds_run(Path(run_dir))


def check_new_run_dir(run_dir: Path) -> None:
    """A new run refuses a directory that holds another run (resume=<dir> continues that one)."""
    if held_a_run(run_dir):
        raise ConfigError("hydra.run.dir", run_dir, "a directory that holds no other run",
                          f"{run_dir} holds a run already and was left as it was: resume={run_dir} continues "
                          "it; choose another hydra.run.dir (or none) for a new run")


# --- resuming a run ----------------------------------------------------------------------------------
def resumed_config(saved: Mapping[str, Any], composed: DictConfig, overrides: Sequence[str], resume: str
                   ) -> tuple[DictConfig, dict[str, Any]]:
    """The config a resume continues with: the run's saved config, with only the RESUMABLE keys of
    the command line changed (and trainer.max_epochs only upward). Returns it and the changes."""
    refuse_interpolations(saved, resume)
    from mlpkit.schema import with_defaults  # a run saved before a key existed takes its default

    cfg = with_defaults(saved)
    changes: dict[str, Any] = {}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        given, kept = _plain(OmegaConf.select(composed, key)), _plain(OmegaConf.select(cfg, key))
        if key == "resume" or given == kept:
            continue  # the same command again with resume= added changes nothing
        if key not in RESUMABLE and key.split(".")[0] not in RESUMABLE:  # tracking.mlflow.tracking_uri
            raise ConfigError(key, value, f"the run's own {key}={show_value(kept)} on a resume: resume={resume} "
                              f"continues the run with its saved config, and only {', '.join(RESUMABLE)} may "
                              "change (trainer.max_epochs upward)", "start a new run to try other settings")
        changes[key] = given
    saved_epochs = cfg.trainer.max_epochs
    epochs = changes.get("trainer.max_epochs", saved_epochs)
    if not isinstance(epochs, int) or epochs < saved_epochs:
        raise ConfigError("trainer.max_epochs", epochs, f"an integer >= {saved_epochs} on this resume",
                          "a resume trains on to the run's own trainer.max_epochs or longer, never shorter")
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    cfg.resume = resume
    return cfg, changes


def refuse_interpolations(saved: Any, resume: str, key: str = "") -> None:
    """A checkpoint's config was saved resolved: an interpolation in it (``${oc.env:...}``, a resolver
    that makes directories) was written by hand, and resolving it would run code the run never chose."""
    if isinstance(saved, Mapping):
        for name, value in saved.items():
            refuse_interpolations(value, resume, f"{key}.{name}" if key else str(name))
    elif isinstance(saved, (list, tuple)):
        for index, value in enumerate(saved):
            refuse_interpolations(value, resume, f"{key}[{index}]")
    elif isinstance(saved, str) and "${" in saved:
        raise ConfigError("resume", resume, "a checkpoint whose config holds plain values, as python train.py "
                          "saves it", f"its {key}={saved} is an interpolation; the checkpoint was refused")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def record_resume(run_dir: Path, checkpoint: Path, state: Mapping[str, Any], changes: dict[str, Any]) -> list:
    """Append this resume (when, from which checkpoint and step, what it changed) to resumes.json."""
    path = Path(run_dir) / RESUMES_FILE
    resumes = json.loads(path.read_text()) if path.is_file() else []
    resumes.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": str(checkpoint),
                    "epoch": int(state["epoch"]), "step": int(state["step"]), "changes": changes})
    write_json(path, resumes)
    return resumes

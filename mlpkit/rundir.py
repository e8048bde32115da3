"""Run directories: a new one for every new run, the run's own one for a resume, and nothing written
into a directory that holds another run.

configs/hydra/default.yaml names directories through the resolvers registered here. Hydra writes
``.hydra/`` into a run directory before any mlpkit code runs, so the decision whether that directory
is new is made inside the resolvers, when Hydra resolves them, and remembered for the run.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpkit.errors import ConfigError, show_value

CHECKPOINT_DIR = "checkpoints"
RESUMES = "resumes.json"  # what each resume of a run changed, in order
# What a resume may change: where and how it runs, and how long (trainer.max_epochs upward only).
RESUMABLE = ("trainer.max_epochs", "trainer.progress", "trainer.device", "trainer.num_threads",
             "trainer.checkpoint_min_seconds")
_held_a_run: dict[str, bool] = {}  # run directory -> whether it held a run before this process started


def register_resolvers() -> None:
    """The resolvers configs/hydra/default.yaml uses; called before Hydra composes."""
    OmegaConf.register_new_resolver("mlpkit_run_dir", run_dir_for, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("mlpkit_output_subdir", output_subdir, replace=True, use_cache=True)
    # Cached in the config: Hydra copies a sweep's resolved values into every job's config (its
    # load_sweep_config), so each job, in whichever process, gets the directory the sweep took.
    OmegaConf.register_new_resolver("mlpkit_sweep_dir", unique_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("mlpkit_job_dirname", job_dirname, replace=True)


def holds_run(path: Path) -> bool:
    """Whether a directory holds a run: its config, a checkpoint or its metrics."""
    return any((path / name).exists() for name in (".hydra/config.yaml", CHECKPOINT_DIR, "metrics.json"))


def run_dir_for(resume: str | None, new_run_dir: str) -> str:
    """hydra.run.dir: a resumed run goes on in its own directory; any other run gets a new one."""
    if resume:
        path = Path(resume).expanduser().resolve()
        if path.is_dir() and (path / CHECKPOINT_DIR).is_dir():
            return str(path)
        if path.is_dir() and path.name == CHECKPOINT_DIR:
            return str(path.parent)
        if path.is_file() and path.parent.name == CHECKPOINT_DIR:
            return str(path.parent.parent)
    return unique_dir(new_run_dir)  # a new run, a bare checkpoint file, or a typo that the run reports


def unique_dir(wanted: str) -> str:
    """``wanted``, or ``wanted_2``, ``wanted_3``, ... : the first that this process could create itself
    (mkdir is atomic, so two runs started in the same second never share one)."""
    candidate, number = Path(wanted), 1
    candidate.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            number += 1
            candidate = Path(f"{wanted}_{number}")


def output_subdir(output_dir: str) -> str | None:
    """hydra.output_subdir: ``.hydra`` for a new run; None (Hydra then writes no config) for a
    directory that already holds a run, so that neither a resume nor a refused start rewrites it."""
    path = Path(output_dir)
    _held_a_run[str(path.resolve())] = holds_run(path)
    return None if _held_a_run[str(path.resolve())] else ".hydra"


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


def resumed_config(saved: Mapping[str, Any], composed: DictConfig, overrides: Sequence[str], resume: str
                   ) -> tuple[DictConfig, dict[str, Any]]:
    """The config a resume continues with: the run's saved config, with only the RESUMABLE keys of
    the command line changed (and trainer.max_epochs only upward). Returns it and the changes."""
    refuse_interpolations(saved, resume)
    cfg = OmegaConf.create(dict(saved))
    changes: dict[str, Any] = {}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        given, kept = _plain(OmegaConf.select(composed, key)), _plain(OmegaConf.select(cfg, key))
        if key == "resume" or given == kept:
            continue  # the same command again with resume= added changes nothing
        if key not in RESUMABLE:
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
    path = Path(run_dir) / RESUMES
    resumes = json.loads(path.read_text()) if path.is_file() else []
    resumes.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": str(checkpoint),
                    "epoch": int(state["epoch"]), "step": int(state["step"]), "changes": changes})
    write_json(path, resumes)
    return resumes


def write_json(path: Path, value: Any) -> None:
    """``path`` replaced atomically by ``value`` as JSON, through a temporary file of this process's own."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(value, indent=2) + "\n")
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


NAME_MAX_BYTES = 255  # Linux's limit on one file name: a longer job directory cannot be created
_QUOTED = frozenset("/\\%")  # a path separator on some system, and the quoting character itself


def job_dirname(name: str) -> str:
    """hydra.sweep.subdir: one directory name inside the sweep whatever the swept values hold.

    ``/``, ``\\``, ``%`` and control characters are %-quoted (``../x.csv`` -> ``..%2Fx.csv``), as is a
    leading ``.`` or ``-``, so urllib.parse.unquote gives the overrides back; a name over
    NAME_MAX_BYTES keeps its start and ends in a hash of the whole, so two long names stay apart."""
    quoted = "".join(_quote(char) if char in _QUOTED or not char.isprintable() else char for char in name)
    if quoted[:1] in (".", "-"):
        quoted = _quote(quoted[0]) + quoted[1:]
    if len(quoted.encode()) <= NAME_MAX_BYTES:
        return quoted or "_"
    import hashlib  # only a name too long to create needs it

    suffix = "~" + hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()[:16]
    start = quoted.encode()[:NAME_MAX_BYTES - len(suffix)].decode(errors="ignore")  # whole characters only
    return start[:start.rfind("%")] + suffix if "%" in start[-2:] else start + suffix  # and whole %XX


def _quote(char: str) -> str:
    # each UTF-8 byte as %XX, as urllib.parse.quote writes it (a file name's undecodable bytes too)
    return "".join(f"%{byte:02X}" for byte in char.encode(errors="surrogatepass"))

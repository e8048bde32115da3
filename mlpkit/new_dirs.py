"""New run and sweep directories: the Hydra resolvers that name them.

configs/hydra/default.yaml names directories through the resolvers registered here: a new run gets
a directory of its own (``_2``, ``_3``, ... when the name is taken), a resume goes on in its run's
directory, a sweep job gets a directory name whatever its swept values hold. Hydra writes ``.hydra/``
into a run directory before any mlpkit code runs, so whether that directory is new is decided
inside output_subdir, when Hydra resolves it, and remembered (mlpkit.rundir.held_a_run).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from mlpkit.rundir import CHECKPOINT_DIR, CV_SUMMARY_FILE, HYDRA_DIR, note_whether_held

NAME_MAX_BYTES = 255  # Linux's limit on one file name: a longer job directory cannot be created
_QUOTED = frozenset("/\\%")  # a path separator on some system, and the quoting character itself


def register_resolvers() -> None:
    """The resolvers configs/hydra/default.yaml uses; called before Hydra composes."""
    OmegaConf.register_new_resolver("mlpkit_run_dir", run_dir_for, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("mlpkit_output_subdir", output_subdir, replace=True, use_cache=True)
    # Cached in the config: Hydra copies a sweep's resolved values into every job's config (its
    # load_sweep_config), so each job, in whichever process, gets the directory the sweep took.
    OmegaConf.register_new_resolver("mlpkit_sweep_dir", unique_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("mlpkit_job_dirname", job_dirname, replace=True)
    OmegaConf.register_new_resolver("mlpkit_direction", direction, replace=True)


def direction(metric: str, mode: str) -> str:
    """The Optuna sweeper's direction for ``objective.metric``/``objective.mode`` (auto: the metric's own)."""
    from mlpkit.schema import objective_mode

    return f"{objective_mode(metric, mode)}imize"


def run_dir_for(resume: str | None, new_run_dir: str) -> str:
    """hydra.run.dir: a resumed run goes on in its own directory; any other run gets a new one. Under
    torchrun every rank takes the one rank 0 chose."""
    from mlpkit import distributed

    if not distributed.launched():
        return own_run_dir(resume, new_run_dir)
    return distributed.broadcast_object(own_run_dir(resume, new_run_dir) if distributed.writes_files() else None)


def own_run_dir(resume: str | None, new_run_dir: str) -> str:
    if resume:
        path = Path(resume).expanduser().resolve()
        if path.is_dir() and ((path / CHECKPOINT_DIR).is_dir() or (path / CV_SUMMARY_FILE).is_file()):
            return str(path)  # a cross-validation's: refused in its own directory, no new one made
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
    from mlpkit import distributed

    held = note_whether_held(Path(output_dir))
    if distributed.launched():  # every rank has asked before rank 0 writes .hydra/; the others write none
        distributed.barrier()
        return None if held or not distributed.writes_files() else HYDRA_DIR
    return None if held else HYDRA_DIR


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

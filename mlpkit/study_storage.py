"""The storage of an Optuna study that several workers share (``python train.py -m hparams_search=optuna``
in several terminals or on several machines): its URL, checked; SQLite made safe for concurrent writers;
a trial created only while the study holds fewer than its n_trials; a lock on a folder for what workers
write beside it (the study's creation, the sweep report)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlpkit.errors import ConfigError

# the user attribute of a trial whose worker stopped (Ctrl-C, a signal) before its job ended: it stays
# RUNNING, is no longer counted in n_trials, and a new trial takes its place
INTERRUPTED_ATTR = "interrupted"
# hydra.sweeper.storage, not hparams_search.storage: a run refuses keys under a group's name
# (mlpkit.config_keys), and the sweeper is built before Hydra's ${hydra:...} resolves for a default
STORAGE_KEY = "hydra.sweeper.storage"
STORAGE_ALLOWED = ("null (the sweep directory's optuna.db), sqlite:///<file in a writable folder> (workers on one "
                   "machine), or an RDB URL such as postgresql://user:password@host/db or mysql://user:password@host/db "
                   "(workers on several machines)")
STUDY_FILE = "optuna.db"  # the study's SQLite file in the sweep directory when no storage is named
RDB_BACKENDS = ("sqlite", "postgresql", "mysql", "oracle", "mssql")  # SQLAlchemy's, which Optuna 2's RDBStorage takes
SQLITE_WAIT_S = 300  # how long a write waits for another process's transaction (a tell, a job's report)


class StudyFull(Exception):
    """The study holds its n_trials (finished or running in any worker): no trial is created."""


def study_storage(storage: Any, sweep_dir: Any) -> str:
    """The study's storage URL: ``hydra.sweeper.storage``, or for null the
    sweep directory's STUDY_FILE; the sweeper, its jobs and the sweep callback all ask here."""
    return str(storage) if storage is not None else f"sqlite:///{Path(str(sweep_dir)) / STUDY_FILE}"


def check_storage(url: Any) -> None:
    """A study's storage URL (study_storage's): an SQLite file whose folder this process can write (made
    if missing), or an URL of another database SQLAlchemy knows. Optuna 2 has no journal file storage."""
    from sqlalchemy.engine import make_url  # comes with optuna: only a sweep's storage is checked

    try:
        backend, database = make_url(str(url)).get_backend_name(), make_url(str(url)).database
    except Exception:  # noqa: BLE001 - SQLAlchemy's ArgumentError: not an URL at all
        raise ConfigError(STORAGE_KEY, url, STORAGE_ALLOWED) from None
    if backend not in RDB_BACKENDS:
        raise ConfigError(STORAGE_KEY, url, STORAGE_ALLOWED, f"{backend}:// is not a database the workers can share")
    if backend != "sqlite":
        return
    if not database or database == ":memory:":
        raise ConfigError(STORAGE_KEY, url, STORAGE_ALLOWED, "an SQLite study in memory is seen by one process only")
    folder = Path(database).absolute().parent
    blocking = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not blocking.is_dir():
        raise ConfigError(STORAGE_KEY, url, STORAGE_ALLOWED, f"{blocking} is a file, so no folder can be made there")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(STORAGE_KEY, url, STORAGE_ALLOWED, f"cannot make {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK) or Path(database).is_dir():
        raise ConfigError(STORAGE_KEY, url, STORAGE_ALLOWED, f"{database} cannot be written")


@contextmanager
def study_creation(url: str):
    """Workers opening a new SQLite study at once: one creates its tables and the study, the others wait
    and load it (a lock on the file's folder; SQLite's own locks on the file stay untouched). Other
    databases create their tables inside one transaction each, and a study twice is refused by name."""
    if not url.startswith("sqlite"):
        yield
        return
    from sqlalchemy.engine import make_url

    with locked_folder(Path(make_url(str(url)).database).absolute().parent):
        yield


@contextmanager
def locked_folder(folder: Path):
    """An exclusive lock on ``folder`` among this machine's processes (flock on the folder itself: no
    file is left behind, and SQLite's own locks on the files inside are untouched)."""
    import fcntl

    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def open_storage(url: str, trial_limit: int | None = None) -> Any:
    """Optuna's RDBStorage on ``url`` for a worker of a shared study: it creates a trial only while the
    study holds fewer than ``trial_limit`` (else StudyFull), counted in the same transaction as the
    insert. Optuna takes a lock on the study's row there (PostgreSQL, MySQL); SQLite transactions
    are made BEGIN IMMEDIATE, one writer at a time, each waiting up to SQLITE_WAIT_S: no
    "database is locked", no deadlock between two that read then write."""
    import optuna
    from optuna.storages._rdb import models  # the table Optuna counts trial numbers in

    class SharedStudyStorage(optuna.storages.RDBStorage):
        def _get_prepared_new_trial(self, study_id: int, template_trial: Any, session: Any) -> Any:
            if trial_limit is not None:
                interrupted = session.query(models.TrialUserAttributeModel.trial_id).filter(
                    models.TrialUserAttributeModel.key == INTERRUPTED_ATTR)
                held = session.query(models.TrialModel).filter(
                    models.TrialModel.study_id == study_id, models.TrialModel.trial_id.notin_(interrupted)).count()
                if held >= trial_limit:
                    raise StudyFull(f"the study holds {held} trials of {trial_limit}")
            return super()._get_prepared_new_trial(study_id, template_trial, session)

    check_storage(url)
    sqlite = url.startswith("sqlite")
    storage = SharedStudyStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_WAIT_S}} if sqlite else None)
    if sqlite:
        serialize_sqlite_writers(storage.engine)
    return storage


def serialize_sqlite_writers(engine: Any) -> None:
    """SQLAlchemy's recipe: the driver opens no transaction of its own, each one begins IMMEDIATE."""
    from sqlalchemy import event

    event.listen(engine, "connect", lambda connection, record: setattr(connection, "isolation_level", None))
    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    engine.dispose()  # connections made before the listeners (the tables' creation) are not reused

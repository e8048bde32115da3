"""The errors a run can end with, their exit codes, and the value helpers their messages use.

Imports nothing of mlpkit, so every module can raise these without pulling in the config schema.
Exit codes: 2 a config or data value that cannot work, 3 a non-finite loss, 4 the machine refused
(disk full, a directory that cannot be written), 128+N a signal N.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EXIT_CONFIG = 2      # a value that cannot work: config key, data file, checkpoint
EXIT_NONFINITE = 3   # the loss or a gradient became NaN or infinite
EXIT_ENVIRONMENT = 4  # the machine refused: a disk full, a directory that cannot be written
EXIT_SIGNAL = 128    # plus the signal number, as shells report a process a signal stopped


class ConfigError(ValueError):
    """A config value that cannot work: names the key, the value given and what is allowed."""

    exit_code = EXIT_CONFIG

    def __init__(self, key: str, value: Any, allowed: str, hint: str = ""):
        self.key, self.value, self.allowed = key, value, allowed
        message = f"{key}={show_value(value)} is not valid: expected {allowed}"
        super().__init__(message + (f". {hint}" if hint else ""))

    def __reduce__(self):
        # Pickled whole (message and attributes), not rebuilt through __init__: parallel launchers
        # (joblib, Ray) send a failed job's exception back to the sweep process.
        return _restore_error, (type(self), self.args, self.__dict__)


class DataError(ConfigError):
    """A dataset that cannot load as configured: one line naming the key, file, row or column."""

    def __init__(self, key: str, value: Any, message: str):
        super().__init__(key, value, message)
        self.args = (f"{key}={value}: {message}",)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: names the file and what is wrong, in one line (key ``resume``)."""

    def __init__(self, path: Any, problem: str):
        self.key, self.value, self.allowed = "resume", str(path), "a checkpoint that fits the run"
        self.path = str(path)
        ValueError.__init__(self, f"checkpoint {path} {problem}")


class TrainingStopped(Exception):
    """The run stopped before its last epoch: a signal (exit code 128+signum) or a non-finite loss (3).
    ``completed``: a signal that came after the last step, once the run's files were written."""

    completed = False

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        # Whole, as ConfigError: a launcher's worker (joblib, Ray) sends a stopped job's exception back.
        return _restore_error, (type(self), self.args, self.__dict__)

    @classmethod
    def by_signal(cls, message: str, signum: int) -> TrainingStopped:
        return cls(message, EXIT_SIGNAL + signum)

    @property
    def nonfinite(self) -> bool:
        return self.exit_code == EXIT_NONFINITE


def environment_fault(error: OSError, doing: str) -> TrainingStopped:
    """One line for an OSError met while ``doing`` something (writing a checkpoint, the run directory)."""
    where = f": {error.filename}" if getattr(error, "filename", None) else ""
    return TrainingStopped(f"could not {doing}{where}: {error.strerror or error}", EXIT_ENVIRONMENT)


def _restore_error(cls: type, args: tuple, state: dict) -> Exception:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def show_value(value: Any) -> str:
    """A value as it is typed on the command line: [64,32], {name:relu}."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{show_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return "[" + ",".join(show_value(item) for item in value) + "]"
    return str(value)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """ConfigError(key, value, allowed) unless ``ok``."""
    if not ok:
        raise ConfigError(key, value, allowed)


def is_int(value: Any) -> bool:
    """An integer, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)

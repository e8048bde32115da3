"""What scikit-learn computes for a run's data (a bundled set's arrays, generated points, split
indices), kept on disk with joblib.Memory (scikit-learn's own dependency), so that a run whose data
was seen before does not import scikit-learn: its import pulls in scipy.stats (and pandas, where
installed) and takes about a second, longer than a default run's training.

The cache lives in ``$MLPKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlpkit``, else ``~/.cache/mlpkit``,
in a folder per scikit-learn version; ``MLPKIT_CACHE_DIR=`` (empty) turns it off. Entries are keyed
by the arguments (arrays by their contents) and the caching function's code; past 1 GB the entries
used longest ago go. A cache that cannot be
written is skipped and an entry that cannot be read is computed again: the cache never fails a run.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

CACHE_ENV = "MLPKIT_CACHE_DIR"
CACHE_BYTES = "1G"  # past this, the entries used longest ago are deleted (checked once a process)
Function = TypeVar("Function", bound=Callable[..., Any])


def cache_dir() -> Path | None:
    """Where the cache lives (None: off)."""
    setting = os.environ.get(CACHE_ENV)
    if setting is not None:
        return Path(setting).expanduser() if setting else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlpkit"


@functools.cache
def _memory(location: Path | None) -> Any:
    import joblib

    if location is not None:
        location = location / f"scikit-learn-{importlib.metadata.version('scikit-learn')}"
        try:
            location.mkdir(parents=True, exist_ok=True)
        except OSError:  # read-only home, a file in the way: compute every time
            location = None
    memory = joblib.Memory(location, verbose=0)
    memory.reduce_size(bytes_limit=CACHE_BYTES)
    return memory


@functools.cache
def _memorized(location: Path | None, function: Callable[..., Any]) -> Callable[..., Any]:
    return _memory(location).cache(function)


def sklearn_cached(function: Function) -> Function:
    """``function`` (a module-level function that calls scikit-learn and returns arrays) with its
    results kept in the cache."""

    @functools.wraps(function)
    def cached(*args: Any, **kwargs: Any) -> Any:
        return _memorized(cache_dir(), function)(*args, **kwargs)

    return cached  # type: ignore[return-value]

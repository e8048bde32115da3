"""A disk cache for what a run needs that is slow to make and always the same for the same inputs:
what scikit-learn computes for a run's data (a bundled set's arrays, generated points, split
indices) and the activation figure. A run whose data and activation were seen before then imports
neither scikit-learn (its import pulls in scipy.stats: about a second, longer than a default run's
training) nor, when it trains for zero epochs, matplotlib. The cache is joblib.Memory
(scikit-learn's own dependency).

It lives in ``$MLPKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlpkit``, else ``~/.cache/mlpkit``, in a
folder per scikit-learn and matplotlib version; ``MLPKIT_CACHE_DIR=`` (empty) turns it off. Entries
are keyed by the arguments (arrays by their contents) and the caching function's code; past 1 GB the
entries used longest ago go. A cache that cannot be written is skipped and an entry that cannot be
read is made again: the cache never fails a run.
"""
from __future__ import annotations

import functools
import hashlib
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


def versions_folder() -> str:
    """The folder for these versions of what computes the entries (read without importing them)."""
    return "_".join(f"{name}-{importlib.metadata.version(name)}" for name in ("scikit-learn", "matplotlib"))


def source_digest(*modules: str) -> str:
    """A digest of mlpkit modules' source, for an entry whose function calls code the cache cannot see
    (joblib compares the cached function's own code only)."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def _memory(location: Path | None) -> Any:
    import joblib

    if location is not None:
        location = location / versions_folder()
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


def disk_cached(function: Function) -> Function:
    """``function`` (module level, returning arrays or plain values) with its results kept in the cache."""

    @functools.wraps(function)
    def cached(*args: Any, **kwargs: Any) -> Any:
        return _memorized(cache_dir(), function)(*args, **kwargs)

    return cached  # type: ignore[return-value]

"""A disk cache for what a run needs that is slow to make and always the same for the same inputs:
what scikit-learn computes for a run's data (a bundled set's arrays, generated points, split
indices) and the activation figure. A run whose data and activation were seen before then imports
neither scikit-learn (its import pulls in scipy.stats: about a second, longer than a default run's
training) nor, when it trains for zero epochs, matplotlib.

An entry is one ``.npz`` file read with ``allow_pickle=False``: numpy arrays (strings as fixed-width
unicode, never object dtype; the activation image as its uint8 pixels) and a JSON record of the
plain values around them (str, int, float, bool, None, and lists, tuples and dicts of them). No
file in the cache can carry code: a pickle planted where an entry lives is a damaged entry, made
again. A cached function that returns anything else raises TypeError when its result is stored.

It lives in ``$MLPKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlpkit``, else ``~/.cache/mlpkit``, in a
folder per scikit-learn and matplotlib version; ``MLPKIT_CACHE_DIR=`` (empty) turns it off. Entries
are keyed by the function, its source and its arguments (arrays by their contents); a function that
calls code the key cannot see takes ``source_digest`` of those modules as an argument. Past 1 GB the
entries used longest ago go. Entries are written to a temporary file and renamed into place, so two
processes writing one entry leave a whole one. A cache that cannot be written is skipped, one that
another user owns or can write is refused (one warning line), and an entry that cannot be read is
made again without a word: the cache never fails a run.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

CACHE_ENV = "MLPKIT_CACHE_DIR"
CACHE_BYTES = 1 << 30  # past this, the entries used longest ago are deleted (checked once a process)
FORMAT = "npz-1"  # part of every key: a new layout of entries never reads an old one
STRUCTURE = "structure"  # the JSON record's name inside an entry; arrays are "0", "1", ...
WRITING = ".writing-"  # an entry's name while it is written, before it is renamed into place
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
    (the key holds the cached function's own source only)."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]


# --- where entries live ----------------------------------------------------------------------------
def _others_can_write(folder: Path) -> str | None:
    """Why ``folder`` could hold entries someone else wrote (None: only we can write it)."""
    if not hasattr(os, "getuid"):  # Windows: no POSIX owner and mode bits to judge
        return None
    status = folder.stat()
    if status.st_uid != os.getuid():
        return f"it belongs to user id {status.st_uid}"
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group or others can write it ({stat.filemode(status.st_mode)})"
    return None


@functools.cache
def _prepared(root: Path | None) -> Path | None:
    """The versions folder of the cache at ``root``, made and trimmed to size once a process; None
    where there is no cache to use."""
    if root is None:
        return None
    folder = root / versions_folder()
    try:  # mode 0o700: what we create only we can write, whatever the umask
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.mkdir(exist_ok=True, mode=0o700)
        for checked in (root, folder):
            problem = _others_can_write(checked)
            if problem:  # its entries could be anyone's data: computed every time instead
                print(f"warning: not using the cache {checked}: {problem}; chmod go-w {checked} or set "
                      f"{CACHE_ENV} to a folder of your own (empty: no cache)", file=sys.stderr)
                return None
        _evict(root, CACHE_BYTES)
    except OSError:  # read-only home, a file in the way: compute every time
        return None
    return folder


def _evict(root: Path, bytes_limit: int) -> None:
    """Delete the entries used longest ago (every versions folder's) until the rest fit the limit,
    and what a killed process left half written."""
    found = []
    for path in root.glob("*/*/*"):
        try:
            status = path.stat()
        except OSError:  # deleted meanwhile by another process
            continue
        if path.name.startswith(WRITING) and status.st_mtime < time.time() - 3600:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        elif stat.S_ISREG(status.st_mode):
            found.append((status.st_mtime, status.st_size, path))
    total = sum(size for _, size, _ in found)
    for _, size, path in sorted(found, key=lambda entry: entry[0]):
        if total <= bytes_limit:
            break
        try:
            path.unlink(missing_ok=True)
        except OSError:  # a read-only cache: what is there is still read
            return
        total -= size


# --- the key ------------------------------------------------------------------------------------
def _key_parts(value: Any, digest: Any) -> None:
    """Feed ``value`` to ``digest`` with its type, so that 1, 1.0, True and "1" key apart."""
    import numpy as np  # the cached functions' callers have imported it already

    if isinstance(value, (np.ndarray, np.generic)):
        array = np.ascontiguousarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"a cached function's argument is an array of Python objects: {array.dtype}")
        digest.update(f"array {array.dtype.str} {array.shape}|".encode())
        digest.update(memoryview(array).cast("B"))
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__} {value!r}|".encode())
    elif isinstance(value, Mapping):
        digest.update(f"dict {len(value)}|".encode())
        for name in sorted(value, key=str):
            _key_parts(str(name), digest)
            _key_parts(value[name], digest)
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):  # OmegaConf's lists too
        digest.update(f"list {len(value)}|".encode())
        for item in value:
            _key_parts(item, digest)
    else:
        raise TypeError(f"a cached function's argument is a {type(value).__name__}: the cache keys arrays, "
                        "str, int, float, bool, None and lists and dicts of them")


@functools.cache
def _code(function: Callable[..., Any]) -> str:
    """The function's name and source: a change to it makes new entries."""
    return f"{FORMAT} {function.__module__}.{function.__qualname__}\n{inspect.getsource(function)}"


def _key(function: Callable[..., Any], args: tuple, kwargs: dict) -> str:
    arguments = inspect.signature(function).bind(*args, **kwargs)
    arguments.apply_defaults()  # f(x) and f(x, default) are one entry
    digest = hashlib.sha256(_code(function).encode())
    _key_parts(dict(arguments.arguments), digest)
    return digest.hexdigest()[:32]


# --- an entry: arrays and a JSON record of the values around them ---------------------------------
def _encode(value: Any, arrays: list[Any]) -> Any:
    """``value`` as JSON, each array replaced by its index in ``arrays``; containers are tagged so
    that a tuple comes back a tuple and a dict's keys never clash with a tag."""
    import numpy as np

    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.hasobject:
            raise TypeError(f"an array of Python objects ({value.dtype})")
        arrays.append(value)
        return {"scalar" if isinstance(value, np.generic) else "array": len(arrays) - 1}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [_encode(item, arrays) for item in value]}
    if isinstance(value, dict) and all(isinstance(name, str) for name in value):
        return {"dict": {name: _encode(item, arrays) for name, item in value.items()}}
    raise TypeError(f"a {type(value).__name__}")


def _decode(record: Any, arrays: Mapping[str, Any]) -> Any:
    if not isinstance(record, dict):
        return record
    ((tag, content),) = record.items()
    if tag == "list":
        return [_decode(item, arrays) for item in content]
    if tag == "tuple":
        return tuple(_decode(item, arrays) for item in content)
    if tag == "dict":
        return {name: _decode(item, arrays) for name, item in content.items()}
    return arrays[str(content)][()] if tag == "scalar" else arrays[str(content)]


def _write(path: Path, record: Any, arrays: list[Any]) -> None:
    """The entry, written whole under a temporary name and then renamed into place (atomic)."""
    import numpy as np

    members = {str(index): array for index, array in enumerate(arrays)}
    descriptor, temporary = tempfile.mkstemp(prefix=WRITING, suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, **{STRUCTURE: np.array(json.dumps(record))}, **members)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read(path: Path) -> Any:
    """The entry's value; any damage raises (ValueError, OSError, KeyError, ...)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as entry:  # a pickle, or an object array, is refused
        arrays = {name: entry[name] for name in entry.files}
    value = _decode(json.loads(str(arrays.pop(STRUCTURE)[()])), arrays)
    with contextlib.suppress(OSError):  # a read-only cache is still read
        os.utime(path)  # used now: the last to be evicted
    return value


_off = threading.local()  # off.here: this thread's calls go uncached


@contextlib.contextmanager
def flag_in_this_thread(flags: threading.local, name: str) -> Iterator[None]:
    """``flags.<name>`` true in this thread while the block runs, then as it was."""
    before = getattr(flags, name, False)
    setattr(flags, name, True)
    try:
        yield
    finally:
        setattr(flags, name, before)


def cache_off() -> contextlib.AbstractContextManager[None]:
    """The cache neither read nor written from this thread: an estimator's fit writes nothing to disk
    (its data is already in memory; scikit-learn, already imported, splits it in microseconds)."""
    return flag_in_this_thread(_off, "here")


def disk_cached(function: Function) -> Function:
    """``function`` (module level, returning arrays and plain values) with its results kept in the cache."""

    @functools.wraps(function)
    def cached(*args: Any, **kwargs: Any) -> Any:
        folder = None if getattr(_off, "here", False) else _prepared(cache_dir())
        if folder is not None:
            path = folder / f"{function.__module__}.{function.__qualname__}" / f"{_key(function, args, kwargs)}.npz"
            try:
                return _read(path)
            except Exception:  # missing, cut short, planted or unreadable: made again below
                pass
        result = function(*args, **kwargs)
        arrays: list[Any] = []
        try:  # checked with the cache off too: a value it cannot hold fails the same everywhere
            record = _encode(result, arrays)
        except TypeError as error:
            raise TypeError(f"{function.__qualname__} returned {error}: the disk cache holds numpy arrays "
                            "(not of objects), str, int, float, bool, None and lists, tuples and dicts "
                            "of them") from None
        if folder is not None:
            try:
                path.parent.mkdir(exist_ok=True, mode=0o700)
                _write(path, record, arrays)
            except OSError:  # a full disk or a read-only cache: the result is still right
                pass
        return result

    return cached  # type: ignore[return-value]

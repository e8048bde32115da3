"""Checkpoints: atomic save, safe load (``weights_only=True``), and everything resume needs.

A checkpoint is a dict of tensors and plain containers only, so ``torch.load(path,
weights_only=True)`` can read it and a crafted file cannot run code. It holds the model,
optimizer (and scheduler) state, the epochs completed and the step, every RNG state the loop
draws from, the resolved config and the best-metric bookkeeping.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mlpkit.errors import CheckpointError, ConfigError, show_value
from mlpkit.rng import RNG_KEYS, capture_rng_state, restore_rng_state
from mlpkit.rundir import CHECKPOINT_DIR, CV_SUMMARY_FILE, LAST_CHECKPOINT

FORMAT = "mlpkit-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("model", "optimizer", "optimizer_class", "epoch", "step", "rng", "config", "best")
PLAIN_SCALARS = (str, int, float, bool, type(None))


# --- saving ----------------------------------------------------------------------------------
def checkpoint_state(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    batch_generator: torch.Generator | None,
    config: Mapping[str, Any] | None,
    best: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict; ``epoch`` counts the epochs completed (the next one to run).

    ``config`` is the resolved config (a DictConfig is resolved here to a plain dict); ``best``
    and ``extra`` must hold plain values only, e.g. ``{"metric": "loss/val", "mode": "min",
    "value": 0.31, "epoch": 4}`` and ``{"history": [...]}``.
    """
    if config is not None and not isinstance(config, dict):
        from omegaconf import OmegaConf  # only a DictConfig needs it

        config = OmegaConf.to_container(config, resolve=True)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "torch_version": str(torch.__version__),  # TorchVersion is not plain
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "optimizer_class": type(optimizer).__name__,
        "epoch": int(epoch),
        "step": int(step),
        "rng": capture_rng_state(batch_generator),
        "config": config,
        "best": dict(best) if best is not None else None,
        "extra": dict(extra) if extra is not None else {},
    }
    _require_plain(state, "checkpoint")
    return state


def host_copy(value: Any) -> Any:
    """``value`` (a checkpoint state) with every tensor copied to host memory and every container
    copied: kept for a later write, it stays as it was while training goes on."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if type(value) in (dict, OrderedDict):
        copied = type(value)((key, host_copy(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # a state_dict's module versions, an OrderedDict attribute
            copied._metadata = value._metadata
        return copied
    if type(value) in (list, tuple):
        return type(value)(host_copy(item) for item in value)
    return value


def _require_plain(value: Any, where: str) -> None:
    """Fail at save time, not at load time, on anything weights_only loading would refuse.

    Exact types: a subclass such as numpy.float64 (a float) or TorchVersion (a str) is refused.
    """
    if type(value) in PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            _require_plain(key, f"{where} key")
            _require_plain(item, f"{where}.{key}")
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _require_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where} holds a {type(value).__name__}; only tensors, dict, "
                    "list, tuple, str, int, float, bool and None can be loaded with weights_only=True")


def atomic_save(state: Mapping[str, Any], path: str | os.PathLike, *also: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` (and to each of ``also``, in the same directory) so that a crash at
    any moment leaves the old file or the new one.

    Temporary file in the same directory (same filesystem, so the rename is atomic), flushed and
    fsynced, then ``os.replace``d over the target; the directory is fsynced so the rename lasts.
    Each of ``also`` becomes a second name of the same file (a hard link, renamed over it the same
    way): written once, not twice, and a later save replaces ``path`` with a new file, so the
    other name keeps this state. Where the filesystem has no hard links it is written again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_replacing(state, path)
    for other in map(Path, also):
        try:
            _replace_with(other, lambda temporary: os.link(path, temporary))
        except OSError:  # no hard links here (FAT, some network filesystems)
            _write_replacing(state, other)
    _fsync_directory(path.parent)
    return path


def _write_replacing(state: Mapping[str, Any], path: Path) -> None:
    def write(temporary: Path) -> None:
        # Not tempfile.mkstemp: its files are private (0600); this one gets the umask like any other.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as file:
            try:
                torch.save(dict(state), file)
            except RuntimeError as error:  # torch's zip writer hides a full disk's OSError behind its own
                if isinstance(error.__context__, OSError):
                    raise error.__context__ from None
                raise
            file.flush()
            os.fsync(file.fileno())

    _replace_with(path, write)


def _replace_with(path: Path, make: Callable[[Path], None]) -> None:
    """``make(temporary)`` creates a file beside ``path``, which is then renamed over ``path``."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # from a run killed mid-write
        leftover.unlink(missing_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        make(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory (Windows)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> Path:
    """``atomic_save(checkpoint_state(**fields), path)``; see ``checkpoint_state`` for the fields."""
    return atomic_save(checkpoint_state(**fields), path)


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` under ``mode`` (min or max); NaN never does."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value < best if mode == "min" else value > best


# --- loading ---------------------------------------------------------------------------------
def resolve_resume_path(value: str | os.PathLike) -> Path:
    """``resume=`` a run directory (its checkpoints/last.pt) or a checkpoint file, as a Path."""
    path = Path(value).expanduser()
    if path.is_dir() and (path / CV_SUMMARY_FILE).is_file():
        folds = sorted(child.name for child in path.glob("fold_*") if child.is_dir())
        raise ConfigError("resume", value, "one fold's run directory of a cross-validation",
                          f"{path} holds a cross-validation, which resumes fold by fold: resume={path}/fold_<i> "
                          f"({', '.join(folds)})")
    if path.is_dir():
        for candidate in (path / CHECKPOINT_DIR / LAST_CHECKPOINT, path / LAST_CHECKPOINT):
            if candidate.is_file():
                return candidate
        raise ConfigError("resume", value, f"a run directory holding {CHECKPOINT_DIR}/{LAST_CHECKPOINT}, or a "
                          "checkpoint file", f"{path} has no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} (did the run "
                          "end its first epoch?)")
    if path.is_file():
        return path
    raise ConfigError("resume", value, f"a run directory holding {CHECKPOINT_DIR}/{LAST_CHECKPOINT}, or a "
                      "checkpoint file", f"{path} does not exist")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; CheckpointError if it is unsafe or not one.

    The returned dict also holds ``path`` (the file it came from) for the messages of ``restore``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "does not exist" if not path.exists() else "is not a file")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it does not expect; the error below says more.
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(path, f"was refused: {_unsafe_reason(error)}; it could run code when "
                              "unpickled, so nothing in it was loaded") from None
    except Exception as error:  # noqa: BLE001 - a bad file raises RuntimeError, EOFError, KeyError...
        detail = str(error).splitlines()[0].strip() if str(error).strip() else type(error).__name__
        raise CheckpointError(path, f"cannot be read, it is truncated, corrupt or not a PyTorch "
                              f"file ({type(error).__name__}: {detail[:120]})") from None
    _check_format(state, path)
    state["path"] = str(path)
    return state


def _unsafe_reason(error: Exception) -> str:
    message = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"it holds {found.group(1)}, not only tensors and plain containers"
    found = re.search(r"^(Unsupported .*?)\s*$", message, re.MULTILINE)
    reason = found.group(1) if found else "weights_only loading failed"
    return f"it is not only tensors and plain containers ({reason})"


def _check_format(state: Any, path: Path) -> None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = "a bare state_dict?" if isinstance(state, dict) else f"it holds a {type(state).__name__}"
        raise CheckpointError(path, f"is not an mlpkit checkpoint ({what})")
    if not isinstance(state.get("version"), int) or state["version"] > VERSION:
        raise CheckpointError(path, f"has format version {state.get('version')}; this mlpkit reads "
                              f"up to {VERSION} (written by a newer mlpkit?)")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    missing += [f"rng.{key}" for key in RNG_KEYS if key not in (state.get("rng") or {})]
    if missing:
        raise CheckpointError(path, f"is incomplete: no {', '.join(missing)}")
    model, optimizer = state["model"], state["optimizer"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(path, "is damaged: its model entry is not a state_dict of tensors")
    if not isinstance(optimizer, dict) or not {"state", "param_groups"} <= optimizer.keys():
        raise CheckpointError(path, "is damaged: its optimizer entry is not an optimizer state_dict")


def restore(
    state: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    batch_generator: torch.Generator | None = None,
) -> None:
    """Load weights, optimizer state and every RNG state, after checking they fit (the callbacks'
    states, the learning-rate schedule's among them, are the trainer's to load).

    Everything is checked before anything is changed, so a checkpoint that does not fit leaves
    the model and optimizer untouched.
    """
    path = state.get("path", "<in memory>")
    check_model_fits(state, model)
    if optimizer is not None:
        _check_optimizer(state, optimizer, path)
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"], batch_generator)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
        raise CheckpointError(path, f"is damaged: restoring it failed with {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}"[:300]) from None


def check_model_fits(state: Mapping[str, Any], model: torch.nn.Module) -> None:
    """CheckpointError naming the first parameter that is missing, extra or of another shape."""
    path = state.get("path", "<in memory>")
    saved, current = state["model"], model.state_dict()
    for name, tensor in current.items():
        if name not in saved:
            problem = f"{name} is in the model but not in the file"
        elif tuple(saved[name].shape) != tuple(tensor.shape):
            problem = (f"{name} has shape {list(saved[name].shape)} in the file but "
                       f"{list(tensor.shape)} in the model")
        else:
            continue
        raise CheckpointError(path, f"does not fit the model: {problem} "
                              f"({_hint(name, saved.get(name), tensor, model, state)})")
    extra = [name for name in saved if name not in current]
    if extra:
        raise CheckpointError(path, f"does not fit the model: {extra[0]} is in the file but not in "
                              f"the model ({_hint(extra[0], saved[extra[0]], None, model, state)})")


def _hint(parameter: str, saved: torch.Tensor | None, current: torch.Tensor | None,
          model: torch.nn.Module, state: Mapping[str, Any]) -> str:
    """Which config value most likely differs, with the file's value when it has its config."""
    layer = parameter.split(".")[0]
    linears = [name for name, module in model.named_children() if isinstance(module, torch.nn.Linear)]
    resized = (saved is not None and current is not None and saved.dim() == current.dim() == 2)
    if layer.startswith("act"):
        setting = "activation"
    elif parameter.endswith(".bias") and (saved is None or current is None):
        setting = "model.bias"
    elif resized and linears and layer == linears[0] and saved.shape[1] != current.shape[1]:
        setting = "data.source"  # the number of input features differs
    elif (resized and linears and layer == linears[-1] and saved.shape[0] != current.shape[0]
          and saved.shape[1] == current.shape[1]):
        setting = "data.source"  # the number of classes or targets differs
    else:
        setting = "model.hidden_sizes"
    value = _lookup(state.get("config"), setting)
    if value is None:
        return f"was it trained with other {setting}?"
    return f"was it trained with other {setting}? the file has {setting}={show_value(value)}"


def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


def _check_optimizer(state: Mapping[str, Any], optimizer: torch.optim.Optimizer, path: str) -> None:
    if state["optimizer_class"] != type(optimizer).__name__:
        raise CheckpointError(path, f"has optimizer {state['optimizer_class']} but the run uses "
                              f"{type(optimizer).__name__} (was it trained with another optimizer?)")
    saved = [len(group["params"]) for group in state["optimizer"].get("param_groups", [])]
    current = [len(group["params"]) for group in optimizer.param_groups]
    if saved != current:
        raise CheckpointError(path, f"does not fit the optimizer: parameter groups of sizes {saved} "
                              f"in the file but {current} in the run")


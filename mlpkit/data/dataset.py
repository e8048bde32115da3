"""The Data container, the source registry, and build_data: split, standardise, place tensors."""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlpkit.data.missing import fill_missing
from mlpkit.data.raw import RawData, launch_path  # noqa: F401  (launch_path: for sources registered by name)
from mlpkit.data.splits import prepare_features, prepare_targets, split_rows
from mlpkit.data.stream import open_stream
from mlpkit.errors import ConfigError
from mlpkit.rundir import LABELS_FILE, PREPROCESSING_FILE

# name -> "module:function"; modules are imported only when their source is chosen.
SOURCES: dict[str, str] = {
    "digits": "mlpkit.data.bundled:load_digits",
    "breast_cancer": "mlpkit.data.bundled:load_breast_cancer",
    "diabetes": "mlpkit.data.bundled:load_diabetes",
    "moons": "mlpkit.data.synthetic:moons",
    "circles": "mlpkit.data.synthetic:circles",
    "spirals": "mlpkit.data.synthetic:spirals",
    "xor": "mlpkit.data.synthetic:xor",
    "blobs": "mlpkit.data.synthetic:blobs",
    "sine": "mlpkit.data.synthetic:sine",
    "mnist": "mlpkit.data.vision:mnist",
    "fashion_mnist": "mlpkit.data.vision:fashion_mnist",
    "cifar10": "mlpkit.data.vision:cifar10",
    "csv": "mlpkit.data.table:load_csv",
    "arrays": "mlpkit.data.arrays:arrays",  # an estimator's fit(X, y): refused by name
}
# Keys of a data config that build_data itself uses; every other key goes to the source function.
SPLIT_KEYS = ("source", "val_fraction", "test_fraction", "split_seed", "standardize",
              "standardize_target", "cv_folds", "cv_fold", "stream", "shuffle_buffer", "eval_rows")
# Share of the device's free memory the dataset may take; the rest is for the model, activations
# and the evaluation chunks.
DEVICE_MEMORY_SHARE = 0.75
GATHER_BYTES = 8 << 20  # features the training loop gathers at once, then steps through batch by batch


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """A fresh shuffle of the rows, on the split's device."""
        return torch.randperm(len(self), generator=generator).to(self.x.device)

    def head(self, rows: int) -> Split:
        return Split(self.x[:rows], self.y[:rows])

    def chunks(self, rows: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rows in order, ``rows`` at a time, on ``device``."""
        for start in range(0, len(self), rows):
            yield self.batch(slice(start, start + rows), device)

    def batches(self, order: torch.Tensor, batch_size: int, first: int, count: int, device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``first`` to ``count - 1`` of the shuffle ``order`` as ``(x, y)`` on ``device``: the
        values of ``x[order[batch rows]]``, for the training loop.

        Rows are gathered a chunk at a time (about GATHER_BYTES of features, at least one batch;
        a digits epoch is one chunk) and each batch is a view into its chunk (``split``, one call
        for all of a chunk's): one gather per chunk rather than two per step (in a digits step on
        2 CPU cores those two took 20 of 700 us).
        """
        row_bytes = math.prod(self.x.shape[1:]) * self.x.element_size()
        per_chunk = max(1, GATHER_BYTES // max(1, batch_size * row_bytes))
        for chunk in range(first, count, per_chunk):
            end = min(count, chunk + per_chunk)
            x, y = self.batch(order[chunk * batch_size:end * batch_size], device)
            yield from zip(x.split(batch_size), y.split(batch_size))

    def batch(self, index: torch.Tensor | slice, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``index`` (row numbers on this split's device, or a slice) as tensors on ``device``.

        A split on the device already is plainly indexed. A split in host memory for an
        accelerator (placement "pinned-host") has its rows gathered, pinned and copied
        asynchronously.
        """
        x, y = (self.x[index], self.y[index]) if isinstance(index, slice) else (
            self.x.index_select(0, index), self.y.index_select(0, index))  # a quarter of x[index]'s time on CPU
        if self.x.device.type == "cpu" and torch.device(device).type != "cpu":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


@dataclass
class Data:
    """A dataset ready to train on: splits as tensors, plus what the model needs.

    ``placement`` is "device" (every split on ``device``, batches by index), "pinned-host" (too
    large for the device: splits in pinned host memory, batches copied with ``Split.batch``) or
    "stream" (data.stream=true: the splits are ``mlpkit.data.stream.StreamSplit``, read as needed).
    """

    name: str
    task: str
    train: Split
    val: Split
    test: Split
    feature_names: list[str]
    class_names: list[str]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    target_mean: float = 0.0
    target_std: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    placement: str = "device"
    device_free_bytes: int | None = None  # free device memory when the placement was chosen
    split_origin: str = ""  # where given splits came from ("" : all drawn from one set by fractions)

    @property
    def in_features(self) -> int:
        return self.train.x.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_targets(self) -> int:
        if self.placement == "stream":
            return 1  # a stream's target is one column
        return 1 if self.train.y.dim() == 1 else self.train.y.shape[1]

    @property
    def nbytes(self) -> int:
        if self.placement == "stream":
            return 0
        return sum(t.element_size() * t.nelement()
                   for s in (self.train, self.val, self.test) for t in (s.x, s.y))

    def fingerprint(self) -> str:
        """A digest of every split's rows and targets, in order: any changed, added or reordered row
        changes it (BLAKE2b over the tensors' bytes; about 1 s per GB). A stream's: its files' names,
        sizes and row groups."""
        if self.placement == "stream":
            return self.train.table.fingerprint()
        digest = hashlib.blake2b(digest_size=16)
        for split in (self.train, self.val, self.test):
            for tensor in (split.x, split.y):
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def describe(self) -> str:
        sizes = f"train {len(self.train)}, val {len(self.val)}, test {len(self.test)}"
        classes = f", {self.n_classes} classes" if self.task != "regression" else ""
        where = f"on {self.device}"
        if self.placement == "pinned-host":
            free = _size(self.device_free_bytes or 0)
            where = f"in pinned host memory ({free} free on {self.device}), copied {GATHER_BYTES >> 20} MB at a time"
        if self.placement == "stream":
            stream = self.extra["stream"]
            sample = f"metrics on at most about {stream['eval_rows']} rows a split" if stream["eval_rows"] \
                else "metrics on every row"
            where = (f"streamed from {stream['files']} Parquet file(s), {stream['row_groups']} row groups, shuffle "
                     f"buffer {stream['shuffle_buffer']} rows, {sample}, training on {self.device}")
        features = f"{self.in_features} feature" + ("s" if self.in_features != 1 else "")
        origin = f" ({self.split_origin})" if self.split_origin else ""
        missing = (self.extra.get("missing") or {}).get("note")  # a table's rows dropped or cells filled
        return (f"data={self.name}: {self.task}, {sizes}{origin}, {features}{classes}; "
                + ("" if self.placement == "stream" else f"{_size(self.nbytes)} ") + where
                + (f"; {missing}" if missing else ""))


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def register_source(name: str, target: str) -> None:
    """Make ``data.source=name`` load with ``target`` ("module:function")."""
    SOURCES[name] = target


def load_source(name: str, params: Mapping[str, Any]) -> RawData:
    if name not in SOURCES:
        raise ConfigError("data.source", name, f"one of {', '.join(sorted(SOURCES))}")
    module_name, function_name = SOURCES[name].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    accepted = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    for key in params:
        if key not in accepted and not takes_any:
            keys = ", ".join(list(accepted) + list(SPLIT_KEYS[1:]))
            raise ConfigError(f"data.{key}", params[key],
                              f"one of the keys data.source={name} reads: {keys}")
    return function(**params)


def choose_placement(nbytes: int, device: torch.device) -> tuple[str, int | None]:
    """Where ``nbytes`` of tensors go ("device" or "pinned-host"), and the device's free bytes."""
    if device.type != "cuda":
        return "device", None  # CPU (and MPS, which shares host memory): the data is on the device
    free, _total = torch.cuda.mem_get_info(device)
    return ("device" if nbytes <= DEVICE_MEMORY_SHARE * free else "pinned-host"), free


def build_data(cfg: Mapping[str, Any], device: torch.device | str = "cpu") -> Data:
    """Load the configured source, split it, standardise with training statistics, place tensors."""
    if cfg.get("stream"):
        return streamed_data(cfg, device)
    params = {k: v for k, v in cfg.items() if k not in SPLIT_KEYS}
    return data_from_raw(load_source(cfg["source"], params), cfg, device)


def data_from_raw(raw: RawData, cfg: Mapping[str, Any], device: torch.device | str = "cpu") -> Data:
    """What a source loaded, split by the fractions of ``cfg`` (a data config's SPLIT_KEYS; a fraction
    of 0: no such split), standardised with the training split's statistics, placed on ``device``."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    splits = split_rows(raw, cfg)
    fill_missing(raw, splits)  # a table's missing cells, with the training rows' statistics
    features, mean, std = prepare_features(raw, list(splits), cfg.get("standardize", True), cfg["source"])
    targets, target_mean, target_std = prepare_targets(raw, list(splits), cfg.get("standardize_target", True),
                                                       cfg["source"])
    nbytes = sum(part.nbytes for part in features) + targets.nbytes
    placement, free = choose_placement(nbytes, device)

    def to_split(x_rows: np.ndarray, rows: np.ndarray) -> Split:
        x, y = torch.from_numpy(x_rows), torch.from_numpy(targets[rows])
        if placement == "pinned-host":
            return Split(x.pin_memory(), y.pin_memory())
        return Split(x.to(device), y.to(device))

    train, val, test = (to_split(x_rows, rows) for x_rows, rows in zip(features, splits))
    return Data(cfg["source"], raw.task, train, val, test, raw.feature_names, raw.class_names,
                mean, std, target_mean, target_std, dict(raw.extra), device, placement, free,
                raw.split_origin)


def streamed_data(cfg: Mapping[str, Any], device: torch.device | str = "cpu") -> Data:
    """data.stream=true: a table read a record batch at a time (mlpkit.data.stream)."""
    stream = open_stream(cfg)
    table = stream.table
    return Data(cfg["source"], table.task, *stream.splits, stream.feature_names, stream.class_names,
                table.mean, table.std, table.target_mean, table.target_std, stream.extra, torch.device(device),
                "stream")


def save_label_mapping(data: Data, run_dir: str | Path) -> Path | None:
    """Write ``labels.json`` (class index -> label) for a classification set; None for regression.

    Format: {"dataset": "csv", "task": "multiclass", "target": "species",
             "class_names": ["setosa", "versicolor", "virginica"]}: class index i is class_names[i];
    for a binary set the sigmoid head gives the probability of class_names[1].
    """
    if data.task == "regression":
        return None
    path = Path(run_dir) / LABELS_FILE
    mapping = {"dataset": data.name, "task": data.task, "target": data.extra.get("target"),
               "class_names": list(data.class_names)}
    path.write_text(json.dumps(mapping, indent=2) + "\n")
    return path


def save_preprocessing(data: Data, run_dir: str | Path) -> Path:
    """Write ``preprocessing.json``: what turns raw rows into model inputs and outputs back into
    values, so a trained run can predict on new data without the training set.

    Format: {"dataset", "task", "feature_names", "feature_mean", "feature_std", "target",
    "target_mean", "target_std", "class_names", "fingerprint", "input_columns", "categories"};
    inputs are (raw - feature_mean) / feature_std, regression outputs are output * target_std +
    target_mean; ``fingerprint`` tells whether the data a later evaluation or resume loads is the
    data the run trained on. For a table, ``input_columns`` are the file's columns the run reads and
    ``categories`` maps each one-hot encoded column to its categories (feature ``color=red`` is 1
    where the cell is "red"), and ``missing`` what a missing cell does (mlpkit.data.missing: the
    strategy, the tokens, each numeric column's fill value, the columns with an indicator feature
    ``<column>__missing``); all are absent for other sources.
    """
    path = Path(run_dir) / PREPROCESSING_FILE
    record = {
        "dataset": data.name, "task": data.task, "feature_names": list(data.feature_names),
        "feature_mean": np.asarray(data.feature_mean, dtype=np.float64).reshape(-1).tolist(),
        "feature_std": np.asarray(data.feature_std, dtype=np.float64).reshape(-1).tolist(),
        "target": data.extra.get("target"), "target_mean": float(data.target_mean),
        "target_std": float(data.target_std), "class_names": list(data.class_names),
        "fingerprint": data.fingerprint(),
    }
    if "input_columns" in data.extra:
        record |= {"input_columns": list(data.extra["input_columns"]),
                   "categories": dict(data.extra.get("categories") or {})}
    if "missing" in data.extra:
        record["missing"] = {key: value for key, value in data.extra["missing"].items() if key != "note"}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path

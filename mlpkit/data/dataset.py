"""The Data container, the source registry and build_data (split, standardise, move to device)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from mlpkit.config import ConfigError

# name -> "module:function"; modules are imported only when their source is chosen.
SOURCES: dict[str, str] = {
    "digits": "mlpkit.data.bundled:load_digits",
    "breast_cancer": "mlpkit.data.bundled:load_breast_cancer",
    "diabetes": "mlpkit.data.bundled:load_diabetes",
}
# Keys of a data config that build_data itself uses; every other key goes to the source function.
SPLIT_KEYS = ("source", "val_fraction", "test_fraction", "split_seed", "standardize", "standardize_target")


@dataclass
class RawData:
    """What a source returns: features (N, F) float32, targets (N,) int64 classes or float32 values."""

    features: np.ndarray
    targets: np.ndarray
    task: str
    feature_names: list[str]
    class_names: list[str]


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class Data:
    """A dataset ready to train on: splits as tensors on the device, plus what the model needs."""

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

    @property
    def in_features(self) -> int:
        return self.train.x.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_targets(self) -> int:
        return 1 if self.train.y.dim() == 1 else self.train.y.shape[1]

    def describe(self) -> str:
        sizes = f"train {len(self.train)}, val {len(self.val)}, test {len(self.test)}"
        classes = f", {self.n_classes} classes" if self.task != "regression" else ""
        return f"data={self.name}: {self.task}, {sizes}, {self.in_features} features{classes}"


def register_source(name: str, target: str) -> None:
    """Make ``data.source=name`` load with ``target`` ("module:function")."""
    SOURCES[name] = target


def load_source(name: str, params: Mapping[str, Any]) -> RawData:
    if name not in SOURCES:
        raise ConfigError("data.source", name, f"one of {', '.join(sorted(SOURCES))}")
    module_name, function_name = SOURCES[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)(**params)


def split_indices(targets: np.ndarray, classify: bool, val_fraction: float, test_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/val/test indices, stratified by class for classification."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(targets))
    stratify = targets if classify else None
    rest, test = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=stratify)
    val_share = val_fraction / (1 - test_fraction)
    stratify = targets[rest] if classify else None
    train, val = train_test_split(rest, test_size=val_share, random_state=seed, stratify=stratify)
    return train, val, test


def standardization(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column; constant columns get std 1 so they pass through unchanged."""
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def build_data(cfg: Mapping[str, Any], device: torch.device | str = "cpu") -> Data:
    """Load the configured source, split it, standardise with training statistics, move to device."""
    params = {k: v for k, v in cfg.items() if k not in SPLIT_KEYS}
    raw = load_source(cfg["source"], params)
    classify = raw.task != "regression"
    train, val, test = split_indices(raw.targets, classify, cfg["val_fraction"], cfg["test_fraction"],
                                     cfg.get("split_seed", 0))
    features = raw.features.astype(np.float32)
    mean, std = standardization(features[train])
    if not cfg.get("standardize", True):
        mean, std = np.zeros_like(mean), np.ones_like(std)
    features = (features - mean) / std

    targets = raw.targets
    target_mean, target_std = 0.0, 1.0
    if not classify:
        targets = targets.astype(np.float32).reshape(len(targets), -1)
        if cfg.get("standardize_target", True):
            t_mean, t_std = standardization(targets[train])
            target_mean, target_std = float(t_mean[0]), float(t_std[0])
            targets = (targets - t_mean) / t_std

    def to_split(rows: np.ndarray) -> Split:
        return Split(torch.from_numpy(features[rows]).to(device), torch.from_numpy(targets[rows]).to(device))

    return Data(cfg["source"], raw.task, to_split(train), to_split(val), to_split(test),
                raw.feature_names, raw.class_names, mean, std, target_mean, target_std)

"""What a data source returns (RawData) and where it reads a user's path from (launch_path).

The sources (bundled, synthetic, vision, table, or a user's own, named in mlpkit.data.dataset.SOURCES)
and build_data both import this module; it imports nothing of the data package, so the sources need
not import the module that loads them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RawData:
    """What a source returns: features (N, F), targets (N,) int64 classes or float values.

    Float64 (or integer) features are centred in float64 before build_data casts them to float32
    (mlpkit.data.precision). Float32 features are taken as they are; ``feature_offsets`` (F,)
    float64, when set, is what a reader already subtracted from each column before its own float32
    cast (a table's), added back into the saved mean, and ``feature_sample`` (k, F) float64 a few
    rows as the source holds them, for the check that float32 keeps a column's distinct values.

    ``feature_groups`` (F,) gives columns that share one standardisation (image channels); None
    standardises each column on its own. ``extra`` is carried to ``Data.extra`` (e.g. the target
    column of a CSV file). ``lines`` (N,): each row's line in the source file, or ``locate``:
    row -> (key, file, "line N"), for messages. ``splits``: the (train, val, test) rows a source
    gives itself (a test file, an official test set); a None val is carved from train by
    data.val_fraction. ``split_origin`` says where they came from, for the start line.
    """

    features: np.ndarray
    targets: np.ndarray
    task: str
    feature_names: list[str]
    class_names: list[str]
    feature_groups: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    lines: np.ndarray | None = None
    locate: Callable[[int], tuple[str, str, str]] | None = None
    splits: tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None = None
    split_origin: str = ""
    feature_offsets: np.ndarray | None = None
    feature_sample: np.ndarray | None = None


def launch_path(path: str | Path) -> Path:
    """``path`` resolved against the directory the user launched from (not Hydra's run dir)."""
    # hydra.utils knows the launch directory inside a Hydra run and falls back to the cwd outside.
    from hydra.utils import to_absolute_path

    return Path(to_absolute_path(str(Path(path).expanduser())))

"""Real datasets that ship inside scikit-learn: nothing is downloaded."""
from __future__ import annotations

from typing import Any

import numpy as np

from mlpkit.cache import disk_cached
from mlpkit.data.raw import RawData


@disk_cached
def _load(loader_name: str, **options: Any) -> dict[str, Any]:
    """What a run reads of a bundled set (scikit-learn is imported only when the cache misses)."""
    from sklearn import datasets

    bunch = getattr(datasets, loader_name)(**options)
    return {"data": bunch.data, "target": bunch.target, "feature_names": [str(n) for n in bunch.get("feature_names", [])],
            "target_names": [str(c) for c in bunch.get("target_names", [])]}


def load_digits() -> RawData:
    bunch = _load("load_digits")
    names = [f"pixel_{row}_{col}" for row in range(8) for col in range(8)]
    return RawData(bunch["data"].astype(np.float64), bunch["target"].astype(np.int64), "multiclass",
                   names, bunch["target_names"])


def load_breast_cancer() -> RawData:
    bunch = _load("load_breast_cancer")
    return RawData(bunch["data"].astype(np.float64), bunch["target"].astype(np.int64), "binary",
                   bunch["feature_names"], bunch["target_names"])


def load_diabetes() -> RawData:
    # scaled=False: the raw clinical measurements; mlpkit standardises with training statistics.
    bunch = _load("load_diabetes", scaled=False)
    return RawData(bunch["data"].astype(np.float64), bunch["target"].astype(np.float64), "regression",
                   bunch["feature_names"], [])

"""Real datasets that ship inside scikit-learn: nothing is downloaded."""
from __future__ import annotations

import numpy as np

from mlpkit.data.dataset import RawData


def _load(loader_name: str):
    # sklearn.datasets is imported only when a bundled set is chosen (it costs ~0.5 s).
    from sklearn import datasets

    return getattr(datasets, loader_name)()


def load_digits() -> RawData:
    bunch = _load("load_digits")
    names = [f"pixel_{row}_{col}" for row in range(8) for col in range(8)]
    return RawData(bunch.data.astype(np.float32), bunch.target.astype(np.int64), "multiclass",
                   names, [str(c) for c in bunch.target_names])


def load_breast_cancer() -> RawData:
    bunch = _load("load_breast_cancer")
    return RawData(bunch.data.astype(np.float32), bunch.target.astype(np.int64), "binary",
                   list(bunch.feature_names), [str(c) for c in bunch.target_names])


def load_diabetes() -> RawData:
    # scaled=False: the raw clinical measurements; mlpkit standardises with training statistics.
    from sklearn import datasets

    bunch = datasets.load_diabetes(scaled=False)
    return RawData(bunch.data.astype(np.float32), bunch.target.astype(np.float32), "regression",
                   list(bunch.feature_names), [])

"""mlpkit: configurable MLP training with gradient diagnostics.

The Python API (README, "Python API"): ``mlpkit.train``, ``mlpkit.load_run``, ``mlpkit.sweep``,
``mlpkit.Run``, ``mlpkit.Callback``, ``mlpkit.ConfigError``; the scikit-learn estimators (README, "scikit-learn")
``mlpkit.MLPClassifier`` and ``mlpkit.MLPRegressor``. Torch loads only when they are first used, so ``import
mlpkit`` (and ``python train.py --help``) stays quick.
"""
from mlpkit.callbacks import Callback
from mlpkit.errors import ConfigError

__version__ = "0.1.0"
__all__ = ["Callback", "ConfigError", "Diagnosis", "MLPClassifier", "MLPRegressor", "Run", "SweepResult", "diagnose",
           "load_run", "lr_find", "sweep", "train"]


def __getattr__(name: str):
    if name in ("train", "load_run", "lr_find", "sweep", "Run", "SweepResult"):
        from mlpkit import api

        return getattr(api, name)
    if name in ("diagnose", "Diagnosis"):
        from mlpkit import diagnosis

        return getattr(diagnosis, name)
    if name in ("MLPClassifier", "MLPRegressor"):
        from mlpkit import sklearn

        return getattr(sklearn, name)
    raise AttributeError(f"module 'mlpkit' has no attribute {name!r}")

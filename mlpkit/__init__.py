"""mlpkit: configurable MLP training with gradient diagnostics.

The Python API (README, "Python API"): ``mlpkit.train``, ``mlpkit.load_run``, ``mlpkit.sweep``,
``mlpkit.Run``, ``mlpkit.ConfigError``. Torch loads only when they are first used, so ``import
mlpkit`` (and ``python train.py --help``) stays quick.
"""
import types

from mlpkit import sweep as _sweep_module
from mlpkit.errors import ConfigError

__version__ = "0.1.0"
__all__ = ["ConfigError", "Run", "SweepResult", "load_run", "sweep", "train"]


def __getattr__(name: str):
    if name in ("train", "load_run", "Run", "SweepResult"):
        from mlpkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlpkit' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from mlpkit.api import sweep

        return sweep(*args, **kwargs)


# `mlpkit.sweep` is the module mlpkit/sweep.py (the Hydra callback and the sweep report: Hydra's
# `_target_: mlpkit.sweep.SweepCallback` and pickling find it under that name) and, called,
# mlpkit.api.sweep: whichever import comes first, Python binds the submodule to that name.
_sweep_module.__class__ = _CallableModule
_CallableModule.__call__.__doc__ = "mlpkit.sweep(grid_or_overrides, overrides=(), sweep_dir=None): see mlpkit.api.sweep"

"""The optimizer, built from an allow-list: a config names one of a few torch optimizers by its
``_target_``, and its other keys must be that constructor's own arguments, holding plain values.

Nothing read from a config, least of all a checkpoint's saved one, names code to run: Hydra's
``instantiate`` would call any ``_target_`` (``builtins.open`` included) and recurse into nested ones,
so it is never used here.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from mlpkit.errors import ConfigError, is_number

TARGET = "_target_"
# optimizer._target_ -> the torch class's name (configs/optimizer/<name>.yaml write these)
OPTIMIZERS = {"torch.optim.Adam": "Adam", "torch.optim.AdamW": "AdamW", "torch.optim.SGD": "SGD"}


def optimizer_class(target: Any) -> type:
    """The torch optimizer ``optimizer._target_`` names, if it is on the allow-list."""
    if target not in OPTIMIZERS:
        raise ConfigError(f"optimizer.{TARGET}", target, f"one of {', '.join(OPTIMIZERS)} (optimizer=adam, adamw "
                          "or sgd); a config never names other code to run")
    import torch  # here: config checks run before torch is needed elsewhere

    return getattr(torch.optim, OPTIMIZERS[target])


def constructor_keys(target: Any) -> list[str]:
    """The keyword arguments ``target``'s constructor takes (all but ``params``)."""
    parameters = inspect.signature(optimizer_class(target)).parameters
    return [name for name in parameters if name not in ("self", "params")]


def is_plain(value: Any) -> bool:
    """A number, bool, string, None, or a list of numbers (``betas``): nothing that could name code."""
    if isinstance(value, (list, tuple)):
        return all(is_number(item) for item in value)
    return value is None or isinstance(value, (bool, str)) or is_number(value)


def check_optimizer_keys(config: Mapping[str, Any]) -> None:
    """Every key of the optimizer group is its constructor's argument, holding a plain value."""
    keys = constructor_keys(config.get(TARGET))
    for key, value in config.items():
        if key == TARGET:
            continue
        if key not in keys:
            raise ConfigError(f"optimizer.{key}", value, f"an argument of {config[TARGET]}: {', '.join(keys)}")
        if not is_plain(value):
            raise ConfigError(f"optimizer.{key}", value, "a number, true/false, null or a list of numbers")


def build_optimizer(config: Mapping[str, Any], params: Iterable[Any], **overrides: Any) -> Any:
    """The optimizer ``config`` (a plain dict, checked by ``check_optimizer_keys``) describes."""
    check_optimizer_keys(config)
    arguments = {key: value for key, value in config.items() if key != TARGET}
    arguments.update(overrides)
    return optimizer_class(config.get(TARGET))(params, **arguments)

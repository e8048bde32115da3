"""The callback protocol: the named points of the loop where the optional parts plug in.

The trainer calls, in this order (``trainer.py`` shows each call where it happens):

    on_fit_start(trainer)                                   before the first epoch (also of a resume)
      on_train_batch_start(trainer)                         every step, before its forward pass
      on_after_backward(trainer)                            every step, gradients computed
      log_values(trainer) -> {tag: tensor or float}         logged steps: fetched with the loss, one transfer
      on_before_optimizer_step(trainer)                     every step that updates (not a skipped one)
      on_after_optimizer_step(trainer)                      after that update (and after the step is logged)
      on_train_batch_end(trainer, loss)                     every step, counted in trainer.step; ``loss`` on the device
    on_validation_end(trainer, metrics, improved)           every epoch; ``trainer.should_stop = True`` ends the run
    on_fit_end(trainer, final)                              the final metrics by split: a callback may add its own
    on_stop(trainer, stop)                                  a TrainingStopped (signal, non-finite) on its way out

``state_dict()``/``load_state_dict()`` travel in checkpoints under ``state_key`` (plain values and
tensors only: checkpoints load with ``weights_only=True``). Per-step hooks run every step: read no
tensor's value there (``.item()``, ``float()``), which would wait for the device each step.

The built-in parts are callbacks too: the gradient monitor, clipping, the learning-rate schedule,
early stopping and the checkpointer (always last, so a checkpoint holds every other callback's state).
A user's own callback is a subclass named in ``trainer.callbacks=[my_pkg.MyCallback]`` (built with no
arguments) or passed to ``mlpkit.train(..., callbacks=[MyCallback()])``.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mlpkit.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from mlpkit.errors import TrainingStopped

CALLBACKS_ALLOWED = "a list of Callback classes as dotted import paths, e.g. [my_pkg.callbacks.PrintLoss]"
HOOKS = ("on_fit_start", "on_train_batch_start", "on_after_backward", "on_before_optimizer_step",
         "on_after_optimizer_step", "on_train_batch_end", "on_validation_end", "on_fit_end", "on_stop")


class Callback:
    """Subclass it and override the hooks you need; each does nothing by default."""

    state_key: str | None = None  # a checkpoint keeps state_dict() under this key; None: nothing to keep

    def on_fit_start(self, trainer: Any) -> None: ...

    def on_train_batch_start(self, trainer: Any) -> None: ...

    def on_after_backward(self, trainer: Any) -> None: ...

    def log_values(self, trainer: Any) -> dict[str, Any]:
        return {}

    def on_before_optimizer_step(self, trainer: Any) -> None: ...

    def on_after_optimizer_step(self, trainer: Any) -> None: ...

    def on_train_batch_end(self, trainer: Any, loss: Any) -> None: ...

    def on_validation_end(self, trainer: Any, metrics: dict[str, float], improved: bool) -> None: ...

    def on_fit_end(self, trainer: Any, final: dict[str, dict[str, float]]) -> None: ...

    def on_stop(self, trainer: Any, stop: TrainingStopped) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Callbacks:
    """The trainer's callbacks in call order; each hook calls only the callbacks that override it
    (a step pays for no empty call)."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise ConfigError("callbacks", type(callback).__name__, "instances of mlpkit.Callback")
        self.keys = [callback.state_key for callback in self.callbacks if callback.state_key is not None]
        if len(set(self.keys)) != len(self.keys):
            raise ConfigError("callbacks", self.keys, "callbacks with different state_key values")
        self.hooks = {hook: [getattr(callback, hook) for callback in self.callbacks if _overrides(callback, hook)]
                      for hook in (*HOOKS, "log_values")}

    def call(self, hook: str, *args: Any) -> None:
        for method in self.hooks[hook]:
            method(*args)

    def log_values(self, trainer: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for method in self.hooks["log_values"]:
            values.update(method(trainer))
        return values

    def state_dicts(self) -> dict[str, dict[str, Any]]:
        return {callback.state_key: callback.state_dict() for callback in self.callbacks
                if callback.state_key is not None}

    def load_state_dicts(self, states: dict[str, dict[str, Any]], path: str) -> None:
        """Each callback's saved state, by key; a callback the checkpoint (``path``) has no state for
        starts afresh. A state that does not load is a CheckpointError naming the key."""
        for callback in self.callbacks:
            key = callback.state_key
            if key is None or states.get(key) is None:
                continue
            try:
                callback.load_state_dict(states[key])
            except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
                raise CheckpointError(path, f"is damaged: restoring the {key} state failed with "
                                      f"{type(error).__name__}: {error}"[:300]) from None


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


def saved_states(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The callbacks' states in a checkpoint, by key. A checkpoint written before callbacks kept
    their state by key held the schedule's at its top and the monitor's and early stopping's in
    ``extra``: a run saved then resumes with them."""
    extra = state["extra"]
    if extra.get("callbacks") is not None:
        return extra["callbacks"]
    return {"scheduler": state.get("scheduler"),
            "monitor": {"verdicts": extra.get("verdicts"), "monitor": extra.get("monitor")},
            "early_stopping": {**(extra.get("early_stopping") or {}), "stopped": extra.get("stopped_early")}}


def import_callbacks(paths: Sequence[str], key: str = "trainer.callbacks") -> list[Callback]:
    """``trainer.callbacks``: each dotted path names a Callback subclass, built with no arguments."""
    built = []
    for path in paths:
        module_name, _, class_name = str(path).rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), class_name) if module_name else None
        except ImportError as error:
            raise ConfigError(key, path, CALLBACKS_ALLOWED, f"importing {module_name} failed: {error}") from None
        except AttributeError:
            found = None
        if found is None:
            raise ConfigError(key, path, CALLBACKS_ALLOWED, f"{module_name or path} has no {class_name or path}")
        if not (isinstance(found, type) and issubclass(found, Callback)):
            raise ConfigError(key, path, CALLBACKS_ALLOWED, f"{path} is not a subclass of mlpkit.Callback")
        try:
            built.append(found())
        except TypeError as error:
            raise ConfigError(key, path, CALLBACKS_ALLOWED,
                              f"{path}() failed: {error} (a callback named in a config takes no arguments)") from None
    return built

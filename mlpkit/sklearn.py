"""scikit-learn estimators: ``MLPClassifier`` and ``MLPRegressor``, trained by mlpkit's own loop.

Each constructor parameter is a key of the run's config (``PARAMETERS``). ``fit(X, y)`` composes the
config as ``python train.py <overrides>`` would (configs/data/arrays.yaml for the data), validates it
with the command line's rules, splits and standardises the arrays as a run splits its data
(mlpkit.data.data_from_raw) and trains through mlpkit.assemble, or, with ``log_dir``, through the
command line's own run, which writes a whole run directory. Nothing happens in ``__init__``; a
fitted estimator keeps the trained model, the gradient verdict and the history.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from mlpkit.errors import ConfigError
from mlpkit.estimator_config import (
    EARLY_STOPPING_PATIENCE,
    PARAMETERS,
    VALIDATION_FRACTION,
    as_parameter_error,
    composed_task,
    named_by_parameter,
    seed_of,
    typed,
    without_hydra,
)
from mlpkit.estimator_fit import (
    KeepBestWeights,
    KeepTrainer,
    global_random_state_kept,
    prediction_objective,
    verbosity,
)

__all__ = ["MLPClassifier", "MLPRegressor"]

log = logging.getLogger("mlpkit")

class _MLPEstimator(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters -> config, the fit, the forward pass."""

    _task_kind = ""  # "classifier" or "regressor"

    def _overrides(self) -> list[str]:
        """The command line this estimator's parameters amount to (``data=arrays`` and its keys),
        but for the seeds (``_config`` sets them)."""
        params = self.get_params(deep=False)
        overrides = ["data=arrays"]
        if self.validation_fraction is None:  # a validation split only for what watches it, as in scikit-learn
            watched = self.early_stopping or self.scheduler == "plateau"
            overrides.append(f"data.val_fraction={VALIDATION_FRACTION if watched else 0.0}")
        for name, key in PARAMETERS.items():
            if params.get(name) is None or name == "random_state":
                continue  # None: the config's default (lr, weight_decay); the seeds: below
            overrides.append(f"{key}={typed(self._config_value(name, params[name]))}")
        return [*overrides, *self.overrides]

    def _config_value(self, name: str, value: Any) -> Any:
        if name == "early_stopping":
            return EARLY_STOPPING_PATIENCE if value is True else (0 if value is False else value)
        if name == "class_weight":
            return self._class_weights(value)
        return value

    def _config(self) -> Any:
        """The run's config, checked; a mistake is one ConfigError naming the parameter."""
        from hydra.types import RunMode
        from omegaconf import OmegaConf, open_dict, read_write

        from mlpkit.api import compose
        from mlpkit.config import validate

        seed = seed_of(self.random_state)
        try:
            overrides = self._overrides()
            if self.log_dir is None:  # composed once per process for each set of parameters but the seeds
                cfg = OmegaConf.create(composed_task(tuple(overrides)))
                with open_dict(cfg):
                    cfg.trainer.seed = cfg.data.split_seed = seed
            else:  # with Hydra's node: the command line's run writes .hydra/ and train.log from it
                cfg = compose([*overrides, f"trainer.seed={seed}", f"data.split_seed={seed}"])
                with read_write(cfg.hydra):
                    cfg.hydra.mode = RunMode.RUN
            validate(without_hydra(cfg))
        except ConfigError as error:
            raise as_parameter_error(error, type(self).__name__) from None
        return cfg

    # --- fit --------------------------------------------------------------------------------------
    def _fit(self, X: Any, y: Any) -> _MLPEstimator:
        from mlpkit.cache import cache_off
        from mlpkit.data import RawData

        X, y = self._validate_fit(X, y)
        targets, task, class_names = self._targets(y)
        cfg = self._config()
        raw = RawData(_copy_rows(X), targets, task, _feature_names(self, X.shape[1]), class_names,
                      extra={"target": "y"})
        keeper = KeepBestWeights()
        with verbosity(self.verbose), global_random_state_kept(), cache_off():
            if self.log_dir is None:
                trainer = self._train_in_memory(cfg, raw, keeper)
            else:
                trainer = self._train_into_run_dir(cfg, raw, keeper)
        keeper.restore(trainer.model)
        self._keep_fitted(trainer, cfg)
        return self

    def _train_in_memory(self, cfg: Any, raw: Any, keeper: KeepBestWeights) -> Any:
        from omegaconf import OmegaConf

        from mlpkit.assemble import assemble, prepare_device
        from mlpkit.data import data_from_raw
        from mlpkit.runtime import show_progress
        from mlpkit.verdicts import summary

        cfg = without_hydra(cfg)
        data = named_by_parameter(lambda: data_from_raw(raw, OmegaConf.to_container(cfg.data, resolve=True),
                                           prepare_device(cfg)), type(self).__name__)
        log.info(data.describe())
        parts = named_by_parameter(lambda: assemble(cfg, data, progress=bool(self.verbose) and show_progress("auto"),
                                       callbacks=[keeper]), type(self).__name__)
        result = parts.trainer.fit()
        self.run_dir_ = None
        if result.get("gradient_health"):
            log.info(summary(result["gradient_health"]))
        return parts.trainer

    def _train_into_run_dir(self, cfg: Any, raw: Any, keeper: KeepBestWeights) -> Any:
        """The command line's run (mlpkit.cli.run) in a new directory under ``log_dir``: TensorBoard
        events, checkpoints, metrics.json, train.log, .hydra/, as ``python train.py`` writes them."""
        from omegaconf import OmegaConf

        from mlpkit.api import _run_job
        from mlpkit.assemble import prepare_device
        from mlpkit.data import data_from_raw
        from mlpkit.new_dirs import unique_dir

        run_dir = Path(unique_dir(str(Path(self.log_dir).expanduser().resolve() /
                                      f"{type(self).__name__}_{datetime.now():%Y-%m-%d_%H-%M-%S}")))
        task_cfg = without_hydra(cfg)
        data = named_by_parameter(lambda: data_from_raw(raw, OmegaConf.to_container(task_cfg.data, resolve=True),
                                           prepare_device(task_cfg)), type(self).__name__)
        grabber = KeepTrainer()
        named_by_parameter(lambda: _run_job(cfg, run_dir, [keeper, grabber], data), type(self).__name__)
        self.run_dir_ = run_dir
        return grabber.trainer

    def _keep_fitted(self, trainer: Any, cfg: Any) -> None:
        from omegaconf import OmegaConf

        model = trainer.model.eval()
        self.model_ = model
        self.objective_ = prediction_objective(trainer.objective)
        self.feature_mean_ = np.asarray(trainer.data.feature_mean, dtype=np.float64).reshape(-1)
        self.feature_std_ = np.asarray(trainer.data.feature_std, dtype=np.float64).reshape(-1)
        self.config_ = OmegaConf.to_container(without_hydra(cfg), resolve=True)
        self.history_ = list(trainer.history)
        self.loss_curve_ = [entry.get("loss/train_epoch", float("nan")) for entry in trainer.history]
        self.n_iter_ = trainer.epoch
        self.best_epoch_ = trainer.best["epoch"]
        self.gradient_health_ = trainer.gradient_health(log=False)

    # --- the trained model -----------------------------------------------------------------------
    def _logits(self, X: Any) -> Any:
        import torch

        from mlpkit.trained_model import logits_of

        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        with np.errstate(over="ignore", invalid="ignore"):
            inputs = ((np.asarray(X, dtype=np.float64) - self.feature_mean_) / self.feature_std_).astype(np.float32)
        if not np.isfinite(inputs).all():
            row, column = np.argwhere(~np.isfinite(inputs))[0]
            name = _feature_names(self, X.shape[1])[column]
            raise ValueError(f"X: row {row}, feature '{name}' is {X[row, column]:.6g}, which standardised with the "
                             f"training mean {self.feature_mean_[column]:.6g} and std {self.feature_std_[column]:.6g} "
                             "is beyond float32's range; expected values of the scale the model trained on")
        device = next(self.model_.parameters()).device
        return logits_of(self.model_, torch.from_numpy(inputs).to(device))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the model on the CPU (a fit on a GPU unpickles on a machine without one)."""
        state = super().__getstate__()
        if "model_" in state:
            import copy

            state["model_"] = copy.deepcopy(self.model_).cpu()
        return state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class MLPClassifier(ClassifierMixin, _MLPEstimator):
    """A multilayer perceptron classifier trained by mlpkit, with its gradient diagnosis.

    Parameters are config keys (README, "scikit-learn"): ``hidden_sizes`` (model.hidden_sizes),
    ``activation``, ``head``, ``loss``, ``optimizer``, ``lr``, ``max_epochs``, ... . ``early_stopping``:
    False, True (patience 10) or a patience in epochs, on a stratified ``validation_fraction`` of the
    rows (default 0.1 with early stopping; none without: every row trains). ``class_weight``: None,
    "balanced" or {label: weight}. ``overrides``: any other config key as a command-line override,
    e.g. ``("diagnostics.patience=3",)``. ``log_dir``: a directory for a whole run per fit (TensorBoard
    events, checkpoints, metrics.json: ``tensorboard --logdir <log_dir>``); None writes nothing.
    ``verbose=1`` shows the run's lines, its progress and the verdict.

    After ``fit``: ``classes_``, ``n_features_in_``, ``feature_names_in_`` (a DataFrame's columns),
    ``n_iter_`` (epochs), ``loss_curve_`` (training loss per epoch), ``history_``, ``best_epoch_``,
    ``gradient_health_`` (the verdicts and the remedies they name), ``model_`` (the torch module),
    ``config_`` (the composed config), ``run_dir_`` (with ``log_dir``).
    """

    _task_kind = "classifier"

    def __init__(self, hidden_sizes: Sequence[int] = (128, 64), activation: str = "relu", *, dropout: float = 0.0,
                 init: str = "default", norm: str = "none", residual: bool = False, head: str = "auto",
                 loss: str = "auto", class_weight: Any = None, optimizer: str = "adam", lr: float | None = None,
                 weight_decay: float | None = None, scheduler: str = "none", max_epochs: int = 20,
                 batch_size: int = 64, gradient_clip_val: float = 0.0, early_stopping: bool | int = False,
                 validation_fraction: float | None = None, standardize: bool = True, random_state: Any = None,
                 device: str = "auto", overrides: Sequence[str] = (), log_dir: str | None = None,
                 verbose: int = 0):
        self.hidden_sizes, self.activation, self.dropout, self.init = hidden_sizes, activation, dropout, init
        self.norm, self.residual, self.head, self.loss, self.class_weight = norm, residual, head, loss, class_weight
        self.optimizer, self.lr, self.weight_decay, self.scheduler = optimizer, lr, weight_decay, scheduler
        self.max_epochs, self.batch_size, self.gradient_clip_val = max_epochs, batch_size, gradient_clip_val
        self.early_stopping, self.validation_fraction, self.standardize = early_stopping, validation_fraction, standardize
        self.random_state, self.device, self.overrides, self.log_dir = random_state, device, overrides, log_dir
        self.verbose = verbose

    def fit(self, X: Any, y: Any) -> MLPClassifier:
        """Train on rows ``X`` (n, features: an array or a DataFrame) and labels ``y`` (any type scikit-learn
        classifies: integers, text, booleans)."""
        return self._fit(X, y)

    def _validate_fit(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        _refuse_missing_y(y, type(self).__name__)
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), ensure_min_samples=2)
        check_classification_targets(y)
        self.classes_, _ = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y holds 1 class ({self.classes_.tolist()[0]!r}); {type(self).__name__} needs at least 2 "
                             "classes to learn from")
        return X, y

    def _targets(self, y: np.ndarray) -> tuple[np.ndarray, str, list[str]]:
        indices = np.searchsorted(self.classes_, y).astype(np.int64)
        task = "binary" if len(self.classes_) == 2 else "multiclass"
        return indices, task, [str(label) for label in self.classes_]

    def _class_weights(self, class_weight: Any) -> Any:
        """scikit-learn's class_weight as loss.class_weights: none, balanced, or one weight per class."""
        if isinstance(class_weight, str):
            return class_weight
        if not isinstance(class_weight, dict):
            raise ValueError(f"class_weight={class_weight!r} is not valid: expected None, 'balanced' or a dict "
                             "{label: weight}")
        unknown = [label for label in class_weight if label not in set(self.classes_.tolist())]
        if unknown:
            raise ValueError(f"class_weight names {unknown[0]!r}, which is not a class of y; its classes are "
                             f"{', '.join(map(repr, self.classes_.tolist()))}")
        return [float(class_weight.get(label, 1.0)) for label in self.classes_.tolist()]

    def predict_proba(self, X: Any) -> np.ndarray:
        """The probability of each class, columns in the order of ``classes_``."""
        from mlpkit.trained_model import class_probabilities

        logits = self._logits(X)
        probabilities = self.objective_.predict(logits).cpu().numpy().astype(np.float64)
        return class_probabilities(self.objective_, probabilities)

    def predict(self, X: Any) -> np.ndarray:
        logits = self._logits(X)
        return self.classes_[self.objective_.predict_class(logits).cpu().numpy()]

    def decision_function(self, X: Any) -> np.ndarray:
        """The logits: (n,) for two classes (positive favours ``classes_[1]``), (n, classes) otherwise."""
        logits = self._logits(X).double().cpu().numpy()
        if len(self.classes_) == 2:
            return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
        return logits

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class MLPRegressor(RegressorMixin, _MLPEstimator):
    """A multilayer perceptron regressor trained by mlpkit, with its gradient diagnosis: the
    parameters and fitted attributes of ``MLPClassifier`` (no ``classes_`` or ``class_weight``), and
    ``standardize_target``: fit the standardised target, predict in its own units."""

    _task_kind = "regressor"

    def __init__(self, hidden_sizes: Sequence[int] = (128, 64), activation: str = "relu", *, dropout: float = 0.0,
                 init: str = "default", norm: str = "none", residual: bool = False, head: str = "auto",
                 loss: str = "auto", optimizer: str = "adam", lr: float | None = None,
                 weight_decay: float | None = None, scheduler: str = "none", max_epochs: int = 20,
                 batch_size: int = 64, gradient_clip_val: float = 0.0, early_stopping: bool | int = False,
                 validation_fraction: float | None = None, standardize: bool = True,
                 standardize_target: bool = True, random_state: Any = None, device: str = "auto",
                 overrides: Sequence[str] = (), log_dir: str | None = None, verbose: int = 0):
        self.hidden_sizes, self.activation, self.dropout, self.init = hidden_sizes, activation, dropout, init
        self.norm, self.residual, self.head, self.loss = norm, residual, head, loss
        self.optimizer, self.lr, self.weight_decay, self.scheduler = optimizer, lr, weight_decay, scheduler
        self.max_epochs, self.batch_size, self.gradient_clip_val = max_epochs, batch_size, gradient_clip_val
        self.early_stopping, self.validation_fraction, self.standardize = early_stopping, validation_fraction, standardize
        self.standardize_target, self.random_state, self.device = standardize_target, random_state, device
        self.overrides, self.log_dir, self.verbose = overrides, log_dir, verbose

    def fit(self, X: Any, y: Any) -> MLPRegressor:
        """Train on rows ``X`` (n, features: an array or a DataFrame) and numeric targets ``y`` (n,)."""
        return self._fit(X, y)

    def _validate_fit(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        _refuse_missing_y(y, type(self).__name__)
        labels = np.asarray(y) if not hasattr(y, "dtype") else y
        if getattr(labels, "dtype", None) is not None and labels.dtype.kind in "OUSb":
            text = [str(value) for value in np.ravel(labels) if isinstance(value, str)]
            if text or labels.dtype.kind in "USb":
                example = f" (e.g. {text[0]!r})" if text else ""
                raise ValueError(f"y holds {'text' if text else labels.dtype}{example}; {type(self).__name__} needs "
                                 "numeric targets: use MLPClassifier for class labels")
        return validate_data(self, X, y, dtype=(np.float64, np.float32), y_numeric=True, ensure_min_samples=2)

    def _targets(self, y: np.ndarray) -> tuple[np.ndarray, str, list[str]]:
        return np.asarray(y, dtype=np.float64), "regression", []

    def predict(self, X: Any) -> np.ndarray:
        """Values in the target's own units."""
        logits = self._logits(X)
        return self.objective_.predict(logits).cpu().numpy()[:, 0]


# --- helpers ---------------------------------------------------------------------------------------
def _refuse_missing_y(y: Any, estimator: str) -> None:
    if y is None:
        raise ValueError(f"{estimator} requires y to be passed, but the target y is None")


def _copy_rows(X: np.ndarray) -> np.ndarray:
    """The rows as the data pipeline may reorder them in place: never the caller's own array."""
    return np.array(X, dtype=X.dtype, order="C", copy=True)


def _feature_names(estimator: Any, width: int) -> list[str]:
    names = getattr(estimator, "feature_names_in_", None)
    return [str(name) for name in names] if names is not None else [f"x{i}" for i in range(width)]



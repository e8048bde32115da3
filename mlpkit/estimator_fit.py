"""What surrounds an estimator's fit: mlpkit's lines kept off the console unless ``verbose``, the
global random generators as the fit found them, the best epoch's weights kept, the objective without
its loss functions (what a pickle needs to predict)."""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from mlpkit.callbacks import Callback


class KeepBestWeights(Callback):
    """The weights of the epoch with the best validation metric, kept on the device; ``restore``
    puts them back at the end of the fit (as scikit-learn's early stopping does)."""

    def __init__(self) -> None:
        self.weights: dict[str, Any] | None = None

    def on_validation_end(self, trainer: Any, metrics: dict[str, float], improved: bool) -> None:
        if improved:
            self.weights = {name: value.detach().clone() for name, value in trainer.model.state_dict().items()}

    def restore(self, model: Any) -> None:
        if self.weights is not None:
            model.load_state_dict(self.weights)


class KeepTrainer(Callback):
    """Hands the estimator the trainer a command-line run built (``log_dir``)."""

    def on_fit_start(self, trainer: Any) -> None:
        self.trainer = trainer


def prediction_objective(objective: Any) -> Any:
    """The objective's head and target scale, without its loss functions (which need not pickle)."""
    from mlpkit.objective import Objective

    return Objective(objective.head, objective.loss_name, objective.task, objective.out_features, loss=None,
                     target_mean=objective.target_mean, target_std=objective.target_std)


@contextmanager
def verbosity(verbose: int) -> Iterator[None]:
    """verbose=0: mlpkit's lines stay off the console (scikit-learn's convention; a run under log_dir
    still writes its train.log); verbose>0: they are shown, with the progress and the verdict."""
    from mlpkit.api import console_muted, show_console

    logger = logging.getLogger("mlpkit")
    level, propagate = logger.level, logger.propagate
    if verbose:
        with show_console():
            logger.setLevel(logging.INFO)
            try:
                yield
            finally:
                logger.setLevel(level)
        return
    null = logging.NullHandler()  # Python's last-resort handler would print warnings otherwise
    logger.addHandler(null)
    logger.propagate = False
    try:
        with console_muted():
            yield
    finally:
        logger.removeHandler(null)
        logger.propagate = propagate


@contextmanager
def global_random_state_kept() -> Iterator[None]:
    """A fit seeds Python's, numpy's and torch's global generators; they are as they were after it."""
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

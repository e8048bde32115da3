"""Sweeps that stop hopeless trials: a run stopped once its gradients are judged unable to learn
(``sweep.prune_on_verdict=true``), and Optuna pruning in ``hparams_search=optuna`` (each epoch's
validation score reported to the trial, ``sweep.pruner`` asked whether to stop it).

Two halves that meet in the study's storage:

- the job's side, ``SweepPruning``, a callback: after each epoch it reports ``objective.metric`` to the
  job's Optuna trial (reopened from the storage), then stops the run at that epoch's end when a verdict
  in PRUNING_VERDICTS has fired or the pruner says so. The run ends normally, its metrics.json saying
  ``"pruned": {...}``, and its trial keeps the reason as the user attribute PRUNED_ATTR;
- the sweeper's side, ``OptunaPruningSweeper``: a study loop for studies that several workers share
  (their storage: ``open_storage``), with what hydra-optuna-sweeper's lacks for pruning: each job learns
  its trial's number (``hydra.job.env_set``), a trial whose job pruned itself is told PRUNED (not
  COMPLETE: a pruned trial never becomes the best), and job numbers are trial numbers, so a resumed or
  shared study numbers its jobs as the storage numbers its trials.

Optuna takes two seconds to import: only a job of an Optuna sweep, and that sweeper, import it.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mlpkit.callbacks import Callback
from mlpkit.errors import ConfigError
from mlpkit.study_storage import open_storage, study_storage

log = logging.getLogger(__name__)

# The verdicts that stop a trial: a net whose gradients vanish, explode or whose units died does not
# recover on its own. "saturated" does not stop one: it is a warning, and saturated nets learn (on
# digits, 10 epochs: sigmoid [64] at lr 0.1 and tanh [64] at lr 0.05 are judged saturated and reach
# 0.967 and 0.974 val accuracy, as good as a study's best); the scores, and sweep.pruner, judge those.
PRUNING_VERDICTS = ("vanishing", "exploding", "dead")
TRIAL_ENV = "MLPKIT_OPTUNA_TRIAL"  # the job's trial number, set by OptunaPruningSweeper through hydra.job.env_set
PRUNED_ATTR = "pruned"  # the trial's user attribute a pruned job leaves for the sweeper: why and when
PRUNER_ALLOWED = "a pruner of optuna.pruners, e.g. {_target_: optuna.pruners.MedianPruner}, or null"


def pruning_callbacks(sweep: Mapping[str, Any] | None, cv_fold: int | None = None) -> list[Callback]:
    """The run's pruning callback from its ``sweep`` settings: verdict pruning, and the job's Optuna
    trial when the run is a job of mlpkit's Optuna sweeper; none when neither applies. A fold of a
    cross-validation (``cv_fold``) reports nothing to the trial: the trial is the whole
    cross-validation, scored by its folds' mean."""
    sweep = sweep or {}
    on_verdict = sweep.get("prune_on_verdict", False)
    if not isinstance(on_verdict, bool):
        raise ConfigError("sweep.prune_on_verdict", on_verdict, "true or false")
    pruner = sweep.get("pruner")
    check_pruner(pruner)
    in_trial = os.environ.get(TRIAL_ENV) and cv_fold is None
    trial = reopen_trial(int(os.environ[TRIAL_ENV]), pruner) if in_trial else None
    return [SweepPruning(on_verdict, trial)] if on_verdict or trial is not None else []


class SweepPruning(Callback):
    """Stops the run at the end of an epoch when its gradients are judged hopeless (``on_verdict``) or
    its Optuna ``trial``'s pruner says so; metrics.json's ``pruned`` says when and why."""

    state_key = "pruning"  # a resumed pruned run trains no further

    def __init__(self, on_verdict: bool = True, trial: Any = None):
        self.on_verdict, self.trial = on_verdict, trial
        self.pruned: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Any) -> None:
        if self.pruned is not None:
            trainer.should_stop, trainer.checks["pruned"] = True, self.pruned

    def on_validation_end(self, trainer: Any, metrics: dict[str, float], improved: bool) -> None:
        value = metrics.get(trainer.metric)
        value = None if value is None or math.isnan(value) else float(value)  # Optuna 2's storage refuses NaN
        if self.trial is not None and value is not None:
            self.trial.report(value, trainer.epoch)
        if trainer.epoch >= trainer.max_epochs:  # the run ends here anyway: it completed, whatever its verdict
            return
        kind = self.hopeless_verdict(trainer) if self.on_verdict else None
        if kind is not None:
            message = trainer.monitor.verdicts.fired[kind]["message"]
            self.prune(trainer, {"epoch": trainer.epoch, "verdict": kind, "pruner": None, "message": message},
                       f"its gradients are judged {kind} (sweep.prune_on_verdict=true)")
        elif self.trial is not None and value is not None and self.trial.should_prune():
            pruner = type(self.trial.study.pruner).__name__
            message = f"val_{trainer.metric} {value:.4g} at epoch {trainer.epoch}: {pruner} stops the trial"
            self.prune(trainer, {"epoch": trainer.epoch, "verdict": None, "pruner": pruner, "message": message},
                       f"Optuna's {pruner} judged val_{trainer.metric} {value:.4g} not worth training on")

    def hopeless_verdict(self, trainer: Any) -> str | None:
        """The first verdict of PRUNING_VERDICTS to have fired (by step), else None."""
        fired = trainer.monitor.verdicts.fired if trainer.monitor is not None else {}
        kinds = [kind for kind in PRUNING_VERDICTS if kind in fired]
        return min(kinds, key=lambda kind: fired[kind]["step"]) if kinds else None

    def prune(self, trainer: Any, pruned: dict[str, Any], why: str) -> None:
        self.pruned = pruned
        trainer.should_stop, trainer.checks["pruned"] = True, pruned
        log.warning("pruned after epoch %d of %d: %s; the run stops here", trainer.epoch, trainer.max_epochs, why)
        if self.trial is not None:  # the sweeper tells the study PRUNED, not COMPLETE
            self.trial.set_user_attr(PRUNED_ATTR, pruned_note(pruned))

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruned = state.get("pruned")


def pruned_note(pruned: Mapping[str, Any]) -> str:
    """``vanishing at epoch 2`` or ``MedianPruner at epoch 3``: the sweep report's and the trial's words."""
    return f"{pruned.get('verdict') or pruned.get('pruner')} at epoch {pruned.get('epoch')}"


# --- the job's trial ------------------------------------------------------------------------------
def check_pruner(pruner: Any) -> None:
    """``sweep.pruner``: null, or settings whose ``_target_`` is a class of optuna.pruners (a config
    names no other code to run)."""
    if pruner is None:
        return
    target = pruner.get("_target_") if isinstance(pruner, Mapping) else None
    if not is_pruner_class(target) or not all(is_pruner_class(inner) for inner in nested_targets(pruner)):
        raise ConfigError("sweep.pruner", pruner, PRUNER_ALLOWED)


def is_pruner_class(target: Any) -> bool:
    """``optuna.pruners.<PublicName>``: a name of that package itself, never a path through it to
    another module (``optuna.pruners._percentile.np.save`` would write files)."""
    if not isinstance(target, str):
        return False
    package, _, name = target.rpartition(".")
    return package == "optuna.pruners" and name.isidentifier() and not name.startswith("_")


def nested_targets(node: Any) -> list[Any]:
    """Every ``_target_`` below the top one (a PatientPruner's wrapped pruner): Hydra instantiates them too."""
    found = []
    values = node.values() if isinstance(node, Mapping) else node if is_list(node) else []
    for value in values:
        if isinstance(value, Mapping) and "_target_" in value:
            found.append(value["_target_"])
        if isinstance(value, Mapping) or is_list(value):
            found.extend(nested_targets(value))
    return found


def is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def build_pruner(pruner: Any) -> Any:
    """The Optuna pruner ``sweep.pruner`` describes (NopPruner for null: scores are still reported)."""
    import optuna  # two seconds: only a job of an Optuna sweep gets here
    from hydra.utils import instantiate

    if pruner is None:
        return optuna.pruners.NopPruner()
    try:
        built = instantiate(pruner)
    except Exception as error:  # noqa: BLE001 - a wrong argument or class name: one line naming the key
        raise ConfigError("sweep.pruner", pruner, PRUNER_ALLOWED, str(error).splitlines()[0][:300]) from None
    if not isinstance(built, optuna.pruners.BasePruner):
        raise ConfigError("sweep.pruner", pruner, PRUNER_ALLOWED)
    return built


def reopen_trial(number: int, pruner: Any) -> Any:
    """The running trial ``number`` of the sweep's study, from its storage (study_storage of this job's
    ``hydra.sweeper``), with ``pruner`` to judge it; None, said once, when the
    trial cannot take reports (an in-memory study, a finished trial, several objectives)."""
    import optuna
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        log.warning("%s=%d but no study storage to report to: this job is not pruned by Optuna", TRIAL_ENV, number)
        return None
    settings = HydraConfig.get().sweeper
    storage = open_storage(study_storage(settings.get("storage"), HydraConfig.get().sweep.dir))
    study = optuna.load_study(study_name=str(settings.study_name), storage=storage,
                              sampler=optuna.samplers.RandomSampler(), pruner=build_pruner(pruner))
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    state = study._storage.get_trial(trial_id).state
    if state != optuna.trial.TrialState.RUNNING or len(study.directions) != 1:
        log.warning("trial %d of study %s is %s%s: this job reports no scores to it", number, study.study_name,
                    state.name, "" if len(study.directions) == 1 else " with several objectives")
        return None
    return optuna.trial.Trial(study, trial_id)

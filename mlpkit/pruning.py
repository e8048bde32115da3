"""Sweeps that stop hopeless trials: a run stopped once its gradients are judged unable to learn
(``sweep.prune_on_verdict=true``), and Optuna pruning in ``hparams_search=optuna`` (each epoch's
validation score reported to the trial, ``sweep.pruner`` asked whether to stop it).

Two halves that meet in the study's storage:

- the job's side, ``SweepPruning``, a callback: after each epoch it reports ``objective.metric`` to the
  job's Optuna trial (reopened from the storage), then stops the run at that epoch's end when a verdict
  in PRUNING_VERDICTS has fired or the pruner says so. The run ends normally, its metrics.json saying
  ``"pruned": {...}``, and its trial keeps the reason as the user attribute PRUNED_ATTR;
- the sweeper's side, ``OptunaPruningSweeper``: hydra-optuna-sweeper's own study loop, with what it
  lacks for pruning: each job learns its trial's number (``hydra.job.env_set``), a trial whose job pruned
  itself is told PRUNED (not COMPLETE: a pruned trial never becomes the best), and job numbers are trial
  numbers, so a resumed study numbers its jobs on from where it stopped.

Optuna takes two seconds to import: only a job of an Optuna sweep, and that sweeper, import it.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.plugins.sweeper import Sweeper

from mlpkit.callbacks import Callback
from mlpkit.errors import ConfigError

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
    """The running trial ``number`` of the sweep's study, from its storage (``hydra.sweeper.storage``
    and ``study_name`` of this job's config), with ``pruner`` to judge it; None, said once, when the
    trial cannot take reports (an in-memory study, a finished trial, several objectives)."""
    import optuna
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not HydraConfig.get().sweeper.get("storage"):
        log.warning("%s=%d but no study storage to report to: this job is not pruned by Optuna", TRIAL_ENV, number)
        return None
    settings = HydraConfig.get().sweeper
    study = optuna.load_study(study_name=str(settings.study_name), storage=str(settings.storage),
                              sampler=optuna.samplers.RandomSampler(), pruner=build_pruner(pruner))
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    state = study._storage.get_trial(trial_id).state
    if state != optuna.trial.TrialState.RUNNING or len(study.directions) != 1:
        log.warning("trial %d of study %s is %s%s: this job reports no scores to it", number, study.study_name,
                    state.name, "" if len(study.directions) == 1 else " with several objectives")
        return None
    return optuna.trial.Trial(study, trial_id)


# --- the sweeper's side ---------------------------------------------------------------------------
class OptunaPruningSweeper(Sweeper):
    """hydra-optuna-sweeper's sweeper, its study loop unchanged, with three additions for pruning.

    The plugin offers no hook for them, and copying its loop would fork 150 lines of it: two of its
    steps are wrapped instead, on this sweeper's own instances. ``_configure_trials`` (a batch of
    trials asked, their overrides made) gets each job's ``hydra.job.env_set.MLPKIT_OPTUNA_TRIAL`` and
    sets the batch's first job number to its first trial's; the study's ``tell`` turns the COMPLETE
    the plugin tells for every returned job into PRUNED for a trial whose job left PRUNED_ATTR.
    The job wrote to the storage through a study of its own, and this process's study caches the
    trials it asked (Optuna's cache assumes their asker alone writes to them): what the job wrote is
    read from the storage itself, and copied into this study's view before it tells.
    Hydra builds sweepers only from the hydra_plugins package: hydra_plugins/mlpkit_optuna_sweeper
    names this class there.
    """

    def __init__(self, **settings: Any) -> None:
        # optuna loads here (two seconds): only a sweep with this sweeper builds it
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        self.plugin = OptunaSweeperImpl(**settings)
        self.configure_batch = self.plugin._configure_trials
        self.plugin._configure_trials = self._configure_trials
        self.study: Any = None
        self.tell: Any = None
        self.stored: Any = None  # the study's storage, read past this process's cache

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.plugin.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        try:
            return self.plugin.sweep(arguments)
        except ValueError:  # the plugin's study.best_trial, with no completed trial to be it
            if self.study is None or any(trial.state.name == "COMPLETE" for trial in self.study.trials):
                raise
            log.warning("no trial of study %s completed (each was pruned or failed): there is no best trial, "
                        "and no optimization_results.yaml", self.study.study_name)
            return None

    def _configure_trials(self, trials: list[Any], *args: Any) -> list[tuple[str, ...]]:
        overrides = self.configure_batch(trials, *args)
        self.plugin.job_idx = trials[0].number  # job directories numbered as trials: a resumed study numbers on
        if self.study is None:
            self.study, self.tell = trials[0].study, trials[0].study.tell
            self.study.tell = self._tell
        if not isinstance(self.plugin.storage, str):  # an in-memory study: no job can reach its trial
            return overrides
        if self.stored is None:
            import optuna

            # a storage object of its own: it asked no trial, so it caches none and reads each from the database
            self.stored = optuna.storages.get_storage(self.plugin.storage)
        return [(*job, f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}") for job, trial in zip(overrides, trials)]

    def _tell(self, trial: Any, values: Any = None, state: Any = None) -> None:
        """The plugin's ``study.tell``, with a pruned job's trial told PRUNED (its last reported score
        becomes its value, as Optuna does for pruned trials)."""
        if self.stored is None or state is None or state.name != "COMPLETE":
            return self.tell(trial=trial, values=values, state=state)
        reported = self.stored.get_trial(trial._trial_id)  # what the job wrote
        note = reported.user_attrs.get(PRUNED_ATTR)
        if note is None:
            return self.tell(trial=trial, values=values, state=state)
        for step, value in sorted(reported.intermediate_values.items()):
            trial.report(value, step)  # the sampler ranks a pruned trial by its last score
        trial.set_user_attr(PRUNED_ATTR, note)
        log.info("trial %d pruned: %s", trial.number, note)
        return self.tell(trial=trial, state=type(state).PRUNED)

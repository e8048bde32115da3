"""mlpkit's Optuna sweeper (``hparams_search=optuna``): hydra-optuna-sweeper's settings with a study
loop for studies that several workers share and whose trials prune themselves (mlpkit.pruning).
Hydra finds it through hydra_plugins/mlpkit_optuna_sweeper, which names this class."""
from __future__ import annotations

import functools
import logging
import math
from typing import Any

from hydra.plugins.sweeper import Sweeper

from mlpkit.config import exit_on_config_error
from mlpkit.pruning import PRUNED_ATTR, TRIAL_ENV
from mlpkit.study_storage import (
    INTERRUPTED_ATTR,
    StudyFull,
    check_storage,
    open_storage,
    study_creation,
    study_storage,
)

log = logging.getLogger(__name__)
class OptunaPruningSweeper(Sweeper):
    """hydra-optuna-sweeper's settings and trial configuration, with a study loop of its own, for
    studies that several workers (``python train.py -m`` processes, on one machine or several) share.

    - Before each batch the storage is asked for trials while the study holds fewer than n_trials
      (finished, or running in any worker): n_trials is the study's total, whoever runs it, and a
      rerun of the command runs what is missing. A trial whose worker was interrupted is marked so
      (INTERRUPTED_ATTR) and no longer counted: a new trial takes its place.
    - Trial numbers come from the storage; job numbers are trial numbers (``hydra.job.num``, so each
      job directory is the trial's), and each job learns its trial (``hydra.job.env_set``).
    - A seeded sampler proposes trial n seeded with seed + n, unless this worker proposed trial n - 1:
      two workers never propose from the same random state, and a rerun moves on from where the study
      stands (``configure``).
    - A trial whose job pruned itself (PRUNED_ATTR, written by the job through its own storage and
      read past this process's cache) is told PRUNED with its last reported score.
    Hydra builds sweepers only from the hydra_plugins package: hydra_plugins/mlpkit_optuna_sweeper
    names this class there.
    """

    def __init__(self, **settings: Any) -> None:
        # optuna loads here (two seconds): only a sweep with this sweeper builds it
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        self.plugin = OptunaSweeperImpl(**settings)
        self.stored: Any = None  # the study's storage, read past this process's cache
        self.config: Any = None
        self.last_number = -2  # the number of the trial this worker proposed last

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.plugin.storage = study_storage(self.plugin.storage, config.hydra.sweep.dir)
        exit_on_config_error(check_storage, self.plugin.storage)
        self.plugin.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        plugin, url = self.plugin, self.plugin.storage
        plugin._process_searchspace_config()
        distributions, fixed = create_params_from_overrides(plugin._parse_sweeper_params_config() + list(arguments))
        distributions = {**(plugin.search_space_distributions or {}), **distributions}
        for name in fixed:
            distributions.pop(name, None)
        sampler, n_trials = self.sampler_for(distributions)
        with study_creation(url):
            study = optuna.create_study(study_name=plugin.study_name, storage=open_storage(url, n_trials),
                                        sampler=sampler, directions=plugin._get_directions(), load_if_exists=True)
        self.stored = open_storage(url)
        log.info("Study %s (%s), sampler %s, directions %s: %d trials in all", study.study_name, url,
                 type(sampler).__name__, plugin._get_directions(), n_trials)
        asked: list[Any] = []
        try:
            while asked := self.ask_batch(study):
                overrides = self.configure(study, asked, distributions, fixed)
                self.tell_batch(study, asked, self.launch(asked, overrides))
        except BaseException:  # Ctrl-C, a signal, a failed batch: this worker's unfinished trials are let go
            self.hand_back(study, asked)
            raise
        self.save_results(study)

    def sampler_for(self, distributions: dict[str, Any]) -> tuple[Any, int]:
        """The configured sampler and n_trials; a grid sampler gets the search space and caps n_trials."""
        plugin = self.plugin
        if not isinstance(plugin.sampler, functools.partial):
            return plugin.sampler, int(plugin.n_trials)
        choices = {name: plugin._to_grid_sampler_choices(value) for name, value in distributions.items()}
        return plugin.sampler(choices), min(int(plugin.n_trials), math.prod(len(c) for c in choices.values()))

    def ask_batch(self, study: Any) -> list[Any]:
        """Up to n_jobs new trials, while the study holds fewer than n_trials (the storage decides,
        atomically, for every worker; a WAITING trial, enqueued by hand, is taken first)."""
        trials: list[Any] = []
        while len(trials) < self.plugin.n_jobs:
            try:
                trials.append(study.ask())
            except StudyFull:
                break
        if trials:
            log.info("trials %s of study %s: this worker runs them", ", ".join(str(t.number) for t in trials),
                     study.study_name)
        return trials

    def configure(self, study: Any, trials: list[Any], distributions: dict[str, Any],
                  fixed: dict[str, Any]) -> list[tuple[str, ...]]:
        """Each trial's overrides. A seeded sampler proposes trial n seeded with seed + n, unless this worker
        proposed trial n - 1 (then its random state goes on): one worker draws one random sequence (a rerun
        starts at the study's next number), and no two workers draw from the same state."""
        overrides = []
        for trial in trials:
            if trial.number != self.last_number + 1:  # another worker proposed the trials between
                study.sampler = self.seeded_sampler(trial.number, study.sampler)
            self.last_number = trial.number
            (job,) = self.plugin._configure_trials([trial], distributions, fixed)
            overrides.append((*job, f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}"))
        return overrides

    def seeded_sampler(self, number: int, sampler: Any) -> Any:
        """``sampler`` again, seeded with its configured seed + ``number``; unseeded samplers as they are."""
        from hydra.utils import instantiate

        settings = self.config.hydra.sweeper.get("sampler") if self.config is not None else None
        if not settings or settings.get("seed") is None or isinstance(self.plugin.sampler, functools.partial):
            return sampler
        return instantiate(settings, seed=int(settings.seed) + number)

    def launch(self, trials: list[Any], overrides: list[tuple[str, ...]]) -> list[Any]:
        """The batch's jobs, numbered as their trials: a launch per run of consecutive numbers (another
        worker may have taken the numbers between)."""
        returns: list[Any] = []
        start = 0
        for end in range(1, len(trials) + 1):
            if end == len(trials) or trials[end].number != trials[end - 1].number + 1:
                returns += self.plugin.launcher.launch(overrides[start:end], initial_job_idx=trials[start].number)
                start = end
        return returns

    def tell_batch(self, study: Any, trials: list[Any], returns: list[Any]) -> None:
        """Each job's value to its trial (PRUNED when its job pruned itself, FAIL when it failed); too
        many failures (max_failure_rate) raise the first failed job's error."""
        failures = [error for trial, job in zip(trials, returns) if (error := self.tell(study, trial, job))]
        if failures and len(failures) / len(returns) > self.plugin.max_failure_rate:
            log.error("%d of %d trials failed, above max_failure_rate=%s", len(failures), len(returns),
                      self.plugin.max_failure_rate)
            for job in returns:
                job.return_value  # noqa: B018 - raises the job's own error, with its traceback

    def tell(self, study: Any, trial: Any, job: Any) -> Exception | None:
        import optuna

        states = optuna.trial.TrialState
        try:
            returned = job.return_value
            values = [float(returned)] if len(study.directions) == 1 else [float(value) for value in returned]
            if len(values) != len(study.directions):
                raise ValueError(f"{len(values)} values returned for {len(study.directions)} objectives")
        except Exception as error:  # noqa: BLE001 - the job's error, or a value Optuna cannot take
            study.tell(trial, state=states.FAIL)
            log.warning("trial %d failed: %s", trial.number, error)
            return error
        note = self.stored.get_trial(trial._trial_id).user_attrs.get(PRUNED_ATTR)
        if note is None:
            study.tell(trial, values=values, state=states.COMPLETE)
            return None
        for step, value in sorted(self.stored.get_trial(trial._trial_id).intermediate_values.items()):
            trial.report(value, step)  # the sampler ranks a pruned trial by its last score
        trial.set_user_attr(PRUNED_ATTR, note)
        log.info("trial %d pruned: %s", trial.number, note)
        study.tell(trial, state=states.PRUNED)
        return None

    def hand_back(self, study: Any, trials: list[Any]) -> None:
        """This worker's trials still RUNNING are marked INTERRUPTED_ATTR: the study no longer counts
        them, and the next ask, in any worker, creates a trial in place of each (its job directory,
        named by the interrupted trial's number, holds a run that only ``resume=`` may continue)."""
        for trial in trials:
            try:
                if self.stored.get_trial(trial._trial_id).state.name == "RUNNING":
                    self.stored.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, "its worker stopped first")
                    log.warning("trial %d of study %s interrupted: a new trial takes its place when the study "
                                "is run again", trial.number, study.study_name)
            except Exception as error:  # noqa: BLE001 - stopping anyway: say it, keep the first error
                log.warning("trial %d could not be marked interrupted: %s", trial.number, error)

    def save_results(self, study: Any) -> None:
        """optimization_results.yaml: the study's best trial (or Pareto front), over every worker's trials."""
        from omegaconf import OmegaConf

        if len(study.directions) > 1:
            results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values}
                                                       for t in study.best_trials]}
        elif any(trial.state.name == "COMPLETE" for trial in study.trials):
            results = {"name": "optuna", "best_params": study.best_params, "best_value": study.best_value}
            log.info("Best parameters: %s; best value: %s", study.best_params, study.best_value)
        else:
            log.warning("no trial of study %s completed (each was pruned or failed): there is no best trial, "
                        "and no optimization_results.yaml", study.study_name)
            return
        OmegaConf.save(OmegaConf.create(results), f"{self.config.hydra.sweep.dir}/optimization_results.yaml")

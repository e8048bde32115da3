"""The remedy loop in one command: diagnose a config, try the remedies its verdict names, recommend one.

``diagnose(overrides)`` trains the config ``python train.py <overrides>`` describes over a few seeds
(``trainer.seed=0..seeds-1``) into one sweep directory. If no seed got a gradient verdict it says so and
stops; otherwise it trains each remedy the verdicts name (the user's overrides plus the remedy's) over
the same seeds into the same directory, and writes one table, ``diagnosis.md`` and ``.json``: each
variant's verdict counts, median first/last gradient ratio and validation score, and the recommended
variant: the best score among those that turn every seed healthy and improve on the config, or none.
``python scripts/diagnose.py <overrides>`` (and ``mlpkit-diagnose``) runs it through ``diagnose_command``.
"""
from __future__ import annotations

import json
import logging
import math
import shlex
import statistics
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpkit.config_keys import override_key
from mlpkit.errors import ConfigError, is_int
from mlpkit.remedies import Remedy, remedies_for, settled, with_remedy
from mlpkit.rundir import METRICS_FILE, write_json
from mlpkit.sweeps import SEED_KEY, markdown_table

log = logging.getLogger("mlpkit")

DIAGNOSIS_NAME = "diagnosis"  # <sweep dir>/diagnosis.md and diagnosis.json
BASELINE = "baseline"         # the user's config, as typed
NOT_JUDGED, FAILED = "not judged", "failed"  # what a seed got instead of a verdict or "healthy"
OWN_KEYS = ("diagnose.", "hydra.")  # overrides of the diagnosis itself, not of the config it trains


# --- the result -----------------------------------------------------------------------------------
@dataclass
class Diagnosis:
    """A diagnosis: its sweep directory, one table row per variant, the recommended overrides (or None)."""

    sweep_dir: Path
    overrides: list[str]
    seeds: list[int]
    metric: str
    mode: str
    status: str  # healthy | not judged | unhealthy
    table: list[dict[str, Any]] = field(default_factory=list)
    recommended: list[str] | None = None
    markdown: str = ""

    @property
    def healthy(self) -> bool:
        """No seed got a verdict and at least one was judged healthy."""
        return self.status == "healthy"

    def frame(self) -> Any:
        """The table as a pandas DataFrame (the run directories left out)."""
        from mlpkit.finished_run import require_pandas

        rows = [{k: v for k, v in row.items() if k not in ("run_dirs", "scores", "ratios")} for row in self.table]
        return require_pandas("Diagnosis.frame()").DataFrame(rows)

    def __str__(self) -> str:
        return self.markdown

    def _repr_markdown_(self) -> str:
        return self.markdown


# --- training and reading the variants ------------------------------------------------------------
def diagnose(overrides: Sequence[str] | None = None, sweep_dir: str | Path | None = None,
             seeds: int | None = None) -> Diagnosis:
    """Diagnose ``python train.py <overrides>``: its gradients over ``seeds`` seeds (None: the config's
    diagnose.seeds, 3), then, if a verdict fired, the remedies it names, into ``sweep_dir`` (None: a
    new multirun/<date>/<time>); returns the Diagnosis, also written to <sweep dir>/diagnosis.md, .json."""
    from mlpkit.api import _override_list, run_config

    user = [o for o in _override_list(overrides) if not override_key(o).startswith(OWN_KEYS) and override_key(o) != "diagnose"]
    cfg = run_config(_override_list(overrides))  # diagnose.* included: diagnose.seeds is read from it
    seeds = _check(cfg, cfg.diagnose.seeds if seeds is None else seeds)
    user = [o for i, o in enumerate(user) if override_key(o) != SEED_KEY  # the diagnosis sets the seeds
            and override_key(o) not in map(override_key, user[i + 1:])]  # a key typed twice: its last value, as Hydra takes it
    metric, mode = _objective(cfg)
    baseline = Remedy(BASELINE, (), "your config")
    _compose_all(user, [baseline], seeds)  # a config that cannot work fails here, before anything trains
    sweep_dir, rows = _train(user, [baseline], seeds, sweep_dir, 0, metric)
    if rows[0]["verdicts"] == {FAILED: seeds} and rows[0]["error"]:
        raise _one_line(rows[0]["error"])  # it broke before training (a data file, a value): no verdict to act on
    diagnosis = Diagnosis(sweep_dir, user, list(range(seeds)), metric, mode, _status(rows[0]))
    if diagnosis.status == "unhealthy":
        kinds = [kind for kind in rows[0]["verdicts"] if kind not in ("healthy", NOT_JUDGED)]
        remedies = [settled(user, remedy) for remedy in remedies_for(kinds, cfg)]
        remedies = _compose_all(user, remedies, seeds)
        log.info("diagnose: %s; training %d remedies over seeds 0-%d", rows[0]["gradients"], len(remedies), seeds - 1)
        rows += _train(user, remedies, seeds, sweep_dir, seeds, metric)[1] if remedies else []
    _judge(rows, metric, mode)
    diagnosis.table = rows
    recommended = next((row for row in rows if row["recommended"]), None)
    diagnosis.recommended = recommended["overrides"] if recommended else None
    diagnosis.markdown = render(diagnosis)
    _write(diagnosis)
    return diagnosis


def _check(cfg: DictConfig, seeds: Any) -> int:
    """The refusals: seeds that are not a count, a resume, a cross-validation, the range test alone."""
    if not is_int(seeds) or seeds < 1:
        raise ConfigError("diagnose.seeds", seeds, "an integer >= 1 (each variant trains with trainer.seed=0..seeds-1)")
    if cfg.get("resume"):
        raise ConfigError("resume", cfg.resume, "no resume in a diagnosis",
                          "a diagnosis trains new runs: drop resume=")
    if int(OmegaConf.select(cfg, "data.cv_folds", default=0) or 0):
        raise ConfigError("data.cv_folds", cfg.data.cv_folds, "0 in a diagnosis",
                          "a diagnosis compares plain runs over seeds: drop data.cv_folds")
    if OmegaConf.select(cfg, "lr_find.run", default=False):
        raise ConfigError("lr_find.run", True, "false in a diagnosis", "run the range test on its own")
    return seeds


def _objective(cfg: DictConfig) -> tuple[str, str]:
    from mlpkit.schema import objective_mode

    return str(cfg.objective.metric), objective_mode(cfg.objective.metric, cfg.objective.mode)


def _compose_all(user: list[str], remedies: list[Remedy], seeds: int) -> list[Remedy]:
    """Every variant's config composed and validated before it trains: the first that cannot work
    raises (the baseline) or is left out, saying why (a remedy)."""
    from mlpkit.api import run_config
    from mlpkit.config import validate

    kept = []
    for remedy in remedies:
        try:
            for seed in range(seeds):
                validate(run_config([*with_remedy(user, remedy.overrides), f"{SEED_KEY}={seed}"]))
        except ConfigError as error:
            if remedy.name == BASELINE:
                raise
            log.warning("diagnose: not trying %s: %s", " ".join(remedy.overrides), error)
            continue
        kept.append(remedy)
    return kept


def _train(user: list[str], remedies: list[Remedy], seeds: int, sweep_dir: str | Path | None,
           first_job: int, metric: str) -> tuple[Path, list[dict[str, Any]]]:
    """Each remedy over the seeds, one mlpkit.sweep into ``sweep_dir``; a row per remedy."""
    from mlpkit.api import sweep

    jobs, names = [], []
    for remedy in remedies:
        for seed in range(seeds):
            names.append(f"{first_job + len(names)}_{remedy.name}_seed{seed}")
            jobs.append([*with_remedy(user, remedy.overrides), f"{SEED_KEY}={seed}", f"hydra.sweep.subdir={names[-1]}"])
    result = sweep(jobs, sweep_dir=sweep_dir)
    job_dirs = [result.dir / name for name in names]
    rows = [_row(user, remedy, job_dirs[index * seeds:(index + 1) * seeds], result.failed, metric)
            for index, remedy in enumerate(remedies)]
    return result.dir, rows


def _row(user: list[str], remedy: Remedy, job_dirs: list[Path], failed: dict[str, str], metric: str
         ) -> dict[str, Any]:
    """One variant's seeds, as their metrics.json files say."""
    metrics = [_read(job_dir) for job_dir in job_dirs]
    verdicts = [_verdicts(m) for m in metrics]
    ratios = [((m.get("gradient_health") or {}).get("first_last_grad_ratio") or {}).get("median") for m in metrics]
    ratios = [float(r) for r in ratios if r is not None]
    return {
        "variant": remedy.name, "remedy": list(remedy.overrides), "what": remedy.what,
        "last_resort": remedy.last_resort, "overrides": with_remedy(user, remedy.overrides),
        "verdicts": dict(Counter(kind for kinds in verdicts for kind in kinds)), "seeds": len(job_dirs),
        "gradients": _counts(verdicts), "healthy_seeds": sum(kinds == ["healthy"] for kinds in verdicts),
        "ratios": ratios, "grad_ratio_median": statistics.median(ratios) if ratios else None,
        "scores": [_score(m, metric) for m in metrics], "run_dirs": [str(job_dir) for job_dir in job_dirs],
        "not_judged_reason": next(((m.get("gradient_health") or {}).get("reason", "") for m, kinds in
                                   zip(metrics, verdicts) if kinds == [NOT_JUDGED]), ""),
        "error": next((failed[str(d)] for d in job_dirs if str(d) in failed), ""),  # the first failed seed's
    }


def _read(job_dir: Path) -> dict[str, Any]:
    path = job_dir / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _verdicts(metrics: dict[str, Any]) -> list[str]:
    """A run's verdict kinds, or ["healthy"], ["not judged"], ["failed"]."""
    health = metrics.get("gradient_health") or {}
    if health.get("verdicts"):
        return list(health["verdicts"])
    if not metrics or metrics.get("status") != "completed":
        return [FAILED]
    return ["healthy"] if health.get("judged") and health.get("healthy") else [NOT_JUDGED]


def _counts(verdicts: list[list[str]]) -> str:
    """``vanishing 3/3``, ``healthy 2/3, dead 1/3``."""
    counted = Counter(kind for kinds in verdicts for kind in kinds)
    return ", ".join(f"{kind} {count}/{len(verdicts)}" for kind, count in counted.items())


def _score(metrics: dict[str, Any], metric: str) -> float | None:
    """The objective the run returns: its validation metric (the training one without a validation
    split); None for a run that did not complete or a value that is not finite."""
    value = (metrics.get("val") or metrics.get("train") or {}).get(metric) if metrics.get("status") == "completed" else None
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _status(baseline: dict[str, Any]) -> str:
    kinds = set(baseline["verdicts"])
    if kinds - {"healthy", NOT_JUDGED}:
        return "unhealthy"
    return "healthy" if "healthy" in kinds else "not judged"


def _one_line(error: str) -> ConfigError:
    problem = ConfigError("overrides", None, "a config that trains")
    problem.args = (error.split(": ", 1)[-1],)  # "ConfigError: <its line>"
    return problem


# --- judging the variants -------------------------------------------------------------------------
def _judge(rows: list[dict[str, Any]], metric: str, mode: str) -> None:
    """Each row's mean ± std score, whether it turns every seed healthy and beats the config, its outcome
    in words; the recommended row: the best score among those that do both (a last resort only if alone)."""
    baseline = rows[0]
    for row in rows:
        finite = [score for score in row["scores"] if score is not None]
        row["score_mean"] = statistics.fmean(finite) if finite else None
        row["score_std"] = statistics.stdev(finite) if len(finite) > 1 else None
        row["flips"] = row["healthy_seeds"] == row["seeds"]
        row["improves"] = row is not baseline and _better(row["score_mean"], baseline["score_mean"], mode)
        row["outcome"] = "" if row is baseline else _outcome(row, baseline, metric)
        row["recommended"] = False
    working = [row for row in rows[1:] if row["flips"] and row["improves"]]
    preferred = [row for row in working if not row["last_resort"]] or working
    if preferred:
        best = min(preferred, key=lambda row: row["score_mean"] if mode == "min" else -row["score_mean"])
        best["recommended"] = True


def _change(kind: str, baseline: dict[str, Any]) -> str:
    """``still`` for a verdict the config got too, ``now`` for one it did not."""
    if kind in (NOT_JUDGED, FAILED):
        return ""
    return "still " if kind in baseline["verdicts"] else "now "


def _better(score: float | None, reference: float | None, mode: str) -> bool:
    if score is None:
        return False
    return reference is None or (score < reference if mode == "min" else score > reference)


def _outcome(row: dict[str, Any], baseline: dict[str, Any], metric: str) -> str:
    """``flips to healthy; val_loss lower: better`` or ``still vanishing 3/3; val_loss higher: worse``."""
    if row["flips"]:
        verdict = "flips to healthy"
    else:
        verdict = ", ".join(f"{_change(kind, baseline)}{kind} {count}/{row['seeds']}"
                            for kind, count in row["verdicts"].items() if kind != "healthy")
    after, before = row["score_mean"], baseline["score_mean"]
    if after is None:
        return f"{verdict}; no val_{metric}: no seed completed"
    if before is None:
        return f"{verdict}; val_{metric} where your config had none: better"
    direction = "lower" if after < before else "higher" if after > before else "unchanged"
    noise = max(row["score_std"] or 0.0, baseline["score_std"] or 0.0)
    within = " (within seed noise)" if after != before and abs(after - before) <= noise else ""
    return f"{verdict}; val_{metric} {direction}: {'better' if row['improves'] else 'not better'}{within}"


# --- the table, the recommendation, the files -----------------------------------------------------
def command(overrides: Sequence[str]) -> str:
    """The command line to copy, each override quoted where a shell would change it ([64,64] globs)."""
    return " ".join(["python train.py", *(shlex.quote(override) for override in overrides)])


def render(diagnosis: Diagnosis) -> str:
    """The Markdown: what was found, the table, the recommendation and where the runs are."""
    rows, metric = diagnosis.table, diagnosis.metric
    header = ["", "variant", "tries", "gradients", "first/last grad ratio (median)",
              f"val_{metric} (mean ± std)", "outcome"]
    cells = [["**recommended**" if row["recommended"] else "",
              f"`{' '.join(row['remedy'])}`" if row["remedy"] else "(your config)", row["what"], row["gradients"],
              "" if row["grad_ratio_median"] is None else f"{row['grad_ratio_median']:.2g}", _score_cell(row),
              row["outcome"]] for row in rows]
    seeds = f"seeds 0-{len(diagnosis.seeds) - 1}" if len(diagnosis.seeds) > 1 else "seed 0"
    sections = [f"# Diagnosis of `{command(diagnosis.overrides)}`", _finding(diagnosis, seeds),
                markdown_table(header, cells), _advice(diagnosis),
                f"Runs: {diagnosis.sweep_dir}/<job>_<variant>_seed<k>; the sweep report: "
                f"{diagnosis.sweep_dir / 'sweep_report.md'}."]
    return "\n\n".join(section for section in sections if section) + "\n"


def _score_cell(row: dict[str, Any]) -> str:
    if row["score_mean"] is None:
        return "no seed completed"
    text = f"{row['score_mean']:.4g}" + ("" if row["score_std"] is None else f" ± {row['score_std']:.2g}")
    finite = sum(score is not None for score in row["scores"])
    return text if finite == row["seeds"] else f"{text} (n={finite})"


def _finding(diagnosis: Diagnosis, seeds: str) -> str:
    baseline = diagnosis.table[0]
    not_judged = baseline["verdicts"].get(NOT_JUDGED, 0)
    longer = (f"not judged on {not_judged} of {baseline['seeds']} seeds ({baseline['not_judged_reason']}): "
              "train longer (a larger trainer.max_epochs) to be sure")
    if diagnosis.status == "healthy":
        return (f"**Healthy**: no gradient verdict over {seeds} ({baseline['gradients']}); nothing to remedy, "
                f"so nothing else was trained." + (f" But {longer}." if not_judged else ""))
    if diagnosis.status == "not judged":
        return (f"**Not judged**: no verdict on any of {seeds}, but too few measured steps to call the gradients "
                f"healthy either: {longer}, and diagnose again.")
    tried = len(diagnosis.table) - 1
    return (f"Your config over {seeds}: **{baseline['gradients']}**. Tried the {tried} remedies that verdict names, "
            f"each added to your overrides, over the same seeds.")


def _advice(diagnosis: Diagnosis) -> str:
    if diagnosis.status != "unhealthy":
        return ""
    metric, rows = diagnosis.metric, diagnosis.table[1:]
    best = next((row for row in rows if row["recommended"]), None)
    if best is not None:
        return (f"**Recommended**: `{' '.join(best['remedy'])}` ({best['what']}): healthy on every seed and "
                f"val_{metric} {_score_cell(best)} against {_score_cell(diagnosis.table[0])}. "
                f"Train with:\n\n    {command(best['overrides'])}")
    if not rows:
        return "**No remedy recommended**: none of the remedies this verdict names applies to this config."
    healthy = [f"`{' '.join(row['remedy'])}`" for row in rows if row["flips"]]
    better = [f"`{' '.join(row['remedy'])}`" for row in rows if row["improves"]]
    return (f"**No remedy recommended**: none both turned every seed healthy and improved val_{metric}"
            + (f" (healthy but not better: {', '.join(healthy)})" if healthy else "")
            + (f" (better but not healthy on every seed: {', '.join(better)})" if better else "")
            + ". Train longer (a larger trainer.max_epochs) or combine remedies, and diagnose again.")


def _write(diagnosis: Diagnosis) -> None:
    (diagnosis.sweep_dir / f"{DIAGNOSIS_NAME}.md").write_text(diagnosis.markdown)
    write_json(diagnosis.sweep_dir / f"{DIAGNOSIS_NAME}.json", {
        "overrides": diagnosis.overrides, "seeds": diagnosis.seeds, "metric": diagnosis.metric,
        "mode": diagnosis.mode, "status": diagnosis.status, "healthy": diagnosis.healthy,
        "recommended": diagnosis.recommended,
        "command": None if diagnosis.recommended is None else command(diagnosis.recommended),
        "table": diagnosis.table})


# --- the command line -----------------------------------------------------------------------------
def diagnose_command() -> None:
    """``python scripts/diagnose.py <overrides>`` and ``mlpkit-diagnose``: train.py's config and overrides,
    the diagnosis in the Hydra run directory; a config mistake is one line and exit 2."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mlpkit.config import CONFIG_DIR, report_config_errors
    from mlpkit.new_dirs import register_resolvers

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
    def _diagnose(cfg: DictConfig) -> float:
        hydra_cfg = HydraConfig.get()
        overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
        typed = [override for override in overrides if not override_key(override).startswith("diagnose.")]
        return diagnose_main(cfg, Path(hydra_cfg.runtime.output_dir), typed, hydra_cfg.mode == RunMode.MULTIRUN)

    register_resolvers()  # configs/hydra/default.yaml names run directories through them
    report_config_errors(_diagnose, "train")


def diagnose_main(cfg: DictConfig, run_dir: Path, overrides: Sequence[str], multirun: bool = False) -> float:
    """``python scripts/diagnose.py <overrides>`` (``diagnose_command``'s Hydra task): the diagnosis into
    the Hydra run directory, its Markdown on stdout. ``overrides``: as typed (diagnose.* are left out);
    ``multirun``: whether Hydra runs a multirun (-m). A refusal is one line and exit 2. Returns the
    recommended variant's mean score, else the config's (nan without one)."""
    # the command line's train.log rule: a refused resume leaves that run's log as it was
    from mlpkit.cli import held_run_log

    try:
        with held_run_log(run_dir, holding=bool(cfg.get("resume"))):
            from mlpkit import distributed

            if multirun:
                raise ConfigError("hydra.mode", "MULTIRUN", "a single command (no -m): a diagnosis runs its own sweep")
            if distributed.launched():
                raise ConfigError("torchrun", distributed.world_size(), "one process: a diagnosis trains many "
                                  "runs one after another", "start it as python scripts/diagnose.py")
            with _outside_hydra_app():
                diagnosis = diagnose(list(overrides), sweep_dir=run_dir, seeds=cfg.diagnose.seeds)
    except ConfigError as error:
        log.error("Config error: %s", error)
        sys.exit(error.exit_code)
    print(diagnosis, flush=True)
    chosen = next((row for row in diagnosis.table if row["recommended"]), diagnosis.table[0])
    return math.nan if chosen["score_mean"] is None else chosen["score_mean"]


@contextmanager
def _outside_hydra_app() -> Iterator[None]:
    """Hydra's compose API (mlpkit.sweep composes each job) refuses to start inside a running Hydra app:
    the app's global state is put aside while the diagnosis runs, and restored after."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        restore_gh_from_backup(backup)

"""What pruning saves an Optuna study: `python scripts/measure_pruning.py [--trials 12] [--seeds 0 1 2]`.

The study searches depth x activation x lr on digits, with deep sigmoid/tanh members among its trials
(hidden_sizes [64] or eight layers of 32, activation relu, tanh or sigmoid, lr log-uniform in
[1e-4, 1e-1]), once per study seed and per pruning setting: none, sweep.prune_on_verdict=true, Optuna's
median pruner (hparams_search=optuna's default), and both. Each study is the real command
(`python train.py -m hparams_search=optuna ...`) in a directory of its own; the table (Markdown) gives the
trials pruned, the wall time of the command and of its trials' training, the epochs trained, and the best
val_loss found with its trial's val_accuracy.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlpkit.rundir import METRICS_FILE  # noqa: E402

SEARCH = ["data=digits", "model.hidden_sizes=choice([64],[32,32,32,32,32,32,32,32])",
          "activation=choice(relu,tanh,sigmoid)", "optimizer.lr=tag(log,interval(1e-4,1e-1))", "model.dropout=0"]
NO_PRUNER = ["sweep.pruner._target_=optuna.pruners.NopPruner", "~sweep.pruner.n_startup_trials",
             "~sweep.pruner.n_warmup_steps"]  # scores are still reported, nothing is pruned by them
SETTINGS = {
    "none": NO_PRUNER,
    "verdict": [*NO_PRUNER, "sweep.prune_on_verdict=true"],
    "median": [],  # configs/hparams_search/optuna.yaml's MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    "median+verdict": ["sweep.prune_on_verdict=true"],
}


def run_study(sweep_dir: Path, seed: int, trials: int, epochs: int, setting: list[str]) -> dict:
    """One study through the command line; what it cost and found."""
    import optuna

    command = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=optuna", f"hydra.sweep.dir={sweep_dir}",
               f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.sampler.seed={seed}",
               f"trainer.max_epochs={epochs}", "trainer.progress=false", "trainer.device=cpu", *SEARCH, *setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=sweep_dir.parent, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name="mlp_digits", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    jobs = [json.loads(path.read_text()) for path in sweep_dir.glob(f"*/{METRICS_FILE}")]
    best = study.best_trial
    best_metrics = next(m for m in jobs if abs(m["val"]["loss"] - best.value) < 1e-9)
    reasons = [t.user_attrs.get("pruned", "").split(" at ")[0] for t in study.trials if t.state.name == "PRUNED"]
    return {"pruned": len(reasons), "reasons": reasons, "trials": len(study.trials),
            "wall": wall, "train": sum(m["wall_seconds"] for m in jobs), "epochs": sum(m["epochs"] for m in jobs),
            "best_loss": best.value, "best_accuracy": best_metrics["val"]["accuracy"],
            "best_params": best.params}


def table(results: dict[str, list[dict]], seeds: list[int], trials: int, epochs: int) -> str:
    lines = ["| pruning | trials pruned (per seed) | pruned by (all seeds) | command wall s (mean) | trials' wall s "
             "(mean) | epochs trained (mean, of max) | best val_loss per seed | its val_accuracy per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        def mean(key: str, runs: list[dict] = runs) -> float:
            return statistics.fmean(run[key] for run in runs)

        pruned = ", ".join(str(run["pruned"]) for run in runs)
        reasons = collections.Counter(reason for run in runs for reason in run["reasons"])
        by = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common()) or "-"
        losses = ", ".join(format(run["best_loss"], ".4f") for run in runs)
        accuracies = ", ".join(format(run["best_accuracy"], ".4f") for run in runs)
        lines.append(f"| {name} | {pruned} | {by} | {mean('wall'):.1f} | {mean('train'):.1f} | "
                     f"{mean('epochs'):.0f} of {trials * epochs} | {losses} | {accuracies} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trials per study")
    parser.add_argument("--epochs", type=int, default=10, help="trainer.max_epochs of each trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the studies' sampler seeds")
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            for name, setting in SETTINGS.items():
                sweep_dir = Path(scratch) / f"{name}_{seed}"
                sweep_dir.mkdir()
                result = run_study(sweep_dir / "study", seed, args.trials, args.epochs, setting)
                results[name].append(result)
                print(f"seed {seed} {name}: {result}", file=sys.stderr, flush=True)
    print(table(results, args.seeds, args.trials, args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

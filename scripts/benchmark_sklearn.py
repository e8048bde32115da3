"""mlpkit.MLPClassifier against scikit-learn's own sklearn.neural_network.MLPClassifier, side by side.

    python scripts/benchmark_sklearn.py                                   # 30 epochs, 3 seeds, 3 data sets
    python scripts/benchmark_sklearn.py --datasets digits --epochs 5 --seeds 1 --markdown --json out.json

Both estimators see the same thing on each data set: the same stratified split (25% test, seed 0),
the same float32 rows (--dtype), the same architecture (hidden (128, 64), relu), the same optimizer
(Adam, lr 1e-3, betas (0.9, 0.999), no weight decay / alpha=0), the same batch size (64: mlpkit's
default; scikit-learn's own default is min(200, n)) and the same number of epochs on every training
row (no early stopping, no validation split; scikit-learn with tol=0 and n_iter_no_change above
max_iter, so it never stops early; its ConvergenceWarning is silenced). Preprocessing: scikit-learn
gets Pipeline(StandardScaler(), MLPClassifier(...)); mlpkit gets the raw rows and standardises them
itself with the training rows' mean and std, as its fit always does (data.standardize=true).
What still differs: the weight initialisation (torch's default against Glorot's), the arithmetic
(torch's kernels against numpy's BLAS) and mlpkit's gradient monitor, which runs inside its timed fit.

Times are the wall seconds of ``fit`` (median over seeds), after one untimed warm-up fit of each
estimator per process (mlpkit's first fit imports torch's optimizer machinery and composes Hydra's
config: its time is reported apart). Each seed fits the two back to back, alternating which goes
first; the mlpkit/sklearn ratio is the median of the per-seed ratios (a slow spell of a shared
machine then slows both sides of a ratio alike), with their range.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASETS = ("digits", "breast_cancer", "synthetic")
ESTIMATORS = ("mlpkit", "sklearn")
HIDDEN_SIZES = (128, 64)
LEARNING_RATE = 1e-3
TEST_FRACTION = 0.25
SPLIT_SEED = 0
SYNTHETIC_FEATURES, SYNTHETIC_CLASSES = 40, 5
WARM_UP_ROWS = 256


# --- data ------------------------------------------------------------------------------------------
def load_dataset(name: str, rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows, the labels and a description saying where they come from."""
    from sklearn import datasets  # here: scipy's import is the script's slowest after torch

    if name == "digits":
        X, y = datasets.load_digits(return_X_y=True)
        return X, y, "sklearn load_digits"
    if name == "breast_cancer":
        X, y = datasets.load_breast_cancer(return_X_y=True)
        return X, y, "sklearn load_breast_cancer"
    X, y = datasets.make_classification(n_samples=rows, n_features=SYNTHETIC_FEATURES, n_informative=20,
                                        n_redundant=5, n_classes=SYNTHETIC_CLASSES, random_state=0)
    return X, y, (f"generated, not real data: sklearn make_classification({rows} rows, {SYNTHETIC_FEATURES} features: "
                  f"20 informative, 5 redundant, 15 noise; {SYNTHETIC_CLASSES} classes, random_state 0)")


def split(X: np.ndarray, y: np.ndarray, dtype: str) -> tuple[np.ndarray, ...]:
    """X_train, X_test, y_train, y_test: the one split both estimators use."""
    from sklearn.model_selection import train_test_split

    return train_test_split(X.astype(dtype), y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)


# --- the two estimators ----------------------------------------------------------------------------
def mlpkit_classifier(epochs: int, batch_size: int, seed: int, device: str) -> Any:
    from mlpkit import MLPClassifier

    return MLPClassifier(hidden_sizes=HIDDEN_SIZES, activation="relu", optimizer="adam", lr=LEARNING_RATE,
                         weight_decay=0.0, max_epochs=epochs, batch_size=batch_size, early_stopping=False,
                         random_state=seed, device=device)


def sklearn_classifier(epochs: int, batch_size: int, seed: int) -> Any:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=HIDDEN_SIZES, activation="relu", solver="adam", alpha=0.0, batch_size=batch_size,
        learning_rate_init=LEARNING_RATE, max_iter=epochs, shuffle=True, random_state=seed, tol=0.0,
        n_iter_no_change=epochs + 1, early_stopping=False))


def make_estimator(kind: str, args: argparse.Namespace, seed: int, epochs: int | None = None) -> Any:
    epochs = args.epochs if epochs is None else epochs
    if kind == "mlpkit":
        return mlpkit_classifier(epochs, args.batch_size, seed, args.device)
    return sklearn_classifier(epochs, args.batch_size, seed)


def timed_fit(estimator: Any, X: np.ndarray, y: np.ndarray) -> float:
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached: what this benchmark asks for
        start = time.perf_counter()
        estimator.fit(X, y)
        return time.perf_counter() - start


def epochs_run(kind: str, estimator: Any) -> int:
    return int(estimator.n_iter_ if kind == "mlpkit" else estimator[-1].n_iter_)


# --- measuring -------------------------------------------------------------------------------------
def warm_up(args: argparse.Namespace, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """One untimed-in-the-table fit of each estimator on a few rows: the first fit's one-off costs."""
    return {kind: timed_fit(make_estimator(kind, args, seed=0, epochs=1), X[:WARM_UP_ROWS], y[:WARM_UP_ROWS])
            for kind in ESTIMATORS}


def measure_dataset(args: argparse.Namespace, parts: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Each estimator fitted once per seed, the order alternating seed by seed."""
    X_train, X_test, y_train, y_test = parts
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ESTIMATORS}
    for index, seed in enumerate(range(args.seeds)):
        order = ESTIMATORS if index % 2 == 0 else ESTIMATORS[::-1]
        for kind in order:
            estimator = make_estimator(kind, args, seed)
            seconds = timed_fit(estimator, X_train, y_train)
            run = {"seed": seed, "fit_seconds": seconds, "accuracy": float(estimator.score(X_test, y_test)),
                   "epochs_run": epochs_run(kind, estimator)}
            if kind == "mlpkit":
                health = estimator.gradient_health_
                run.update(healthy=bool(health["healthy"]), judged=bool(health.get("judged", True)),
                           verdicts=sorted(health["verdicts"]))
            runs[kind].append(run)
    summaries = {kind: summarize(kind_runs) for kind, kind_runs in runs.items()}
    ratios = [mine["fit_seconds"] / theirs["fit_seconds"] for mine, theirs in zip(runs["mlpkit"], runs["sklearn"])]
    return {"estimators": summaries, "time_ratios_per_seed": ratios,
            "time_ratio_mlpkit_to_sklearn": statistics.median(ratios)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    accuracies = [run["accuracy"] for run in runs]
    summary = {"runs": runs, "fit_seconds_median": statistics.median(run["fit_seconds"] for run in runs),
               "accuracy_mean": statistics.fmean(accuracies),
               "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0}
    if "healthy" in runs[0]:
        summary["healthy_runs"] = sum(run["healthy"] for run in runs)
        summary["judged_runs"] = sum(run["judged"] for run in runs)
        summary["verdicts"] = sorted({verdict for run in runs for verdict in run["verdicts"]})
    return summary


def measure(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"settings": settings_of(args), "datasets": {}, "load_average_before": load_average()}
    for name in args.datasets:
        X, y, source = load_dataset(name, args.rows)
        parts = split(X, y, args.dtype)
        if "first_fit_seconds" not in report:
            report["first_fit_seconds"] = warm_up(args, parts[0], parts[2])
        report["datasets"][name] = {"source": source, "rows": len(X), "features": X.shape[1],
                                    "classes": len(np.unique(y)), "train_rows": len(parts[0]),
                                    "test_rows": len(parts[1]), **measure_dataset(args, parts)}
        print(f"  {name}: done", file=sys.stderr, flush=True)
    report["machine"] = machine()  # after the fits: mlpkit sets torch's threads when it trains
    report["load_average_after"] = load_average()
    return report


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"epochs": args.epochs, "seeds": args.seeds, "batch_size": args.batch_size, "dtype": args.dtype,
            "device": args.device, "hidden_sizes": list(HIDDEN_SIZES), "activation": "relu",
            "optimizer": "adam", "lr": LEARNING_RATE, "test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED,
            "synthetic_rows": args.rows}


def machine() -> dict[str, Any]:
    import sklearn
    import torch
    from threadpoolctl import threadpool_info

    blas = [f"{pool['internal_api']} {pool['num_threads']} threads ({Path(pool['filepath']).parent.name})"
            for pool in threadpool_info() if pool["user_api"] == "blas"]
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "blas": blas, "python": platform.python_version(), "torch": torch.__version__,
            "sklearn": sklearn.__version__, "numpy": np.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}


def load_average() -> float | None:
    """The 1-minute load average: other work on a shared machine slows both estimators' threads."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.machine())


# --- reporting -------------------------------------------------------------------------------------
COLUMNS = ("data set", "rows x features, classes", "mlpkit fit s", "sklearn fit s", "mlpkit/sklearn",
           "mlpkit accuracy", "sklearn accuracy", "mlpkit gradients")


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for name, result in report["datasets"].items():
        mine, theirs = result["estimators"]["mlpkit"], result["estimators"]["sklearn"]
        size = f"{result['rows']} x {result['features']}, {result['classes']}"
        rows.append((name + (" (make_classification)" if name == "synthetic" else ""), size,
                     f"{mine['fit_seconds_median']:.2f}", f"{theirs['fit_seconds_median']:.2f}",
                     ratio_text(result), accuracy_text(mine), accuracy_text(theirs),
                     gradients_text(mine)))
    return rows


def ratio_text(result: dict[str, Any]) -> str:
    """The median of the per-seed ratios (each seed's two fits ran back to back), and their range."""
    ratios = result["time_ratios_per_seed"]
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
    return f"{result['time_ratio_mlpkit_to_sklearn']:.2f}{spread}"


def accuracy_text(summary: dict[str, Any]) -> str:
    return f"{summary['accuracy_mean']:.4f} ± {summary['accuracy_std']:.4f}"


def gradients_text(summary: dict[str, Any]) -> str:
    runs = len(summary["runs"])
    verdicts = ", ".join(summary["verdicts"]) or "no verdict"
    unjudged = runs - summary["judged_runs"]
    return f"healthy {summary['healthy_runs']}/{runs}; {verdicts}" + (f"; {unjudged} too short to judge" if unjudged else "")


def header_lines(report: dict[str, Any]) -> list[str]:
    host, settings, first = report["machine"], report["settings"], report["first_fit_seconds"]
    return [
        f"machine: {host['cpu']}, {host['cores']} cores; torch {host['torch']} with {host['torch_threads']} "
        f"threads; scikit-learn {host['sklearn']}, numpy {host['numpy']} BLAS: {'; '.join(host['blas'])}; "
        f"OMP_NUM_THREADS={host['omp_num_threads']}; Python {host['python']}; 1-minute load average "
        f"{report['load_average_before']} before, {report['load_average_after']} after",
        f"settings: {settings['epochs']} epochs, {settings['seeds']} seeds, batch {settings['batch_size']}, "
        f"{settings['dtype']}, hidden {tuple(settings['hidden_sizes'])} relu, Adam lr {settings['lr']}, "
        f"mlpkit on {settings['device']}; fit seconds: median over seeds; accuracy: mean ± std on the test 25%",
        f"first fit in the process ({WARM_UP_ROWS} rows, 1 epoch, not in the table): "
        f"mlpkit {first['mlpkit']:.2f} s, sklearn {first['sklearn']:.2f} s",
        *(f"{name}: {result['source']}" for name, result in report["datasets"].items() if name == "synthetic"),
    ]


def plain_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[column]) for row in [COLUMNS, *rows]) for column in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [COLUMNS, *rows])


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# --- command line ----------------------------------------------------------------------------------
def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs of every fit (default 30)")
    parser.add_argument("--seeds", type=int, default=3, help="fits per estimator and data set (default 3)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the synthetic table (default 50000)")
    parser.add_argument("--batch-size", type=int, default=64, help="both estimators' batch size (default 64)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="the rows both estimators get (default float32: mlpkit computes in float32)")
    parser.add_argument("--device", default="cpu", help="mlpkit's device (default cpu, as scikit-learn's)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the raw numbers to PATH")
    args = parser.parse_args(argv)
    for flag, lowest in (("epochs", 1), ("seeds", 1), ("rows", 100), ("batch_size", 1)):
        if getattr(args, flag) < lowest:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least {lowest}")
    args.datasets = list(dict.fromkeys(args.datasets))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    report = measure(args)
    rows = table_rows(report)
    print("\n".join(header_lines(report)))
    print(plain_table(rows))
    if args.markdown:
        print()
        print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()

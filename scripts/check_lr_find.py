"""Does training at the range test's suggested learning rate do as well as the best of a grid?

    python scripts/check_lr_find.py                      # digits and breast_cancer, 3 seeds, 10 epochs
    python scripts/check_lr_find.py --data digits --seeds 0 1 --epochs 5 --markdown

For each data set and seed: the range test's suggestion under each rule (``lr_find.rule``), and a run
at each suggestion and at every lr of the grid {1e-4, 3e-4, 1e-3, 3e-3, 1e-2} (Adam, the default
model), all through mlpkit's own assembly; the validation score (accuracy; R^2 for a regression)
of each run's last epoch. It prints a table per data set: the grid's best, each rule's score and the
shortfall from the grid's best, over the seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
RULES = ("minimum", "steepest")


def score_of(overrides: list[str], data) -> float:
    from mlpkit.api import run_config
    from mlpkit.assemble import assemble

    cfg = run_config(overrides)
    result = assemble(cfg, data, diagnostics=False).trainer.fit()
    metric = "accuracy" if "accuracy" in result["val"] else "r2"
    return float(result["val"][metric])


def measure(dataset: str, seed: int, epochs: int) -> dict:
    from mlpkit.api import run_config
    from mlpkit.assemble import load_data, prepare_device
    from mlpkit.lr_finder import find_lr

    base = [f"data={dataset}", f"trainer.seed={seed}", f"trainer.max_epochs={epochs}", "trainer.progress=false",
            "trainer.device=cpu"]
    cfg = run_config(base)
    data = load_data(cfg, prepare_device(cfg))
    grid = {lr: score_of([*base, f"optimizer.lr={lr}"], data) for lr in GRID}
    rules = {}
    for rule in RULES:
        suggestion = find_lr(run_config([*base, f"lr_find.rule={rule}"]), data).suggestion
        rules[rule] = {"lr": suggestion, "score": score_of([*base, f"optimizer.lr={suggestion}"], data)}
    return {"dataset": dataset, "seed": seed, "grid": {str(lr): score for lr, score in grid.items()}, "rules": rules}


def table(results: list[dict]) -> str:
    lines = ["| data set | seeds | grid's best (lr) | rule | suggested lr | score | shortfall from the grid's best |",
             "|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(result["dataset"] for result in results):
        rows = [result for result in results if result["dataset"] == dataset]
        best = [max(row["grid"].values()) for row in rows]
        best_lrs = [max(row["grid"], key=row["grid"].get) for row in rows]
        for rule in RULES:
            scores = [row["rules"][rule]["score"] for row in rows]
            lrs = [row["rules"][rule]["lr"] for row in rows]
            shortfall = [b - s for b, s in zip(best, scores)]
            lines.append(f"| {dataset} | {len(rows)} | {statistics.mean(best):.4f} ({', '.join(best_lrs)}) | {rule} | "
                         f"{', '.join(f'{lr:.2g}' for lr in lrs)} | {statistics.mean(scores):.4f} | "
                         f"mean {statistics.mean(shortfall):+.4f}, worst {max(shortfall):+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["digits", "breast_cancer"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write every score here")
    args = parser.parse_args(argv)
    results = [measure(dataset, seed, args.epochs) for dataset in args.data for seed in args.seeds]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()

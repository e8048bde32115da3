"""Check the gradient verdicts on a grid of networks whose health is known, and print how they fare.

    python scripts/calibrate_verdicts.py                 # the whole grid, seeds 0-2 (a few minutes)
    python scripts/calibrate_verdicts.py --quick         # a small subset (the test suite runs it)
    python scripts/calibrate_verdicts.py --seeds 0 1 2 3 4 --output calibration.json

Each case trains as `python train.py` would at the default diagnostics settings (3 epochs unless the
case says otherwise) and is labelled from its construction (a deep sigmoid stack vanishes, ReLU at
Adam lr 0.1 dies, ...). The raw figure behind each verdict is recorded from the run's own measured
steps, independent of the verdicts:

  vanishing   the median over measured steps of ||g||/||W|| of the first layer over the last's
  exploding   infinite when the loss or a gradient became non-finite, else the largest total gradient
              norm over the largest of the first five measured steps
  dead        the hidden layers' mean share of ReLU units that output 0 for the whole batch, at the end
  saturated   the hidden layers' mean derivative f'/max f' (sigmoid, tanh), at the end
              (neither for a run that stopped on a non-finite loss: its last step says nothing)

The script prints a confusion table (each verdict kind against the cases labelled with it) and, per
kind, the margin between the threshold and the nearest case on each side (the healthiest "bad" case
and the worst "good" one): a margin of 2x or more means the threshold does not sit on a knife edge.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from mlpkit.api import run_config  # noqa: E402
from mlpkit.assemble import assemble  # noqa: E402
from mlpkit.data import build_data  # noqa: E402
from mlpkit.errors import TrainingStopped  # noqa: E402
from mlpkit.verdicts import KINDS, Thresholds  # noqa: E402

DEEP = [64] * 8


@dataclass(frozen=True)
class Case:
    """One network and its training settings, with the verdicts it must (and only those) get."""

    name: str
    expected: tuple[str, ...]
    activation: str = "relu"
    hidden_sizes: tuple[int, ...] = (128, 64)
    init: str = "default"
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 64
    data: str = "digits"
    epochs: int = 3
    options: dict = field(default_factory=dict, hash=False)


def grid() -> list[Case]:
    """Known-good and known-bad networks: depths 2 to 12, widths 16 to 256, Adam and SGD, three data sets."""
    cases = []
    for depth in (2, 4, 8, 12):
        for width in (16, 64, 256):
            sizes = (width,) * depth
            cases.append(Case(f"relu kaiming {depth}x{width}", (), "relu", sizes, "kaiming_normal"))
            cases.append(Case(f"tanh {depth}x{width}", (), "tanh", sizes))
            if depth >= 8:
                cases.append(Case(f"sigmoid {depth}x{width}", ("vanishing",), "sigmoid", sizes))
    for batch in (32, 64, 128):
        cases += [
            Case(f"sigmoid 8x64 batch {batch}", ("vanishing",), "sigmoid", DEEP, batch_size=batch),
            Case(f"relu 8x64 Adam lr 0.1 batch {batch}", ("dead",), "relu", DEEP, lr=0.1, batch_size=batch),
            Case(f"tanh 8x64 Adam lr 0.1 batch {batch}", ("saturated",), "tanh", DEEP, lr=0.1, batch_size=batch),
            Case(f"tanh 8x64 Adam lr 1e-3 batch {batch}", (), "tanh", DEEP, batch_size=batch),
            Case(f"relu 1x64 batch {batch}", (), "relu", (64,), batch_size=batch),
        ]
    cases += [
        Case("relu 128-64 (the default run)", (), "relu"),
        Case("relu 128-64 SGD lr 0.1", (), "relu", optimizer="sgd", lr=0.1),
        Case("relu 8x64 kaiming SGD lr 0.05", (), "relu", DEEP, "kaiming_normal", optimizer="sgd", lr=0.05),
        Case("relu 128-64 SGD lr 1000", ("exploding",), "relu", optimizer="sgd", lr=1000.0),
        # tanh is bounded: at lr 1000 its units saturate and the gradient cannot blow up
        Case("tanh 128-64 SGD lr 1000", ("saturated",), "tanh", optimizer="sgd", lr=1000.0),
        Case("relu 2x64 Adam lr 0.1", ("dead",), "relu", (64, 64), lr=0.1),
        Case("tanh 2x64 Adam lr 0.1", ("saturated",), "tanh", (64, 64), lr=0.1),
        Case("sigmoid 12x32 SGD lr 0.1", ("vanishing",), "sigmoid", (32,) * 12, optimizer="sgd", lr=0.1),
        Case("relu 1 epoch batch 128", (), "relu", (128, 64), batch_size=128, epochs=1),
        # the default run length: healthy tanh networks saturate more late in training
        Case("tanh 8x64 20 epochs", (), "tanh", DEEP, epochs=20),
        Case("tanh 12x256 20 epochs", (), "tanh", (256,) * 12, epochs=20),
        Case("tanh 2x64 20 epochs", (), "tanh", (64, 64), epochs=20),
        Case("sigmoid 2x64 20 epochs", (), "sigmoid", (64, 64), epochs=20),
        Case("relu kaiming 8x64 20 epochs", (), "relu", DEEP, "kaiming_normal", epochs=20),
        Case("relu 128-64 20 epochs (the default run)", (), "relu", epochs=20),
        Case("relu 256-256 50 epochs (the benchmark's net)", (), "relu", (256, 256), epochs=50),
        Case("relu 12x16 kaiming 20 epochs", (), "relu", (16,) * 12, "kaiming_normal", epochs=20),
        Case("breast_cancer relu 128-64", (), "relu", data="breast_cancer"),
        Case("breast_cancer sigmoid 8x64", ("vanishing",), "sigmoid", DEEP, data="breast_cancer"),
        Case("breast_cancer tanh 4x64", (), "tanh", (64,) * 4, data="breast_cancer"),
        Case("spirals relu 128-64", (), "relu", data="spirals"),
        Case("spirals sigmoid 8x64", ("vanishing",), "sigmoid", DEEP, data="spirals"),
        Case("spirals relu 8x64 Adam lr 0.1", ("dead",), "relu", DEEP, lr=0.1, data="spirals"),
        Case("spirals tanh 8x64 Adam lr 0.1", ("saturated",), "tanh", DEEP, lr=0.1, data="spirals"),
    ]
    return cases


QUICK = ("sigmoid 8x64 batch 64", "relu kaiming 8x64", "relu 1x64 batch 64", "relu 8x64 Adam lr 0.1 batch 128",
         "tanh 8x64 Adam lr 0.1 batch 128", "tanh 8x64 Adam lr 1e-3 batch 64", "relu 128-64 SGD lr 1000")


class Recorder:
    """A logger that keeps every scalar the trainer writes: tag -> [values, in step order]."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[float]] = defaultdict(list)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalars[tag].append(value)

    def log_histogram(self, *args) -> None: ...

    def log_text(self, *args) -> None: ...

    def flush(self) -> None: ...


_DATA_CACHE: dict[str, object] = {}


def load(source: str):
    if source not in _DATA_CACHE:
        _DATA_CACHE[source] = build_data({"source": source, "val_fraction": 0.15, "test_fraction": 0.15})
    return _DATA_CACHE[source]


def case_config(case: Case, seed: int) -> list[str]:
    """The case as `python train.py` overrides (the data is loaded once per data set)."""
    overrides = [f"activation={case.activation}", f"model.hidden_sizes=[{','.join(map(str, case.hidden_sizes))}]",
                 f"model.init={case.init}", f"optimizer={case.optimizer}", f"optimizer.lr={case.lr}",
                 "optimizer.fused=null",  # torch's default kernel, as the grid was calibrated with
                 f"trainer.max_epochs={case.epochs}", f"trainer.batch_size={case.batch_size}", f"trainer.seed={seed}",
                 "trainer.device=cpu", "trainer.progress=false"]
    return overrides + (["optimizer.momentum=0"] if case.optimizer == "sgd" else [])  # plain SGD


def run_case(case: Case, seed: int) -> dict:
    """Train one case; its verdicts and the raw figures measured at its steps."""
    recorder = Recorder()
    parts = assemble(run_config(case_config(case, seed)), load(case.data), logger=recorder)
    trainer, model = parts.trainer, parts.model
    stopped = False
    try:
        result = trainer.fit()
        health = result["gradient_health"]
    except TrainingStopped:
        stopped, health = True, trainer.gradient_health()
    return {"case": case.name, "seed": seed, "expected": list(case.expected), "fired": sorted(health["verdicts"]),
            "judged": health["judged"], "stopped": stopped, "raw": raw_figures(recorder.scalars, model, stopped)}


def raw_figures(scalars: dict[str, list[float]], model, stopped: bool) -> dict[str, float]:
    names = list(model.linear_layers())
    first, last = scalars.get(f"grad_ratio/{names[0]}", []), scalars.get(f"grad_ratio/{names[-1]}", [])
    ratios = [a / b for a, b in zip(first, last) if b > 0 and math.isfinite(a / b)]
    totals = [math.sqrt(sum(scalars[f"grad_norm/{n}"][i] ** 2 for n in names))
              for i in range(len(scalars.get(f"grad_norm/{names[0]}", [])))]
    early = max(totals[:Thresholds().patience], default=math.nan)

    def mean_at_end(measure: str) -> float:
        values = [series[-1] for tag, series in scalars.items() if tag.startswith(f"{measure}/") and series]
        return math.nan if stopped or not values else statistics.mean(values)

    return {
        "vanishing": statistics.median(ratios) if ratios else math.nan,
        "exploding": math.inf if stopped or not all(map(math.isfinite, totals))
        else (max(totals) / early if early > 0 else math.nan),
        "dead": mean_at_end("dead_frac"),
        "saturated": mean_at_end("derivative"),
    }


def confusion(results: list[dict]) -> list[list[str]]:
    """Rows: verdict kinds; columns: runs labelled with that kind that got it / missed it, and runs
    not labelled with it that got it anyway (false alarms) / rightly did not."""
    rows = []
    for kind in KINDS:
        labelled = [r for r in results if kind in r["expected"]]
        others = [r for r in results if kind not in r["expected"]]
        rows.append([kind, str(sum(kind in r["fired"] for r in labelled)), str(sum(kind not in r["fired"] for r in labelled)),
                     str(sum(kind in r["fired"] for r in others)), str(sum(kind not in r["fired"] for r in others))])
    return rows


def margins(results: list[dict], thresholds: Thresholds) -> list[list[str]]:
    """Per kind: the threshold, the healthiest bad case, the worst good case, and both margins."""
    limits = {"vanishing": (thresholds.vanishing_ratio, "below"), "exploding": (thresholds.exploding_growth, "above"),
              "dead": (thresholds.dead_fraction, "above"), "saturated": (thresholds.saturated_derivative, "below")}
    rows = []
    for kind, (limit, side) in limits.items():
        bad = [r["raw"][kind] for r in results if kind in r["expected"] and not math.isnan(r["raw"][kind])]
        # dead and saturated units vanish the gradient too; that verdict names the cause instead
        causes = {"dead", "saturated"} if kind == "vanishing" else set()
        good = [r["raw"][kind] for r in results if kind not in r["expected"] and not causes & set(r["expected"])
                and not math.isnan(r["raw"][kind])]
        if side == "below":  # bad cases sit below the threshold
            worst_bad, worst_good = max(bad, default=math.nan), min(good, default=math.nan)
            bad_margin, good_margin = limit / worst_bad, worst_good / limit
        else:
            worst_bad, worst_good = min(bad, default=math.nan), max(good, default=math.nan)
            bad_margin, good_margin = worst_bad / limit, limit / worst_good if worst_good > 0 else math.inf
        rows.append([kind, f"{side} {limit:g}", f"{worst_bad:.3g}", f"{bad_margin:.3g}x", f"{worst_good:.3g}",
                     f"{good_margin:.3g}x"])
    return rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def wrong(results: list[dict]) -> list[dict]:
    """Runs whose verdicts are not exactly the expected ones."""
    return [r for r in results if sorted(r["expected"]) != r["fired"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the small subset the test suite runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", type=Path, help="also write every run's figures to this JSON file")
    args = parser.parse_args(argv)
    logging.getLogger("mlpkit").setLevel(logging.ERROR)  # the verdict lines of a hundred runs
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give
    cases = [c for c in grid() if not args.quick or c.name in QUICK]
    results = [run_case(case, seed) for case in cases for seed in args.seeds]
    print(f"{len(results)} runs: {len(cases)} cases x seeds {', '.join(map(str, args.seeds))}\n")
    print(markdown(["verdict", "bad cases: fired", "missed", "good cases: fired", "rightly silent"],
                   confusion(results)))
    print()
    print(markdown(["verdict", "threshold", "healthiest bad case", "margin", "worst good case", "margin"],
                   margins(results, Thresholds())))
    mistakes = wrong(results)
    print(f"\n{len(results) - len(mistakes)} of {len(results)} runs got exactly the expected verdicts")
    for r in mistakes:
        print(f"  {r['case']} seed {r['seed']}: expected {r['expected'] or 'none'}, got {r['fired'] or 'none'} "
              f"(raw {', '.join(f'{k} {v:.3g}' for k, v in r['raw'].items())})")
    if args.output:
        args.output.write_text(json.dumps(results, indent=1, default=str))
    return 0 if not mistakes else 1


if __name__ == "__main__":
    sys.exit(main())

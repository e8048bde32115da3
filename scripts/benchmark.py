"""Samples per second of mlpkit's trainer against a plain PyTorch loop, measured in the same run.

    python scripts/benchmark.py                          # digits and mnist on the CPU
    python scripts/benchmark.py --workloads mnist --device cuda --rounds 5 --output bench.json

Each workload trains the same model on the same tensors with the same optimizer several ways,
alternating them round by round so that a noisy machine slows every way alike:

  plain            a hand-written loop: batches by index, zero_grad(set_to_none=True), no logging
  mlpkit           mlpkit's Trainer as a run uses it: TensorBoard logging and gradient diagnostics
                   at the default interval, checkpoints every epoch, validation every epoch
  mlpkit_nodiag    the same Trainer without the gradient monitor (loss and metrics only)
  lightning        PyTorch Lightning's Trainer with a DataLoader, where lightning is installed

Samples per second count the training steps only (validation and checkpoint time excluded for
every way; the `end_to_end` column includes them for mlpkit). Ratios are against `plain`.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlpkit.data import Data, Split  # noqa: E402
from mlpkit.diagnostics import GradientMonitor  # noqa: E402
from mlpkit.model import build_model  # noqa: E402
from mlpkit.objective import build_objective  # noqa: E402
from mlpkit.tensorboard import TensorBoardLogger  # noqa: E402
from mlpkit.trainer import Trainer  # noqa: E402

DEFAULT_LOG_EVERY = 50  # configs/trainer/default.yaml's trainer.log_every_n_steps
WORKLOADS = {
    # name: (features, hidden sizes, classes, training samples, batch size, epochs per round)
    "digits": (64, [256, 256], 10, None, 64, 15),
    "mnist": (784, [512, 512], 10, 60_000, 256, 1),
}


def make_data(workload: str, device: torch.device) -> Data:
    features, _, classes, samples, _, _ = WORKLOADS[workload]
    if workload == "digits":  # the real bundled set
        from mlpkit.data import build_data

        return build_data({"source": "digits", "val_fraction": 0.15, "test_fraction": 0.15}, device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples + 2000, features, generator=generator)
    y = torch.randint(0, classes, (samples + 2000,), generator=generator)
    split = lambda a, b: Split(x[a:b].to(device), y[a:b].to(device))  # noqa: E731
    return Data(workload, "multiclass", split(0, samples), split(samples, samples + 1000),
                split(samples + 1000, samples + 2000), [f"f{i}" for i in range(features)],
                [str(c) for c in range(classes)], np.zeros(features), np.ones(features), device=device)


def fresh_model(data: Data, hidden_sizes: list[int], device: torch.device):
    torch.manual_seed(0)
    objective = build_objective("softmax", "ce", data.task, data.name, data.n_classes)
    model = build_model(data.in_features, objective.out_features, hidden_sizes, "relu", {}, "softmax").to(device)
    return model, objective, torch.optim.Adam(model.parameters(), lr=1e-3)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_plain(data: Data, hidden_sizes, batch_size: int, epochs: int, device) -> dict:
    model, objective, optimizer = fresh_model(data, hidden_sizes, device)
    x, y, n = data.train.x, data.train.y, len(data.train)
    generator = torch.Generator().manual_seed(0)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(model.logits(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"samples_per_second": n * epochs / seconds}


def run_mlpkit(data: Data, hidden_sizes, batch_size: int, epochs: int, device, diagnostics: bool) -> dict:
    model, objective, optimizer = fresh_model(data, hidden_sizes, device)
    with tempfile.TemporaryDirectory() as run_dir:
        logger = TensorBoardLogger(run_dir)
        trainer = Trainer(model, objective, optimizer, data, max_epochs=epochs, batch_size=batch_size,
                          seed=0, log_every_n_steps=DEFAULT_LOG_EVERY, logger=logger,
                          checkpoint_dir=Path(run_dir) / "checkpoints")
        if diagnostics:
            trainer.monitor = GradientMonitor(model, "relu", logger, None, every_n_steps=DEFAULT_LOG_EVERY)
        synchronize(device)
        started = time.perf_counter()
        result = trainer.fit()
        synchronize(device)
        end_to_end = time.perf_counter() - started
        logger.close()
    samples = len(data.train) * epochs
    return {"samples_per_second": samples / result["train_seconds"], "end_to_end": samples / end_to_end}


def run_lightning(data: Data, hidden_sizes, batch_size: int, epochs: int, device) -> dict | None:
    try:
        import lightning as L  # noqa: N812 - lightning's own convention
    except ImportError:
        return None
    model, objective, optimizer = fresh_model(data, hidden_sizes, device)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.model.logits(batch[0]), batch[1])

        def configure_optimizers(self):
            return optimizer

    dataset = torch.utils.data.TensorDataset(data.train.x.cpu(), data.train.y.cpu())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    trainer = L.Trainer(max_epochs=epochs, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    started = time.perf_counter()
    trainer.fit(Module(), loader)
    return {"samples_per_second": len(data.train) * epochs / (time.perf_counter() - started)}


def benchmark(workload: str, device: torch.device, rounds: int) -> dict:
    _, hidden_sizes, _, _, batch_size, epochs = WORKLOADS[workload]
    data = make_data(workload, device)
    ways = {
        "plain": lambda: run_plain(data, hidden_sizes, batch_size, epochs, device),
        "mlpkit": lambda: run_mlpkit(data, hidden_sizes, batch_size, epochs, device, diagnostics=True),
        "mlpkit_nodiag": lambda: run_mlpkit(data, hidden_sizes, batch_size, epochs, device, diagnostics=False),
        "lightning": lambda: run_lightning(data, hidden_sizes, batch_size, epochs, device),
    }
    for run in ways.values():  # warm-up: first-call costs (allocations, lazy imports) are not measured
        run()
    measured: dict[str, list[dict]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            result = run()
            if result is not None:
                measured[name].append(result)
    summary = {}
    for name, results in measured.items():
        if results:
            summary[name] = {key: statistics.median(r[key] for r in results) for key in results[0]}
    plain = summary["plain"]["samples_per_second"]
    for entry in summary.values():
        entry["ratio_to_plain"] = entry["samples_per_second"] / plain
    if "mlpkit_nodiag" in summary:
        nodiag = summary["mlpkit_nodiag"]["samples_per_second"]
        summary["mlpkit"]["diagnostics_cost"] = 1 - summary["mlpkit"]["samples_per_second"] / nodiag
    return {"workload": workload, "hidden_sizes": hidden_sizes, "batch_size": batch_size,
            "samples": len(data.train), "epochs_per_round": epochs, "rounds": rounds, "ways": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"},
              "results": []}
    for workload in args.workloads:
        result = benchmark(workload, device, args.rounds)
        report["results"].append(result)
        print(f"\n{workload}: {result['hidden_sizes']} batch {result['batch_size']}, "
              f"{result['samples']} samples, median of {args.rounds} rounds on {device}")
        print(f"  {'way':<15}{'samples/s':>12}{'ratio':>8}  notes")
        for name, entry in result["ways"].items():
            notes = []
            if "end_to_end" in entry:
                notes.append(f"end to end {entry['end_to_end']:.0f}/s with eval+checkpoints")
            if "diagnostics_cost" in entry:
                notes.append(f"diagnostics cost {entry['diagnostics_cost']:+.1%}")
            print(f"  {name:<15}{entry['samples_per_second']:>12.0f}{entry['ratio_to_plain']:>8.3f}  "
                  + "; ".join(notes))
    peak_host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["peak_host_mib"] = peak_host
    print(f"\npeak host memory {peak_host:.0f} MiB", end="")
    if device.type == "cuda":
        report["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
        print(f", peak device memory {report['peak_device_mib']:.0f} MiB", end="")
    print()
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

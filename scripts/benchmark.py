"""Samples per second of mlpkit's trainer against a plain PyTorch loop, measured in the same run.

    python scripts/benchmark.py                          # digits and mnist on the CPU
    python scripts/benchmark.py --workloads mnist wide --device cuda --rounds 5 --output bench.json
    python scripts/benchmark.py --startup                # also: start-up time of a zero-epoch run
    python scripts/benchmark.py --workloads digits --trackers  # also: tensorboard+csv+mlflow against tensorboard
    python scripts/benchmark.py --end-to-end --rounds 7  # whole commands: `python train.py` against a plain script
    python scripts/benchmark.py --data --stream          # data.stream=true: peak memory by table size, throughput

Each workload trains the same model on the same tensors several ways, alternating them round by
round (each round starting one way later) so that a noisy machine slows every way alike:

  plain               a hand-written loop at its best settings: batches by index,
                      zero_grad(set_to_none=True), no logging, and the Adam kernel a run's default
                      optimizer.fused=auto picks (torch's fused kernel on CPU and CUDA): like for like
  plain_unfused       the same loop with torch's default Adam kernel (the plain loop's defaults)
  plain_logged        plain, logging what a hand-written loop logs to watch its gradients (the
                      --end-to-end plain script's loss and per-layer gradient norms, one
                      add_scalar each) at mlpkit's default interval: what that interval costs by hand
  mlpkit              mlpkit's Trainer as a run uses it: TensorBoard logging and gradient diagnostics
                      at the default interval, validation every epoch, checkpoints at the default
                      cadence (after the first and last epochs, others at least 10 s apart; an
                      improving epoch's state is kept in memory for best.pt), and the default optimizer.fused=auto (torch's fused Adam kernel on CPU and
                      CUDA); it runs right before or after plain, each first in turn
  mlpkit_unfused      the same, with torch's default Adam kernel (compare it with plain_unfused)
  mlpkit_nodiag       mlpkit_unfused without the gradient monitor (loss and metrics only)
  mlpkit_trackers     with --trackers: mlpkit logging to TensorBoard, a CSV file and MLflow (its SQLite
                      store beside the run) at once: what the trackers cost (against mlpkit)
  mlpkit_compiled     trainer.compile=true (with --compile on the CPU; always on CUDA)
  mlpkit_cuda_graphs  trainer.cuda_graphs=true (CUDA only)
  lightning           PyTorch Lightning's Trainer with a DataLoader, where lightning is installed

Samples per second count the training steps only (validation and checkpoint time excluded for
every way; the `end_to_end` column includes them for mlpkit). Ratios are paired: each round's
figure against the same round's `plain`, then the median over rounds (the `rounds` column shows
their lowest and highest), so a slow spell of a noisy machine cancels out. The
`wide` workload runs in bf16-mixed precision on CUDA only, and also reports model FLOP/s
(6 x parameters x samples/s) against a bf16 matrix multiply timed in the same run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlpkit.acceleration import autocast, resolve_fused, set_matmul_precision  # noqa: E402
from mlpkit.api import run_config  # noqa: E402
from mlpkit.assemble import assemble  # noqa: E402
from mlpkit.callbacks import Callback  # noqa: E402
from mlpkit.data import Data, Split  # noqa: E402
from mlpkit.loggers import build_loggers  # noqa: E402
from mlpkit.model import build_model, count_parameters  # noqa: E402
from mlpkit.objective import build_objective  # noqa: E402
from mlpkit.rundir import CHECKPOINT_DIR  # noqa: E402
from mlpkit.settings import log_interval  # noqa: E402
from mlpkit.tensorboard import TensorBoardLogger  # noqa: E402

DEFAULT_LOG_EVERY = "auto"  # configs/trainer/default.yaml's trainer.log_every_n_steps


@dataclass(frozen=True)
class Workload:
    features: int
    hidden_sizes: list[int]
    classes: int
    samples: int | None  # None: the real digits set
    batch_size: int
    epochs: int  # per round
    precision: str = "32"
    cuda_only: bool = False


WORKLOADS = {
    "digits": Workload(64, [256, 256], 10, None, 64, 50),  # 1000 steps of about 1 ms a round on 2 CPU cores
    "mnist": Workload(784, [512, 512], 10, 60_000, 256, 1),
    "wide": Workload(784, [4096, 4096, 4096], 10, 262_144, 4096, 2, "bf16-mixed", cuda_only=True),
}


def make_data(name: str, workload: Workload, device: torch.device) -> Data:
    if workload.samples is None:  # the real bundled digits set
        from mlpkit.data import build_data

        return build_data({"source": "digits", "val_fraction": 0.15, "test_fraction": 0.15}, device)
    features, classes, samples = workload.features, workload.classes, workload.samples
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples + 2000, features, generator=generator)
    y = torch.randint(0, classes, (samples + 2000,), generator=generator)
    split = lambda a, b: Split(x[a:b].to(device), y[a:b].to(device))  # noqa: E731
    return Data(name, "multiclass", split(0, samples), split(samples, samples + 1000),
                split(samples + 1000, samples + 2000), [f"f{i}" for i in range(features)],
                [str(c) for c in range(classes)], np.zeros(features), np.ones(features), device=device)


def fresh_model(data: Data, workload: Workload, device: torch.device, fused: bool | None = None):
    """The same model and starting weights every time; Adam with torch's default kernel unless ``fused``."""
    torch.manual_seed(0)
    objective = build_objective("softmax", "ce", data.task, data.name, data.n_classes)
    model = build_model(data.in_features, objective.out_features, workload.hidden_sizes, "relu", {},
                        "softmax").to(device)
    return model, objective, torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_plain(data: Data, workload: Workload, device: torch.device, fused: bool | None = None,
              logged: bool = False) -> dict:
    """The hand-written loop; ``logged``: with the --end-to-end plain script's logging (loss and each
    weight's gradient norm, an add_scalar each) every mlpkit default interval."""
    model, objective, optimizer = fresh_model(data, workload, device, fused)
    x, y, n, batch_size = data.train.x, data.train.y, len(data.train), workload.batch_size
    log_every = log_interval(DEFAULT_LOG_EVERY, workload.epochs * -(-n // batch_size)) if logged else 0
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as log_dir:
        if logged:
            from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir) if logged else None
        synchronize(device)
        started, step = time.perf_counter(), 0
        for _ in range(workload.epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                with autocast(device, workload.precision):
                    loss = torch.nn.functional.cross_entropy(model.logits(x[rows]), y[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if writer is not None and step % log_every == 0:
                    writer.add_scalar("loss/train", loss.item(), step)
                    for name, parameter in model.named_parameters():
                        if name.endswith("weight"):
                            writer.add_scalar(f"grad_norm/{name}", parameter.grad.norm().item(), step)
                optimizer.step()
                step += 1
        synchronize(device)
        seconds = time.perf_counter() - started
        if writer is not None:
            writer.close()
    return {"samples_per_second": n * workload.epochs / seconds}


class StepTimer(Callback):
    """Times each step of the trainer (on the CPU, where a step's wall time is its cost). What a
    logged step costs over the other steps of the same run is a difference between steps taken
    moments apart, so it holds when a shared machine slows a whole run by 20% (which moves
    throughputs of whole runs by more than the diagnostics cost)."""

    def __init__(self) -> None:
        self.step_seconds: dict[bool, list[float]] = {True: [], False: []}  # logged step or not -> times
        self.started, self.logged = 0.0, False

    def on_train_batch_start(self, trainer) -> None:
        self.logged, self.started = trainer.step % trainer.log_every_n_steps == 0, time.perf_counter()

    def on_train_batch_end(self, trainer, loss) -> None:
        self.step_seconds[self.logged].append(time.perf_counter() - self.started)

    def medians(self) -> dict:
        other = statistics.median(self.step_seconds[False] or self.step_seconds[True])
        return {"logged_step_extra_seconds": trimmed_mean(self.step_seconds[True]) - other,
                "other_step_seconds": other, "logged_steps": len(self.step_seconds[True]),
                "steps": len(self.step_seconds[True]) + len(self.step_seconds[False])}


def trimmed_mean(values: list[float], cut: float = 0.1) -> float:
    """The mean without the lowest and highest ``cut`` of the values: logged steps with and without
    the statistics take two different times, so their median would be one or the other."""
    values = sorted(values)
    drop = int(len(values) * cut)
    return statistics.mean(values[drop:len(values) - drop])


def mlpkit_config(workload: Workload, fused: bool | None, compile_step: bool, cuda_graphs: bool,
                  loggers: tuple[str, ...] = ("tensorboard",)) -> DictConfig:
    """The config of fresh_model's run as `python train.py` takes it (the data is the benchmark's own)."""
    return run_config([f"logger=[{','.join(loggers)}]",
        f"model.hidden_sizes=[{','.join(map(str, workload.hidden_sizes))}]", "activation=relu", "head=softmax",
        "loss=ce", "optimizer=adam", "optimizer.lr=0.001", f"optimizer.fused={'null' if fused is None else fused}",
        f"trainer.max_epochs={workload.epochs}", f"trainer.batch_size={workload.batch_size}", "trainer.seed=0",
        f"trainer.log_every_n_steps={DEFAULT_LOG_EVERY}", f"trainer.precision={workload.precision}",
        f"trainer.compile={compile_step}", f"trainer.cuda_graphs={cuda_graphs}", "trainer.progress=false"])


def run_mlpkit(data: Data, workload: Workload, device: torch.device, *, diagnostics: bool = True,
               fused: bool | None = None, compile_step: bool = False, cuda_graphs: bool = False,
               timed: bool = False, loggers: tuple[str, ...] = ("tensorboard",)) -> dict:
    """A run as mlpkit.assemble builds it, on the benchmark's data; ``timed`` (on the CPU): with a
    StepTimer, for the diagnostics' cost from step times (its clock reads add about 1 us a step, so
    the ways compared with plain run untimed); ``loggers``: logger=[...] (the trackers' own stores
    in the run's temporary directory)."""
    cfg = mlpkit_config(workload, fused, compile_step, cuda_graphs, loggers)
    timer = StepTimer() if timed and device.type == "cpu" else None
    with tempfile.TemporaryDirectory() as run_dir:
        logger = TensorBoardLogger(run_dir) if loggers == ("tensorboard",) else build_loggers(cfg, Path(run_dir))
        trainer = assemble(cfg, data, checkpoint_dir=Path(run_dir) / CHECKPOINT_DIR, logger=logger,
                           callbacks=[timer] if timer is not None else [], diagnostics=diagnostics).trainer
        synchronize(device)
        started = time.perf_counter()
        result = trainer.fit()
        synchronize(device)
        end_to_end = time.perf_counter() - started
        logger.close()
    samples = result["samples_per_second"] * result["train_seconds"]  # a compiled step drops partial batches
    timed = timer.medians() if timer is not None else {}
    return {"samples_per_second": result["samples_per_second"], "end_to_end": samples / end_to_end, **timed}


def run_lightning(data: Data, workload: Workload, device: torch.device) -> dict | None:
    try:
        import lightning as L  # noqa: N812 - lightning's own convention
    except ImportError:
        return None
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # its per-fit banner, every round
    model, objective, optimizer = fresh_model(data, workload, device)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.model.logits(batch[0]), batch[1])

        def configure_optimizers(self):
            return optimizer

    dataset = torch.utils.data.TensorDataset(data.train.x.cpu(), data.train.y.cpu())
    loader = torch.utils.data.DataLoader(dataset, batch_size=workload.batch_size, shuffle=True,
                                         pin_memory=device.type == "cuda")
    trainer = L.Trainer(max_epochs=workload.epochs, accelerator="gpu" if device.type == "cuda" else "cpu",
                        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, precision="bf16-mixed" if workload.precision != "32" else "32")
    started = time.perf_counter()
    trainer.fit(Module(), loader)
    return {"samples_per_second": len(data.train) * workload.epochs / (time.perf_counter() - started)}


def ways_for(data: Data, workload: Workload, device: torch.device, compile_on_cpu: bool,
             trackers: bool = False) -> dict:
    default_fused = resolve_fused("auto", device)  # what optimizer.fused=auto gives a run on this device
    ways = {
        "plain": lambda: run_plain(data, workload, device, fused=default_fused),  # like for like: its best
        "plain_unfused": lambda: run_plain(data, workload, device),
        "plain_logged": lambda: run_plain(data, workload, device, fused=default_fused, logged=True),
        "mlpkit": lambda: run_mlpkit(data, workload, device, fused=default_fused),
        "mlpkit_unfused": lambda: run_mlpkit(data, workload, device, timed=True),
        "mlpkit_nodiag": lambda: run_mlpkit(data, workload, device, diagnostics=False, timed=True),
    }
    if device.type == "cuda" or compile_on_cpu:
        ways["mlpkit_compiled"] = lambda: run_mlpkit(data, workload, device, fused=default_fused,
                                                     compile_step=True)
    if device.type == "cuda":
        ways["mlpkit_cuda_graphs"] = lambda: run_mlpkit(data, workload, device, fused=default_fused,
                                                        compile_step=True, cuda_graphs=True)
    if trackers and importlib.util.find_spec("mlflow") is not None:  # --trackers, with the extra mlpkit[mlflow]
        ways[TRACKERS_WAY] = lambda: run_mlpkit(data, workload, device, fused=default_fused, loggers=TRACKERS)
    ways["lightning"] = lambda: run_lightning(data, workload, device)
    return ways


DIAGNOSTICS_PAIR = ("mlpkit_unfused", "mlpkit_nodiag")  # the same trainer with and without the monitor
TRACKERS_WAY, TRACKERS = "mlpkit_trackers", ("tensorboard", "csv", "mlflow")  # mlpkit with every local logger
# Ways whose ratios are the point run back to back, each first in turn: like for like, the trackers' cost
# (mlpkit_trackers against mlpkit) and the diagnostics' cost.
PAIRS = (("mlpkit", "plain", TRACKERS_WAY), DIAGNOSTICS_PAIR)


def summarize(measured: dict[str, list[dict]]) -> dict:
    """Medians over rounds. Ratios are paired: each round's way against the same round's plain loop,
    then the median of those, so a slow spell of the machine (which slows a whole round) cancels."""
    summary = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for name, results in measured.items() if results}
    plain = [r["samples_per_second"] for r in measured["plain"]]
    for name, entry in summary.items():
        ratios = [r["samples_per_second"] / p for r, p in zip(measured[name], plain)]
        entry["ratio_to_plain"] = statistics.median(ratios)
        entry["ratio_range"] = [min(ratios), max(ratios)]
    pairs = list(zip(*(measured[way] for way in DIAGNOSTICS_PAIR)))
    costs = [1 - with_monitor["samples_per_second"] / without["samples_per_second"] for with_monitor, without in pairs]
    summary[DIAGNOSTICS_PAIR[0]]["diagnostics_cost"] = statistics.median(costs)
    if measured.get(TRACKERS_WAY):
        summary[TRACKERS_WAY]["trackers_cost"] = statistics.median(
            1 - tracked["samples_per_second"] / alone["samples_per_second"]
            for tracked, alone in zip(measured[TRACKERS_WAY], measured["mlpkit"]))
    if pairs and "logged_step_extra_seconds" in pairs[0][0]:
        summary[DIAGNOSTICS_PAIR[0]]["diagnostics_cost_per_step"] = statistics.median(map(step_cost, pairs))
    return summary


def step_cost(pair: tuple[dict, dict]) -> float:
    """The diagnostics' cost from step times: what they add to a logged step (over the same run's
    other steps, with the monitor, less the same without it), over the time all steps take."""
    with_monitor, without = pair
    added = (with_monitor["logged_step_extra_seconds"] - without["logged_step_extra_seconds"]) * without["logged_steps"]
    return added / (without["other_step_seconds"] * without["steps"]
                    + without["logged_step_extra_seconds"] * without["logged_steps"])


def bf16_matmul_peak(device: torch.device, size: int = 8192, repeats: int = 50) -> float:
    """FLOP/s of a large bf16 matrix multiply on this device, timed with CUDA events."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1000)


def benchmark(name: str, device: torch.device, rounds: int, compile_on_cpu: bool = False,
              epochs: int | None = None, trackers: bool = False) -> dict:
    workload = WORKLOADS[name] if epochs is None else replace(WORKLOADS[name], epochs=epochs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    data = make_data(name, workload, device)
    ways = ways_for(data, workload, device, compile_on_cpu, trackers)
    for run in ways.values():  # warm-up: first-call costs (allocations, lazy imports, compiling) are not measured
        run()
    measured: dict[str, list[dict]] = {way: [] for way in ways}
    # The PAIRS run back to back, each first in turn: their ratios compare runs moments apart.
    firsts, seconds = {pair[0]: pair for pair in PAIRS}, {way for pair in PAIRS for way in pair[1:]}
    units = [tuple(w for w in firsts.get(way, (way,)) if w in ways) for way in ways if way not in seconds]
    for round_index in range(rounds):
        # Each round starts one way later, so no way always follows the same one (what ran before
        # leaves the allocator, caches and the CPU's clock in a state that favours or slows the next).
        shift = round_index % len(units)
        for unit in units[shift:] + units[:shift]:
            for way in unit if round_index % 2 == 0 else unit[::-1]:
                result = ways[way]()
                if result is not None:
                    measured[way].append(result)
    result = {"workload": name, "hidden_sizes": workload.hidden_sizes, "batch_size": workload.batch_size,
              "precision": workload.precision, "samples": len(data.train), "epochs_per_round": workload.epochs,
              "rounds": rounds, "ways": summarize(measured)}
    if device.type == "cuda":
        result["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if workload.precision == "bf16-mixed":
            parameters = count_parameters(fresh_model(data, workload, device)[0])
            peak = bf16_matmul_peak(device)
            result["bf16_matmul_peak_tflops"] = peak / 1e12
            for entry in result["ways"].values():
                entry["model_tflops"] = 6 * parameters * entry["samples_per_second"] / 1e12
                entry["share_of_matmul_peak"] = entry["model_tflops"] * 1e12 / peak
    return result


def startup_seconds(rounds: int) -> dict:
    """Wall time of a zero-epoch `python train.py` against `python -c "import torch"` (medians)."""
    commands = {
        "import_torch": [sys.executable, "-c", "import torch"],
        # what any training script pays: building a torch optimizer imports torch._dynamo
        "import_torch_and_adam": [sys.executable, "-c",
                                  "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"],
        "train_zero_epochs": [sys.executable, str(ROOT / "train.py"), "trainer.max_epochs=0",
                              "trainer.progress=false", "trainer.device=cpu"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(rounds):
            for name, command in commands.items():
                started = time.perf_counter()
                subprocess.run(command, cwd=directory, check=True, capture_output=True)
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    medians["train_minus_import_torch"] = medians["train_zero_epochs"] - medians["import_torch"]
    medians["train_minus_torch_and_adam"] = medians["train_zero_epochs"] - medians["import_torch_and_adam"]
    return medians


# --- end to end: whole commands, each a fresh process ----------------------------------------------
# What a user feels is the whole command. `python train.py` (digits, 20 epochs, everything a run
# writes) against the shortest plain script that does the same job; a zero-epoch run against
# `import torch` plus the model and its optimizer; --help and --cfg job against Hydra's own start-up.
PLAIN_SCRIPT = """\
import sys
import torch
from omegaconf import DictConfig
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.tensorboard import SummaryWriter

x, y = load_digits(return_X_y=True)
x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0)
mean, std = x_train.mean(0), x_train.std(0)
std[std == 0] = 1
tensor = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)
x_train, x_val, y_train, y_val = tensor(x_train), tensor(x_val), torch.tensor(y_train), torch.tensor(y_val)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # what optimizer.fused=auto picks on CPU
writer = SummaryWriter(sys.argv[1])
step = 0
for epoch in range(20):
    model.train()
    order = torch.randperm(len(x_train))
    for start in range(0, len(x_train), 64):
        rows = order[start:start + 64]
        loss = nn.functional.cross_entropy(model(x_train[rows]), y_train[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step % 50 == 0:
            writer.add_scalar("loss/train", loss.item(), step)
            for name, parameter in model.named_parameters():
                if name.endswith("weight"):
                    writer.add_scalar(f"grad_norm/{name}", parameter.grad.norm().item(), step)
        optimizer.step()
        step += 1
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
    writer.add_scalar("accuracy/val", accuracy, epoch)
    print(f"epoch {epoch + 1}/20 loss {loss.item():.4f} accuracy/val {accuracy:.4f}")
writer.close()
"""
TORCH_MODEL_OPTIMIZER = ("import torch; from torch import nn; model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), "
                         "nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)); "
                         "torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)")
HYDRA_APP = """\
import hydra
from omegaconf import OmegaConf

@hydra.main(version_base="1.3", config_path=None)
def app(cfg):
    print(OmegaConf.to_yaml(cfg))

app()
"""
# (what is timed, its baseline, the figure the issue sets: a ratio, or seconds over the baseline)
# "train" runs with the data cache (mlpkit/cache.py) that an earlier run filled, as every run after a
# machine's first does; "train_first_run" with an empty one, as the first does (each timed next to its
# own run of the plain script).
END_TO_END_PAIRS = [("train", "plain_script", "ratio"), ("train_first_run", "plain_script_again", "ratio"),
                    ("train_zero_epochs", "torch_model_optimizer", "over"),
                    ("train_help", "hydra_app_help", "over"), ("train_cfg_job", "hydra_app_cfg_job", "over")]


def end_to_end_commands(directory: Path) -> dict[str, list[str]]:
    (directory / "plain.py").write_text(PLAIN_SCRIPT)
    (directory / "hydra_app.py").write_text(HYDRA_APP)
    train, python = [sys.executable, str(ROOT / "train.py")], sys.executable
    return {
        "train": train,  # the default run, exactly as a user types it
        "train_first_run": train,  # the same, with an empty data cache (see end_to_end)
        "plain_script": [python, str(directory / "plain.py"), str(directory / "plain_events")],
        "plain_script_again": [python, str(directory / "plain.py"), str(directory / "plain_events")],
        "train_zero_epochs": [*train, "trainer.max_epochs=0"],
        "torch_model_optimizer": [python, "-c", TORCH_MODEL_OPTIMIZER],
        "train_help": [*train, "--help"],
        "hydra_app_help": [python, str(directory / "hydra_app.py"), "--help"],
        "train_cfg_job": [*train, "--cfg", "job"],
        "hydra_app_cfg_job": [python, str(directory / "hydra_app.py"), "--cfg", "job"],
        "python": [python, "-c", "pass"],
        "import_hydra": [python, "-c", "import hydra"],
    }


def end_to_end(rounds: int) -> dict:
    """Wall seconds of whole commands, each a fresh process started from an empty directory.

    Paired rounds: every round times every command once, each command right next to its baseline
    (which of the two goes first alternates by round, and each round starts one pair later), and
    each figure is the median over rounds of a command against its baseline of the same round, so a
    slow spell of a shared machine, which slows both of a pair, cancels out."""
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        commands = end_to_end_commands(Path(directory))
        pairs = [[timed, baseline] for timed, baseline, _ in END_TO_END_PAIRS] + [["python", "import_hydra"]]
        cache = Path(directory) / "cache"  # the data cache of these commands, not the user's
        for round_index in range(rounds + 1):  # round 0 warms the file cache and is not counted
            shift = round_index % len(pairs)
            order = [name for pair in pairs[shift:] + pairs[:shift] for name in pair[::1 - 2 * (round_index % 2)]]
            for name in order:
                empty = cache.with_name(f"empty_cache_{round_index}")  # a fresh one for each first run
                env = {**os.environ, "MLPKIT_CACHE_DIR": str(empty if name == "train_first_run" else cache)}
                started = time.perf_counter()
                result = subprocess.run(commands[name], cwd=directory, capture_output=True, text=True, env=env)
                seconds = time.perf_counter() - started
                if result.returncode != 0:
                    raise RuntimeError(f"{name} exited {result.returncode}: {result.stderr[-2000:]}")
                if round_index:
                    times.setdefault(name, []).append(seconds)
    return {"rounds": rounds, "median_seconds": {k: statistics.median(v) for k, v in times.items()},
            "seconds": times, "comparisons": compare_end_to_end(times)}


def compare_end_to_end(times: dict[str, list[float]]) -> dict[str, dict]:
    """Each END_TO_END_PAIRS command against its baseline of the same round (ratio and seconds
    over), then the median over rounds; ``median`` is the figure the issue sets a target for."""
    comparisons = {}
    for timed, baseline, kind in END_TO_END_PAIRS:
        ratios = [t / b for t, b in zip(times[timed], times[baseline])]
        over = [t - b for t, b in zip(times[timed], times[baseline])]
        paired = ratios if kind == "ratio" else over
        comparisons[f"{timed}_vs_{baseline}"] = {
            "kind": "ratio" if kind == "ratio" else "seconds_over", "median": statistics.median(paired),
            "range": [min(paired), max(paired)], "median_ratio": statistics.median(ratios),
            "median_seconds_over": statistics.median(over)}
    return comparisons


def print_end_to_end(report: dict) -> None:
    print(f"\nend to end, whole commands, median wall seconds of {report['rounds']} paired rounds:")
    for name, seconds in report["median_seconds"].items():
        print(f"  {name:<24}{seconds:>8.2f}")
    for name, entry in report["comparisons"].items():
        low, high = entry["range"]
        figure = "{:.3f}x" if entry["kind"] == "ratio" else "{:+.2f} s"
        print(f"  {name:<48}{figure.format(entry['median']):>10}  (rounds {figure.format(low)} to {figure.format(high)}; "
              f"ratio {entry['median_ratio']:.3f}x)")


def print_result(result: dict, device: torch.device) -> None:
    print(f"\n{result['workload']}: {result['hidden_sizes']} batch {result['batch_size']}, "
          f"{result['samples']} samples, {result['precision']}, {result['epochs_per_round']} epochs a round, "
          f"median of {result['rounds']} rounds on {device}")
    print(f"  {'way':<20}{'samples/s':>12}{'ratio':>8}{'rounds':>14}  notes")
    for name, entry in result["ways"].items():
        notes = []
        if "end_to_end" in entry:
            notes.append(f"end to end {entry['end_to_end']:.0f}/s with eval+checkpoints")
        if "trackers_cost" in entry:
            notes.append(f"tensorboard+csv+mlflow cost {entry['trackers_cost']:+.1%} against mlpkit")
        if "diagnostics_cost" in entry:
            notes.append(f"diagnostics cost {entry['diagnostics_cost']:+.1%}")
        if "diagnostics_cost_per_step" in entry:
            notes.append(f"from step times {entry['diagnostics_cost_per_step']:+.1%}")
        if "model_tflops" in entry:
            notes.append(f"{entry['model_tflops']:.0f} TFLOP/s, {entry['share_of_matmul_peak']:.0%} of matmul peak")
        low, high = entry["ratio_range"]
        print(f"  {name:<20}{entry['samples_per_second']:>12.0f}{entry['ratio_to_plain']:>8.3f}"
              f"{f'{low:.3f}-{high:.3f}':>14}  " + "; ".join(notes))
    if "peak_device_mib" in result:
        print(f"  peak device memory {result['peak_device_mib']:.0f} MiB", end="")
        if "bf16_matmul_peak_tflops" in result:
            print(f"; bf16 matmul peak {result['bf16_matmul_peak_tflops']:.0f} TFLOP/s", end="")
        print()


# --- --data: loading a table ------------------------------------------------------------------
DATA_CHILD = """
import json, resource, sys, time
import numpy as np, pyarrow.csv
sys.path.insert(0, {root!r})
from mlpkit.data.table import load_csv
from mlpkit.data import build_data
def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()
# A tiny table first: the libraries' one-time costs (lazy imports, thread pools) stay out of the figure.
pyarrow.csv.read_csv({warmup!r}); load_csv({warmup!r}, target="y")
build_data(dict(source="csv", path={warmup!r}, target="y", val_fraction=0.15, test_fraction=0.15))
before = rss()
start = time.perf_counter()
if {mode!r} == "pyarrow":
    table = pyarrow.csv.read_csv({path!r})
elif {mode!r} == "load":
    raw = load_csv({path!r}, target="y")
else:
    data = build_data(dict(source="csv", path={path!r}, target="y", val_fraction=0.15, test_fraction=0.15))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": seconds, "peak_bytes": peak - before}}))
"""


def data_benchmark(row_counts: list[int], rounds: int, columns: int = 50) -> dict:
    """Seconds and peak memory of loading an N x ``columns`` CSV (float features, 10 integer
    classes): pyarrow.csv.read_csv alone, mlpkit's table loader, and the whole build_data. Each
    measurement is a fresh child process (pyarrow's allocator is invisible to tracemalloc), its
    peak RSS above its RSS before the load; ways alternate round by round; medians are reported."""
    import statistics
    import subprocess
    import tempfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv

    root = str(Path(__file__).resolve().parents[1])
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for count in row_counts:
            path = str(Path(folder) / f"table_{count}.csv")
            generator = np.random.default_rng(0)
            arrays = {f"x{i}": generator.standard_normal(count).astype(np.float32) for i in range(columns - 1)}
            table = pa.table({**arrays, "y": generator.integers(0, 10, count)})
            pyarrow.csv.write_csv(table, path)
            warmup = str(Path(folder) / "warmup.csv")
            pyarrow.csv.write_csv(table.slice(0, 1000), warmup)
            del table, arrays
            final_bytes = count * (columns - 1) * 4 + count * 8  # float32 features + int64 classes
            measured: dict[str, list[dict]] = {"pyarrow": [], "load": [], "build_data": []}
            ways = list(measured)
            for round_index in range(rounds):
                for way in ways[round_index % len(ways):] + ways[:round_index % len(ways)]:
                    child = DATA_CHILD.format(root=root, mode=way, path=path, warmup=warmup)
                    output = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                                            check=True).stdout
                    measured[way].append(json.loads(output.strip().splitlines()[-1]))
            median = {way: {key: statistics.median(m[key] for m in runs) for key in ("seconds", "peak_bytes")}
                      for way, runs in measured.items()}
            result = {"rows": count, "columns": columns, "file_mib": Path(path).stat().st_size / 2**20,
                      "final_mib": final_bytes / 2**20, "rounds": rounds,
                      **{f"{way}_seconds": m["seconds"] for way, m in median.items()},
                      **{f"{way}_peak_mib": m["peak_bytes"] / 2**20 for way, m in median.items()},
                      "pyarrow_memory_ratio": median["pyarrow"]["peak_bytes"] / final_bytes,
                      "load_time_ratio": median["load"]["seconds"] / median["pyarrow"]["seconds"],
                      "load_memory_ratio": median["load"]["peak_bytes"] / final_bytes,
                      "build_data_memory_ratio": median["build_data"]["peak_bytes"] / final_bytes}
            results.append(result)
            print(f"{count:>9,} rows x {columns}: file {result['file_mib']:.0f} MiB, tensors "
                  f"{result['final_mib']:.0f} MiB | pyarrow.csv.read_csv {result['pyarrow_seconds']:.2f} s, "
                  f"load {result['load_seconds']:.2f} s ({result['load_time_ratio']:.2f}x), build_data "
                  f"{result['build_data_seconds']:.2f} s | peak above start: read_csv {result['pyarrow_peak_mib']:.0f} "
                  f"MiB, load "
                  f"{result['load_peak_mib']:.0f} MiB ({result['load_memory_ratio']:.2f}x the tensors), "
                  f"build_data {result['build_data_peak_mib']:.0f} MiB ({result['build_data_memory_ratio']:.2f}x)",
                  flush=True)
    return {"data": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["digits", "mnist"], choices=list(WORKLOADS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    parser.add_argument("--epochs", type=int, help="epochs per round (default: each workload's own)")
    parser.add_argument("--compile", action="store_true", help="also time trainer.compile=true on the CPU")
    parser.add_argument("--startup", action="store_true", help="also time a zero-epoch `python train.py`")
    parser.add_argument("--trackers", action="store_true",
                        help="also time mlpkit logging to tensorboard, csv and mlflow at once (mlpkit_trackers)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="instead: whole commands (python train.py, a zero-epoch run, --help, --cfg job) "
                             "against a plain PyTorch script and Hydra's own start-up")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument("--data", action="store_true", help="time loading CSV tables instead (see data_benchmark)")
    parser.add_argument("--stream", action="store_true",
                        help="with --data: peak memory and throughput of data.stream=true against the in-memory "
                             "path (scripts/benchmark_stream.py)")
    parser.add_argument("--data-rows", type=int, nargs="+",
                        help="table sizes for --data (rows; 50 columns; default 200000 1000000 2000000, "
                             "with --stream 1000000 20000000)")
    args = parser.parse_args()
    if args.stream and not args.data:
        parser.error("--stream measures tables: give it with --data")
    if args.data and args.stream:
        from benchmark_stream import stream_benchmark  # scripts/ is this script's own directory

        report = stream_benchmark(args.data_rows or [1_000_000, 20_000_000], args.rounds if args.rounds != 5 else 1)
        if args.output:
            args.output.write_text(json.dumps(report, indent=2))
        return
    if args.data:
        report = data_benchmark(args.data_rows or [200_000, 1_000_000, 2_000_000], args.rounds if args.rounds != 5 else 3)
        if args.output:
            args.output.write_text(json.dumps(report, indent=2))
        return
    for flag in ("rounds", "epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    device = torch.device(args.device)
    for name in args.workloads:
        if WORKLOADS[name].cuda_only and device.type != "cuda":
            parser.error(f"--workloads {name} runs on CUDA only (--device cuda); this run asked for {device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.end_to_end:
        report = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                              "threads": torch.get_num_threads()}, "end_to_end": end_to_end(args.rounds)}
        print_end_to_end(report["end_to_end"])
        if args.output:
            args.output.write_text(json.dumps(report, indent=2))
        return
    set_matmul_precision(device, tf32=True)  # trainer.tf32's default, for every way alike
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"},
              "results": []}
    for name in args.workloads:
        result = benchmark(name, device, args.rounds, compile_on_cpu=args.compile, epochs=args.epochs,
                           trackers=args.trackers)
        report["results"].append(result)
        print_result(result, device)
    if args.startup:
        report["startup_seconds"] = startup = startup_seconds(args.rounds)
        print("\nstart-up, median seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in startup.items()))
    report["peak_host_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak host memory {report['peak_host_mib']:.0f} MiB")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Shared helpers: compose configs like the CLI does, and run the real CLI in a temporary directory."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "configs"
FAST = ["trainer.max_epochs=1", "trainer.progress=false"]
TINY = ("trainer.max_epochs=2", "model.hidden_sizes=[16]", "trainer.progress=false")
IRIS = ROOT / "examples" / "iris.csv"


def compose_config(*overrides: str):
    """The config `python train.py <overrides>` would run with."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)


def run_cli(run_dir: Path, *overrides: str, args: tuple[str, ...] = (), env: dict | None = None,
            timeout: int = 180, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python train.py` for real, its run directory pinned to ``run_dir``."""
    flags = [o for o in overrides if o.startswith("-")]  # argparse wants -m before the overrides
    overrides = tuple(o for o in overrides if not o.startswith("-"))
    command = [sys.executable, str(ROOT / "train.py"), *flags, *args, f"hydra.run.dir={run_dir}",
               *overrides]
    inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(command, cwd=cwd or run_dir.parent, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def script(name: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python scripts/<name>.py <overrides>`` (evaluate, predict) from ``cwd``."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag TensorBoard would show for a run directory: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def ctrl_c_reaches_it() -> None:
    """preexec_fn for a child that a test interrupts: a shell starts background jobs (CI runners
    may too) with SIGINT ignored, and the child would inherit that; a terminal's child would not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs trained once per session, side by side: a bundled binary set whose classes have names
    (sigmoid head), and a regression on the user's own CSV file. Use ``runs``, not this."""
    base = tmp_path_factory.mktemp("trained_runs")
    commands = {
        "cancer": ("data=breast_cancer",),
        "iris": ("data=csv", f"data.path={IRIS}", "data.target=petal_width",
                 "data.features=[sepal_length,sepal_width,petal_length]"),
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        done = {name: pool.submit(run_cli, base / name, *overrides, *TINY)
                for name, overrides in commands.items()}
    for name, future in done.items():
        assert future.result().returncode == 0, f"{name}: {future.result().stderr}"
    return {name: base / name for name in commands}


@pytest.fixture(scope="module")
def runs(trained_runs, tmp_path_factory) -> dict[str, Path]:
    """The trained runs, copied afresh for each test module: evaluate writes evaluation.json and
    figures into a run directory, so one module's tests never see what another's wrote."""
    base = tmp_path_factory.mktemp("runs")
    return {name: Path(shutil.copytree(source, base / name)) for name, source in trained_runs.items()}

"""Shared helpers: compose configs like the CLI does, and run the real CLI in a temporary directory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "configs"
FAST = ["trainer.max_epochs=1", "trainer.progress=false"]


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

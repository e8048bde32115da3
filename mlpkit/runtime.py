"""What a run sets up in its process: seeds, torch's threads, whether a progress bar draws, and the
signals that ask it to stop. Used by the command line, the Python API and the estimators alike."""
from __future__ import annotations

import random
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any

from mlpkit.errors import TrainingStopped


def seed_everything(seed: int) -> None:
    import numpy as np  # here, not at the top: the CLI's --help imports this module
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def limit_threads(setting: int | str) -> None:
    """Jobs x threads <= cores when a launcher runs jobs side by side."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    from mlpkit.acceleration import torch_threads

    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    threads = torch_threads(setting, launcher)
    if threads is not None:
        torch.set_num_threads(threads)


def show_progress(setting: str | bool) -> bool:
    if str(setting) == "auto":  # a terminal, or a Jupyter notebook: its output is no tty, but tqdm.auto draws there
        return (sys.stdout.isatty() and sys.stderr.isatty()) or in_notebook()
    return bool(setting)


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (the test tqdm.auto makes, without importing IPython)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


@contextmanager
def stop_on_signals(trainer: Any):
    """SIGINT (Ctrl-C) and SIGTERM (what SLURM sends before time runs out) ask the trainer to save
    a checkpoint and stop after the current step; a second Ctrl-C interrupts at once. Off the main
    thread (mlpkit.train from a worker thread) Python allows no handlers: the signals keep their own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        trainer.stop_signal = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    # A signal the parent set to be ignored stays ignored (Python's own rule for SIGINT): a script's
    # shell starts a command run in the background with `&` so, and a Ctrl-C to the script must
    # not stop it.
    handling = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, request_stop) for sig in handling}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if trainer.stop_signal is not None:
        # It came after the last step (the run's checkpoints and metrics.json are written): pass it
        # on as the exit code, so that a Ctrl-C during the final evaluation still stops the process,
        # or a sweep of many runs.
        stop = TrainingStopped.by_signal(f"stopped by signal {trainer.stop_signal} after the last step; the run "
                                         "is complete", trainer.stop_signal)
        stop.completed = True
        raise stop

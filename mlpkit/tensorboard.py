"""Everything that writes TensorBoard: scalars, text and the run's hyperparameters."""
from __future__ import annotations

from pathlib import Path


class TensorBoardLogger:
    """Writes one event directory per run (the run directory itself, so runs are named by it)."""

    def __init__(self, log_dir: str | Path):
        # torch.utils.tensorboard pulls in tensorboard and protobuf: imported only for a run that logs.
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        # TensorBoard renders text as Markdown; indent by 4 spaces to keep a printout verbatim.
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def close(self) -> None:
        self.writer.close()

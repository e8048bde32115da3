"""Everything that writes TensorBoard: scalars, layout, histograms, images, text and hyperparameters.

What it does with tensorboard's and torch's internals (a faster checksum, records written in this
thread, the model graph traced without its check) lives in ``mlpkit.patches``.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlpkit.patches import checksum_records_in_c, file_writer, model_graph, write_in_this_thread

FLUSH_SECONDS = 5.0  # at most this long between a value being logged and it being in the event file


class TensorBoardLogger:
    """Writes one event directory per run (the run directory itself, so runs are named by it).

    Written for a training loop: ``log_scalars`` only keeps the values (with their step and wall
    time); the events are built and written in a batch by ``flush()``, which runs at least every
    FLUSH_SECONDS (checked on every call), before anything else is logged (so the file keeps the
    order of the calls), and at ``close()``. The trainer flushes before every checkpoint, so a run
    killed outright loses only what it logged after its last checkpoint, which a resume logs again.
    Records go into the file from the calling thread (``write_in_this_thread``).
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        # torch.utils.tensorboard pulls in tensorboard and protobuf: imported only for a run that logs.
        from torch.utils.tensorboard import SummaryWriter

        checksum_records_in_c()
        self.log_dir = Path(log_dir)
        # purge_step: a resumed run hides events at or after its checkpoint's step (no duplicate points).
        self.summary_writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        write_in_this_thread(self.summary_writer)
        self.pending: list[tuple[int, float, dict[str, float]]] = []  # (step, wall time, values) not yet written
        self.next_flush = time.monotonic() + FLUSH_SECONDS

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """All values as one event (~15x cheaper than one ``add_scalar`` each), built when flushed:
        on a training step this costs a list append, not the protobuf work of a cold code path."""
        self.pending.append((step, time.time(), values))
        if time.monotonic() >= self.next_flush:
            self.flush()

    def write_pending(self) -> None:
        """The kept scalars as events, in the order they were logged."""
        if not self.pending:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        event_file = file_writer(self.summary_writer)
        for step, wall_time, values in self.pending:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))
                                     for tag, value in values.items()])
            event_file.add_summary(summary, step, wall_time)
        self.pending = []

    @property
    def writer(self) -> Any:
        """The SummaryWriter, for anything but scalars: the kept scalars are written first."""
        self.write_pending()
        return self.summary_writer

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        # TensorBoard renders text as Markdown; indent by 4 spaces to keep a printout verbatim.
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def log_graph(self, model: Any, example_input: Any) -> None:
        """The model graph (TensorBoard's Graphs tab), traced once on a couple of input rows."""
        import warnings

        was_training = model.training
        model.eval()  # tracing runs a forward pass: in train mode it would move BatchNorm's running statistics
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warns about things that do not apply to an MLP
            file_writer(self.writer).add_graph(model_graph(model, example_input))
        model.train(was_training)

    def log_layout(self, charts: dict[str, dict[str, list[str]]]) -> None:
        """Custom-scalars layout: {category: {chart title: [tag regexes drawn as lines of one chart]}}."""
        self.writer.add_custom_scalars({
            category: {title: ["Multiline", patterns] for title, patterns in chart_set.items()}
            for category, chart_set in charts.items()
        })

    def log_histogram(self, tag: str, values: Any, step: int) -> None:
        self.writer.add_histogram(tag, values, step)

    def log_image(self, tag: str, rgb: Any, step: int) -> None:
        """An (height, width, 3) uint8 array."""
        self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int = 0) -> None:
        """HParams into this run's own event file (``add_hparams`` would make an extra sub-run), so
        TensorBoard's HParams tab shows one row per run with its final metrics."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        for summary in hparams_summary(values, dict(metrics)):
            self.writer.file_writer.add_summary(summary)
        self.log_scalars(metrics, step)
        self.writer.flush()

    def flush(self) -> None:
        """Everything logged so far into the event file (and the operating system's hands)."""
        self.writer.flush()
        self.next_flush = time.monotonic() + FLUSH_SECONDS

    def close(self) -> None:
        self.writer.close()


def run_hparams(cfg: Any) -> dict[str, Any]:
    """The choices of a run (its composed config) as flat HParams values (numbers, strings, booleans)."""
    hparams: dict[str, Any] = {
        "data": cfg.data.get("source", ""),
        "activation": cfg.activation.name,
        "hidden_sizes": "[" + ",".join(str(size) for size in cfg.model.hidden_sizes) + "]",
        "depth": len(cfg.model.hidden_sizes),
        "dropout": float(cfg.model.dropout),
        "init": cfg.model.get("init", "default"),
        "norm": cfg.model.get("norm", "none"),
        "residual": bool(cfg.model.get("residual", False)),
        "head": cfg.head.name,
        "loss": cfg.loss.name,
        "optimizer": str(cfg.optimizer._target_).rsplit(".", 1)[-1],
        "lr": float(cfg.optimizer.lr),
        "weight_decay": float(cfg.optimizer.get("weight_decay", 0.0)),
        "batch_size": int(cfg.trainer.batch_size),
        "max_epochs": int(cfg.trainer.max_epochs),
        "seed": int(cfg.trainer.seed),
    }
    for key, value in cfg.activation.items():
        if key != "name" and isinstance(value, (int, float, str, bool)):
            hparams[f"activation.{key}"] = value
    return hparams


def final_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """``final/<split>_<metric>`` for every split metric of a run result (as in metrics.json)."""
    return {f"final/{split}_{name}": float(value)
            for split in ("train", "val", "test") for name, value in result.get(split, {}).items()}

"""Everything that writes TensorBoard: scalars, layout, histograms, images, text and hyperparameters."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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

        file_writer = self.summary_writer._get_file_writer()
        for step, wall_time, values in self.pending:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))
                                     for tag, value in values.items()])
            file_writer.add_summary(summary, step, wall_time)
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
            self.writer._get_file_writer().add_graph(model_graph(model, example_input))
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


def checksum_records_in_c() -> None:
    """tensorboard checksums every record it writes (CRC32C) in pure Python: 70 us for a step's
    scalars, about 10 ms for a 100 KB figure, on its writer thread but holding the GIL, so the
    training loop waits for it. google-crc32c computes the same checksum in C (0.3 us); its function
    replaces tensorboard's for this process (the event files are byte for byte the same)."""
    from tensorboard.summary.writer import record_writer

    try:
        import google_crc32c
    except ImportError:  # a lean environment without it: tensorboard's own, slower, checksum
        return

    def masked_crc32c(data: bytes) -> int:
        crc = google_crc32c.value(bytes(data))
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # TFRecord's mask, as tensorboard's

    record_writer.masked_crc32c = masked_crc32c


class RecordsInThisThread:
    """What an EventFileWriter writes its records through, in place of tensorboard's _AsyncWriter:
    the same write/flush/close, done in the calling thread."""

    def __init__(self, records: Any):
        self.records = records  # a tensorboard RecordWriter

    def write(self, data: bytes) -> None:
        self.records.write(data)

    def flush(self) -> None:
        self.records.flush()

    def close(self) -> None:
        self.records.flush()
        self.records.close()


def write_in_this_thread(summary_writer: Any) -> None:
    """Records into one open, buffered file from the calling thread, for ``summary_writer``'s event file.

    tensorboard without TensorFlow writes each record by opening the event file, appending and
    closing it again (pytorch/pytorch#35188), on a writer thread that wakes for every event: on a
    2-core machine that thread takes a core from the training step's two threads. Measured inside a
    digits training step, a logged step cost 290 us more than another with tensorboard's writer
    and 127 us with this one; what it writes is byte for byte the same. Where tensorboard's
    internals have moved, or the file is not local, the writer is left as it is."""
    from tensorboard.compat.tensorflow_stub.io import gfile

    event_writer = getattr(summary_writer._get_file_writer(), "event_writer", None)
    async_writer = getattr(event_writer, "_async_writer", None)
    records = getattr(async_writer, "_writer", None)
    worker = getattr(async_writer, "_worker", None)
    file_name = getattr(event_writer, "_file_name", "")
    if not (hasattr(records, "_writer") and hasattr(worker, "stop") and os.path.isfile(file_name)):
        return
    event_writer.flush()  # the file-version event, written when the file was created
    worker.stop()
    if isinstance(records._writer, gfile.GFile) and "://" not in file_name:
        records._writer.close()
        records._writer = open(file_name, "ab")  # noqa: SIM115 - closed with the event writer
    event_writer._async_writer = RecordsInThisThread(records)


def model_graph(model: Any, example_input: Any) -> tuple[Any, Any]:
    """What ``SummaryWriter.add_graph`` logs (a GraphDef and its run metadata), traced without
    ``torch.jit.trace``'s check_trace: that check runs the traced model again and compares the two
    with ``torch.testing.assert_close``, whose first call imports ``torch.distributed.tensor`` (about
    a second on 2 cores, the largest single cost of a short run's start-up); a trace of an MLP has
    no data-dependent control flow for it to find. Falls back to add_graph's own function where
    torch's private helpers have moved."""
    import torch
    from torch.utils.tensorboard import _pytorch_graph as pytorch_graph

    needed = ("_set_model_to_eval", "parse", "GraphDef", "VersionDef", "RunMetadata", "StepStats", "DeviceStepStats")
    if not all(hasattr(pytorch_graph, name) for name in needed):
        return pytorch_graph.graph(model, example_input)
    with pytorch_graph._set_model_to_eval(model):
        trace = torch.jit.trace(model, example_input, check_trace=False)  # strict, as add_graph's default
        graph = trace.graph
        torch._C._jit_pass_inline(graph)
    nodes = pytorch_graph.parse(graph, trace, example_input)
    run_metadata = pytorch_graph.RunMetadata(step_stats=pytorch_graph.StepStats(
        dev_stats=[pytorch_graph.DeviceStepStats(device="/device:CPU:0")]))  # add_graph's own constant
    return pytorch_graph.GraphDef(node=nodes, versions=pytorch_graph.VersionDef(producer=22)), run_metadata


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

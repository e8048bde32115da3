"""Everything mlpkit does to or with another library's internals, in one place.

Each entry below uses a private name (a leading underscore) or replaces a library's own function. Each
one checks that the internal is where it expects it and otherwise leaves the library's public path
as it is: a new torch or tensorboard can make a run slower, never wrong. The figures are from
``benchmarks/RESULTS.md`` (2-core CPU) unless said.

| function | the internal it uses or replaces | what it saves (2-core CPU) | where the internal is missing or changed |
|---|---|---|---|
| ``checksum_records_in_c`` | replaces tensorboard's ``record_writer.masked_crc32c`` | 70 us a step's scalars, ~10 ms a figure | tensorboard's own checksum |
| ``write_in_this_thread`` | ``EventFileWriter._async_writer`` and its writers | 163 us a logged step (290 -> 127 us) | tensorboard's writer thread |
| ``file_writer`` | ``SummaryWriter._get_file_writer()`` | (no cost: the file writer of a writer) | the ``file_writer`` attribute |
| ``model_graph`` | ``torch.utils.tensorboard._pytorch_graph``, ``torch._C`` | 6.8 s of a 7.1 s first ``log_graph`` | ``_pytorch_graph.graph`` |
| ``foreach_norm`` | ``torch._foreach_norm`` | 10 us of 43 on a digits net's 9 norms | one ``vector_norm`` a tensor |
| ``foreach_copy_`` | ``torch._foreach_copy_`` | one launch, not one a tensor (CUDA) | one ``copy_`` a tensor |
| ``foreach_sub_`` | ``torch._foreach_sub_`` | one launch, not one a tensor (CUDA) | one ``sub_`` a tensor |

The costs: the checksums, the writer and the graph from ``benchmarks/RESULTS.md``; the ``_foreach``
calls measured for this module (medians of 2000 calls, 2 threads): ``foreach_norm`` of digits'
64-256-256-10 gradients, weights and bias gradients 33 against 43 us one by one, the copy and the
subtraction the same on the CPU either way (on CUDA each tensor one by one is a kernel launch; not
measured: no GPU was lent). The fallbacks give the same numbers (tested).

Elsewhere, and left where it is: ``mlpkit.checkpoint.host_copy`` copies a state dict's ``_metadata``
(torch's module versions, which ``load_state_dict`` reads) when it has one.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


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
    if not hasattr(record_writer, "masked_crc32c"):  # tensorboard checksums elsewhere now: leave it
        return
    record_writer.masked_crc32c = masked_crc32c_function(google_crc32c.value)


def masked_crc32c_function(crc32c: Any) -> Any:
    """TFRecord's masked checksum (what tensorboard's ``masked_crc32c`` returns) from a plain CRC32C."""

    def masked_crc32c(data: bytes) -> int:
        crc = crc32c(bytes(data))
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # TFRecord's mask, as tensorboard's

    return masked_crc32c


def file_writer(summary_writer: Any) -> Any:
    """``summary_writer``'s FileWriter, opened again if the writer was closed (``_get_file_writer``);
    where that private method is gone, the public attribute."""
    get = getattr(summary_writer, "_get_file_writer", None)
    return get() if get is not None else summary_writer.file_writer


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

    event_writer = getattr(file_writer(summary_writer), "event_writer", None)
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
    if not (all(hasattr(pytorch_graph, name) for name in needed) and hasattr(torch._C, "_jit_pass_inline")):
        return pytorch_graph.graph(model, example_input)
    with pytorch_graph._set_model_to_eval(model):
        trace = torch.jit.trace(model, example_input, check_trace=False)  # strict, as add_graph's default
        graph = trace.graph
        torch._C._jit_pass_inline(graph)
    nodes = pytorch_graph.parse(graph, trace, example_input)
    run_metadata = pytorch_graph.RunMetadata(step_stats=pytorch_graph.StepStats(
        dev_stats=[pytorch_graph.DeviceStepStats(device="/device:CPU:0")]))  # add_graph's own constant
    return pytorch_graph.GraphDef(node=nodes, versions=pytorch_graph.VersionDef(producer=22)), run_metadata


# torch is imported inside these (their callers have loaded it: a lookup), so that importing this module,
# as mlpkit.tensorboard does at its top, loads nothing heavy.
def foreach_norm(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The 2-norm of each tensor (0-dim tensors, on their device): one fused call where torch has it."""
    import torch

    fused = getattr(torch, "_foreach_norm", None)
    if fused is not None:
        return tuple(fused(tensors))
    return tuple(torch.linalg.vector_norm(tensor) for tensor in tensors)


def _in_place_pairwise(internal: str, method: str):
    """``torch.<internal>(tensors, others)`` where torch has it, else ``tensor.<method>(other)`` pair by pair."""

    def apply(tensors: Sequence[torch.Tensor], others: Sequence[torch.Tensor]) -> None:
        import torch

        fused = getattr(torch, internal, None)
        if fused is not None:
            fused(tensors, others)
            return
        for tensor, other in zip(tensors, others, strict=True):
            getattr(tensor, method)(other)

    apply.__name__ = internal.removeprefix("_")
    return apply


foreach_copy_ = _in_place_pairwise("_foreach_copy_", "copy_")  # each source copied into its destination
foreach_sub_ = _in_place_pairwise("_foreach_sub_", "sub_")  # each of the others subtracted from its tensor

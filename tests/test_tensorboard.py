"""The model graph a run logs (TensorBoard's Graphs tab) is the one SummaryWriter.add_graph logs."""
import subprocess
import sys

import pytest
import torch

from mlpkit.model import build_model
from mlpkit.tensorboard import model_graph
from tests.conftest import ROOT, assembled


def test_model_graph_is_add_graphs_graph():
    from torch.utils.tensorboard._pytorch_graph import graph

    torch.manual_seed(0)
    model = build_model(64, 10, [16, 8], "tanh", {}, "softmax", dropout=0.5)
    model.train()
    example = torch.randn(2, 64)
    ours, ours_metadata = model_graph(model, example)
    theirs, theirs_metadata = graph(model, example)
    assert model.training  # traced in eval mode, then put back
    assert ours.SerializeToString() == theirs.SerializeToString()
    assert ours_metadata.SerializeToString() == theirs_metadata.SerializeToString()
    assert any("Linear" in node.op or "linear" in node.op for node in ours.node)


@pytest.mark.slow
def test_logging_the_graph_skips_the_trace_check_and_its_imports():
    # torch.jit.trace's check compares outputs with torch.testing.assert_close, which imports
    # torch.distributed.tensor: a second of a short run's start-up.
    code = ("import sys, tempfile, torch\n"
            "from mlpkit.model import build_model\n"
            "from mlpkit.tensorboard import TensorBoardLogger\n"
            "logger = TensorBoardLogger(tempfile.mkdtemp())\n"
            "logger.log_graph(build_model(4, 2, [3], 'relu', {}, 'softmax'), torch.zeros(2, 4))\n"
            "logger.close()\n"
            "print('distributed.tensor' , 'torch.distributed.tensor' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "distributed.tensor False" in result.stdout


def test_event_records_are_checksummed_in_c_with_tensorboards_own_checksums(tmp_path):
    """A logger swaps tensorboard's pure-Python CRC32C (70 us a scalar event, ~10 ms a figure, holding
    the GIL) for google-crc32c's; every checksum must stay the one tensorboard would write, and the
    event file must read back."""
    import os

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure_python
    from tensorboard.summary.writer import record_writer

    from mlpkit.tensorboard import TensorBoardLogger
    from tests.conftest import read_scalars

    logger = TensorBoardLogger(tmp_path)
    assert record_writer.masked_crc32c is not pure_python
    for payload in [b"", b"a", os.urandom(7), os.urandom(600), os.urandom(100_000), bytearray(b"xyz")]:
        assert record_writer.masked_crc32c(payload) == pure_python(payload)
    logger.log_scalars({"loss/train": 0.5, "grad_norm/linear0": 2.0}, step=3)
    logger.close()
    assert read_scalars(tmp_path) == {"loss/train": [(3, 0.5)], "grad_norm/linear0": [(3, 2.0)]}


def events_in_file(log_dir):
    """(step, tags) of every event in a run directory's event file, in file order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (path,) = log_dir.glob("events.out.tfevents.*")
    return [(event.step, [value.tag for value in event.summary.value]) for event in EventFileLoader(str(path)).Load()]


def test_events_keep_the_order_of_the_calls_and_no_writer_thread_is_started(tmp_path):
    import threading

    import numpy as np

    from mlpkit.tensorboard import TensorBoardLogger

    threads = threading.active_count()
    logger = TensorBoardLogger(tmp_path)
    assert threading.active_count() == threads  # tensorboard's writer thread would take a core from the step
    logger.log_scalars({"loss/train": 1.0, "grad_norm/linear1": 0.5}, step=1)
    logger.log_histogram("weights/linear1", np.arange(4.0), step=2)
    logger.log_scalars({"loss/train": 0.5}, step=3)
    logger.log_text("gradient_health", "vanishing", step=4)
    logger.close()
    assert events_in_file(tmp_path)[1:] == [(1, ["loss/train", "grad_norm/linear1"]), (2, ["weights/linear1"]),
                                            (3, ["loss/train"]), (4, ["gradient_health/text_summary"])]
    assert read_scalars_of(tmp_path) == {"loss/train": [(1, 1.0), (3, 0.5)], "grad_norm/linear1": [(1, 0.5)]}


def test_the_event_file_holds_the_records_tensorboards_own_writer_writes(tmp_path):
    """The same calls through a stock SummaryWriter give the same records (wall times aside)."""
    import numpy as np
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    from mlpkit.tensorboard import TensorBoardLogger

    def records(log_dir):
        (path,) = log_dir.glob("events.out.tfevents.*")
        events = list(EventFileLoader(str(path)).Load())[1:]  # after the file-version event
        for event in events:
            event.wall_time = 0
        return [event.SerializeToString() for event in events]

    ours = TensorBoardLogger(tmp_path / "ours", purge_step=2)
    stock = SummaryWriter(str(tmp_path / "stock"), purge_step=2)
    for step in range(3):
        values = {"loss/train": 1.0 / (step + 1), "grad_norm/linear1": float(step)}
        ours.log_scalars(values, step)
        stock._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, simple_value=value)
                                                            for tag, value in values.items()]), step)
        ours.log_histogram("weights/linear1", np.arange(5.0) * step, step)
        stock.add_histogram("weights/linear1", np.arange(5.0) * step, step)
    ours.close()
    stock.close()
    assert records(tmp_path / "ours") == records(tmp_path / "stock")


def test_logged_scalars_reach_the_file_when_flushed_and_within_flush_seconds(tmp_path, monkeypatch):
    from mlpkit import tensorboard

    logger = tensorboard.TensorBoardLogger(tmp_path / "flushed")
    logger.log_scalars({"loss/train": 2.0}, step=0)
    logger.flush()  # what the trainer does before every checkpoint
    assert read_scalars_of(tmp_path / "flushed") == {"loss/train": [(0, 2.0)]}
    monkeypatch.setattr(tensorboard, "FLUSH_SECONDS", 0.0)
    timed = tensorboard.TensorBoardLogger(tmp_path / "timed")
    timed.log_scalars({"loss/train": 3.0}, step=7)  # no flush: FLUSH_SECONDS have passed
    assert read_scalars_of(tmp_path / "timed") == {"loss/train": [(7, 3.0)]}
    logger.close()
    timed.close()


def test_every_checkpoint_is_written_after_the_curves_up_to_its_step(tmp_path, monkeypatch):
    """A run killed outright resumes from its last checkpoint: what it logged before that
    checkpoint must be on disk by then, since the resumed run logs only the steps after it."""
    from mlpkit import checkpointing
    from mlpkit.data import build_data
    from mlpkit.tensorboard import TensorBoardLogger

    data = build_data({"source": "moons", "n_samples": 200, "val_fraction": 0.2, "test_fraction": 0.2})
    logger = TensorBoardLogger(tmp_path)
    trainer = assembled("model.hidden_sizes=[8]", "optimizer.fused=null", "trainer.max_epochs=3",
                        "trainer.batch_size=16", "trainer.log_every_n_steps=2", "trainer.checkpoint_min_seconds=0",
                        data=data, checkpoint_dir=tmp_path / "checkpoints", logger=logger).trainer
    on_disk_at_saves = []
    save = checkpointing.atomic_save

    def recording_save(state, *paths):
        on_disk_at_saves.append((state["step"], [step for step, _ in read_scalars_of(tmp_path).get("loss/train", [])]))
        return save(state, *paths)

    monkeypatch.setattr(checkpointing, "atomic_save", recording_save)
    trainer.fit()
    logger.close()
    assert [step for step, _ in on_disk_at_saves] == [8, 16, 24]  # 8 batches an epoch
    for step, logged in on_disk_at_saves:
        assert logged == list(range(0, step, 2))


def read_scalars_of(log_dir):
    from tests.conftest import read_scalars

    return read_scalars(log_dir)


def test_where_tensorboards_writer_internals_moved_its_writer_is_left_as_it_is():
    from types import SimpleNamespace

    from mlpkit.tensorboard import write_in_this_thread

    renamed = SimpleNamespace(_file_name="/nowhere", _writer_thread=object())  # no _async_writer
    summary_writer = SimpleNamespace(_get_file_writer=lambda: SimpleNamespace(event_writer=renamed))
    write_in_this_thread(summary_writer)
    assert vars(renamed) == {"_file_name": "/nowhere", "_writer_thread": renamed._writer_thread}

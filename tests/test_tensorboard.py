"""The model graph a run logs (TensorBoard's Graphs tab) is the one SummaryWriter.add_graph logs."""
import subprocess
import sys

import torch

from mlpkit.model import build_model
from mlpkit.tensorboard import model_graph
from tests.conftest import ROOT


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

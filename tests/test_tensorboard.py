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

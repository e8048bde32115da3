"""What mlpkit does with other libraries' internals gives their numbers, with the internal and without it."""
import os
import sys
from types import SimpleNamespace

import pytest
import torch

from mlpkit import patches

PAYLOADS = [b"", b"a", b"123456789", os.urandom(7), os.urandom(600), os.urandom(100_000), bytearray(b"xyz")]


def test_the_checksum_in_c_is_tensorboards_masked_crc32c():
    import google_crc32c
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboards

    ours = patches.masked_crc32c_function(google_crc32c.value)
    for payload in PAYLOADS:
        assert ours(payload) == tensorboards(payload), payload[:20]


def test_without_google_crc32c_tensorboard_keeps_its_own_checksum(monkeypatch):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboards
    from tensorboard.summary.writer import record_writer

    monkeypatch.setattr(record_writer, "masked_crc32c", tensorboards)
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # import google_crc32c raises ImportError
    patches.checksum_records_in_c()
    assert record_writer.masked_crc32c is tensorboards


def test_where_tensorboard_checksums_elsewhere_nothing_is_added(monkeypatch):
    from tensorboard.summary.writer import record_writer

    monkeypatch.delattr(record_writer, "masked_crc32c")
    patches.checksum_records_in_c()
    assert not hasattr(record_writer, "masked_crc32c")


def test_the_file_writer_without_the_private_getter_is_the_public_attribute():
    events = object()
    assert patches.file_writer(SimpleNamespace(file_writer=events)) is events
    assert patches.file_writer(SimpleNamespace(_get_file_writer=lambda: events, file_writer=None)) is events


@pytest.mark.parametrize("helper", ["parse", "_set_model_to_eval"])
def test_the_model_graph_is_add_graphs_own_where_a_helper_has_moved(monkeypatch, helper):
    from torch.utils.tensorboard import _pytorch_graph

    graphed = []
    monkeypatch.delattr(_pytorch_graph, helper)
    monkeypatch.setattr(_pytorch_graph, "graph", lambda model, example: graphed.append(model) or "add_graph's")
    model = torch.nn.Linear(3, 2)
    assert patches.model_graph(model, torch.zeros(2, 3)) == "add_graph's"
    assert graphed == [model]


def layers() -> list[torch.Tensor]:
    """A small net's weights and biases, and an empty tensor (a layer of width 0)."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (16,), (4, 16), (4,), (0, 3)]
    return [torch.randn(shape, generator=generator) for shape in shapes]


@pytest.mark.parametrize("internal", ["_foreach_norm", "_foreach_copy_", "_foreach_sub_"])
def test_foreach_wrappers_give_the_same_numbers_without_torchs_internal(monkeypatch, internal):
    def run() -> list[torch.Tensor]:
        tensors, others = layers(), [tensor * 0.5 + 1 for tensor in layers()]
        norms = patches.foreach_norm(tensors)
        patches.foreach_sub_(tensors, others)
        copies = [torch.empty_like(tensor) for tensor in tensors]
        patches.foreach_copy_(copies, tensors)
        return [*norms, *tensors, *copies]

    fused = run()
    assert hasattr(torch, internal)
    monkeypatch.delattr(torch, internal)
    one_by_one = run()
    assert len(fused) == len(one_by_one) == 15
    for expected, got in zip(fused, one_by_one):
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, rtol=1e-6, atol=0)
    assert float(one_by_one[0]) == pytest.approx(float(torch.linalg.vector_norm(layers()[0])), rel=1e-6)
    assert float(one_by_one[4]) == 0.0  # the empty tensor's norm

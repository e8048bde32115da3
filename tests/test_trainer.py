"""The trainer's memory: one copy of the data, and nothing that grows with the steps taken."""
import gc

import pytest
import torch

from mlpkit.data import build_data
from mlpkit.diagnostics import GradientMonitor
from mlpkit.model import build_model
from mlpkit.objective import build_objective
from mlpkit.tensorboard import TensorBoardLogger
from mlpkit.trainer import Trainer


def live_tensor_bytes() -> tuple[int, int]:
    """How many real tensors are alive, and the bytes of their distinct storages (fake tensors that
    an earlier torch.compile in the same process left behind have no storage and are not counted)."""
    gc.collect()
    tensors = [o for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return len(tensors), sum(storages.values())


@pytest.mark.slow
def test_training_longer_holds_no_more_tensors_and_copies_no_data(tmp_path):
    data = build_data({"source": "digits", "val_fraction": 0.15, "test_fraction": 0.15})
    train_x = data.train.x.data_ptr()
    objective = build_objective("auto", "auto", data.task, data.name, data.n_classes)
    torch.manual_seed(0)
    model = build_model(data.in_features, objective.out_features, [32, 32], "tanh", {}, objective.head)
    logger = TensorBoardLogger(tmp_path)
    trainer = Trainer(model, objective, torch.optim.Adam(model.parameters()), data, max_epochs=2,
                      batch_size=32, seed=0, log_every_n_steps=5, logger=logger,
                      monitor=GradientMonitor(model),
                      checkpoint_dir=tmp_path / "checkpoints", checkpoint_every_n_steps=30)
    trainer.fit()
    after_two_epochs = live_tensor_bytes()
    trainer.max_epochs = 8  # 4 times the steps: 40 batches an epoch, a diagnostics step every 5
    trainer.fit()
    logger.close()
    assert trainer.step == 8 * 40
    assert live_tensor_bytes() == after_two_epochs
    assert data.train.x.data_ptr() == train_x  # trained on the tensors it was given, not a copy

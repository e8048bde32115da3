"""The trainer's memory: one copy of the data, and nothing that grows with the steps taken."""
import gc

import pytest
import torch

from mlpkit.data import build_data
from mlpkit.tensorboard import TensorBoardLogger
from tests.conftest import assembled


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
    logger = TensorBoardLogger(tmp_path)
    trainer = assembled("model.hidden_sizes=[32,32]", "activation=tanh", "optimizer.fused=null",
                        "trainer.max_epochs=2", "trainer.batch_size=32", "trainer.log_every_n_steps=5",
                        "trainer.checkpoint_every_n_steps=30", "diagnostics.figure_every_n_steps=0",
                        data=data, checkpoint_dir=tmp_path / "checkpoints", logger=logger).trainer
    trainer.fit()
    after_two_epochs = live_tensor_bytes()
    trainer.max_epochs = 8  # 4 times the steps: 40 batches an epoch, a diagnostics step every 5
    trainer.fit()
    logger.close()
    assert trainer.step == 8 * 40
    assert live_tensor_bytes() == after_two_epochs
    assert data.train.x.data_ptr() == train_x  # trained on the tensors it was given, not a copy


def moons_run(checkpoint_dir, *overrides):
    """A small run whose validation accuracy improves at epochs 1, 2, 3, 6 and 7 of 8 (on CPU)."""
    data = build_data({"source": "moons", "n_samples": 300, "val_fraction": 0.2, "test_fraction": 0.2})
    return assembled("model.hidden_sizes=[16]", "activation=relu", "optimizer.lr=0.05", "optimizer.fused=null",
                     "trainer.max_epochs=8", "trainer.batch_size=32", "trainer.seed=0", "objective.metric=accuracy",
                     "objective.mode=max", *overrides, data=data, checkpoint_dir=checkpoint_dir).trainer


@pytest.mark.parametrize(("min_seconds", "expected"), [
    (10.0, [(1, ["last.pt", "best.pt"]), (7, ["best.pt"]), (8, ["last.pt"])]),  # the best of 2-7 kept in memory
    (0.0, [(1, ["last.pt", "best.pt"]), (2, ["last.pt", "best.pt"]), (3, ["last.pt", "best.pt"]), (4, ["last.pt"]),
           (5, ["last.pt"]), (6, ["last.pt", "best.pt"]), (7, ["last.pt", "best.pt"]), (8, ["last.pt"])]),
])
def test_the_first_and_last_epochs_write_checkpoints_others_once_min_seconds_passed_and_best_follows(
        tmp_path, monkeypatch, min_seconds, expected):
    from mlpkit import checkpointing
    from mlpkit.checkpoint import load_checkpoint

    written = []
    save = checkpointing.atomic_save

    def recording_save(state, *paths):
        written.append((state["epoch"], [path.name for path in paths]))
        return save(state, *paths)

    monkeypatch.setattr(checkpointing, "atomic_save", recording_save)
    trainer = moons_run(tmp_path, f"trainer.checkpoint_min_seconds={min_seconds}")
    result = trainer.fit()
    improved = [1, 2, 3, 6, 7]
    accuracies = [entry["accuracy/val"] for entry in result["history"]]
    assert [epoch for epoch in range(1, 9) if accuracies[epoch - 1] > max(accuracies[:epoch - 1], default=0)] == improved
    assert written == expected
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 7 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 8


def test_a_run_killed_after_epochs_without_a_checkpoint_resumes_bit_for_bit(tmp_path):
    """last.pt is from epoch 1 when a kill comes in epoch 5 (epochs 2 to 4 ended within 10 s of
    it): the resume trains epochs 2 to 8 again and ends where an uninterrupted run does."""
    from mlpkit.checkpoint import load_checkpoint

    reference = moons_run(tmp_path / "reference")
    reference_result = reference.fit()

    class Killed(Exception):
        pass

    killed = moons_run(tmp_path / "killed")
    train_step = killed.train_step

    def dies_in_epoch_5(x, y):
        if killed.step == 27:  # 6 batches an epoch: the 4th batch of epoch 5
            raise Killed
        return train_step(x, y)

    killed.train_step = dies_in_epoch_5
    with pytest.raises(Killed):
        killed.fit()
    state = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert state["epoch"] == 1 and load_checkpoint(tmp_path / "killed" / "best.pt")["epoch"] == 1
    resumed = moons_run(tmp_path / "killed")
    resumed.resume_from(state)
    result = resumed.fit()
    assert result["history"] == reference_result["history"]
    assert load_checkpoint(tmp_path / "killed" / "best.pt")["epoch"] == 7
    for name, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_a_run_stopped_by_a_non_finite_loss_writes_the_best_epoch_it_kept_in_memory(tmp_path):
    from mlpkit.checkpoint import load_checkpoint
    from mlpkit.errors import TrainingStopped

    trainer = moons_run(tmp_path)
    train_step = trainer.train_step

    def nan_in_epoch_3(x, y):
        loss = train_step(x, y)
        return loss * float("nan") if trainer.step == 14 else loss

    trainer.train_step = nan_in_epoch_3
    with pytest.raises(TrainingStopped, match="non-finite at step 14"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2  # improved on epoch 1, within 10 s of it
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1

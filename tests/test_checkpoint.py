"""Checkpoints: exact round trip, atomic writes, refusal of unsafe files, one-line errors."""
from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mlpkit import checkpoint
from mlpkit.checkpoint import (
    CheckpointError,
    is_better,
    load_checkpoint,
    resolve_resume_path,
    restore,
    save_checkpoint,
)
from mlpkit.errors import ConfigError
from mlpkit.model import build_model

CONFIG = {"model": {"hidden_sizes": [8], "dropout": 0.5}, "activation": {"name": "relu"},
          "data": {"source": "iris"}, "trainer": {"seed": 0}}


def make_run(hidden_sizes=(8,), seed: int = 0, dropout: float = 0.5, activation: str = "relu",
             activation_params: dict | None = None, in_features: int = 4, optimizer=torch.optim.Adam):
    torch.manual_seed(seed)
    model = build_model(in_features, 3, list(hidden_sizes), activation, activation_params or {},
                        "softmax", dropout=dropout)
    return model, optimizer(model.parameters(), lr=0.01), torch.Generator().manual_seed(seed)


def train_steps(model, optimizer, generator, steps: int, batch_size: int = 8) -> None:
    """A miniature of Trainer.train_epoch: batch order from the generator, dropout from torch."""
    x = torch.linspace(-1, 1, 64 * 4).reshape(64, 4)
    y = (torch.arange(64) % 3)
    model.train()
    for _ in range(steps):
        rows = torch.randperm(64, generator=generator)[:batch_size]
        loss = torch.nn.functional.cross_entropy(model.logits(x[rows]), y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def save(path, model, optimizer, generator, **fields):
    fields = {"epoch": 1, "step": 5, "config": CONFIG, **fields}
    return save_checkpoint(path, model=model, optimizer=optimizer, batch_generator=generator, **fields)


def next_draws(generator) -> dict:
    """What every RNG gives next (the gauss caches are part of what must come back)."""
    return {"torch": torch.rand(5), "generator": torch.randperm(20, generator=generator),
            "numpy": np.random.standard_normal(5), "python": [random.gauss(0, 1) for _ in range(5)]}


def assert_same_draws(first: dict, second: dict) -> None:
    assert torch.equal(first["torch"], second["torch"])
    assert torch.equal(first["generator"], second["generator"])
    np.testing.assert_array_equal(first["numpy"], second["numpy"])
    assert first["python"] == second["python"]


def assert_same_state(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, second[key]), key
        elif isinstance(value, dict):
            assert_same_state(value, second[key])
        else:
            assert value == second[key], key


# --- round trip ------------------------------------------------------------------------------
def test_round_trip_restores_weights_optimizer_and_every_rng(tmp_path):
    model, optimizer, generator = make_run()
    train_steps(model, optimizer, generator, 5)
    # Leave odd gauss caches behind: numpy's has_gauss and Python's gauss_next must come back too.
    np.random.standard_normal(1)
    random.gauss(0, 1)
    path = save(tmp_path / "checkpoints" / "last.pt", model, optimizer, generator,
                best={"metric": "loss/val", "mode": "min", "value": 0.5, "epoch": 1},
                extra={"history": [{"epoch": 1, "loss/train_epoch": 1.0}]})
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    expected = next_draws(generator)

    # Everything in the file is plain: torch's own weights_only loader reads it.
    torch.load(path, weights_only=True)
    fresh_model, fresh_optimizer, fresh_generator = make_run(seed=123)
    train_steps(fresh_model, fresh_optimizer, fresh_generator, 2)  # move every RNG elsewhere
    state = load_checkpoint(path, map_location="cpu")
    restore(state, model=fresh_model, optimizer=fresh_optimizer, batch_generator=fresh_generator)

    assert_same_state(weights, fresh_model.state_dict())
    assert_same_state(optimizer_state["state"], fresh_optimizer.state_dict()["state"])
    assert optimizer_state["param_groups"] == fresh_optimizer.state_dict()["param_groups"]
    assert_same_draws(expected, next_draws(fresh_generator))
    assert (state["epoch"], state["step"], state["config"]) == (1, 5, CONFIG)
    assert state["best"]["value"] == 0.5 and state["extra"]["history"][0]["epoch"] == 1
    assert state["path"] == str(path)


def test_resumed_training_continues_bit_identically(tmp_path):
    model, optimizer, generator = make_run()
    train_steps(model, optimizer, generator, 6)
    uninterrupted = model.state_dict()

    model, optimizer, generator = make_run()
    train_steps(model, optimizer, generator, 3)
    save(tmp_path / "last.pt", model, optimizer, generator)
    model, optimizer, generator = make_run(seed=7)
    restore(load_checkpoint(tmp_path / "last.pt"), model=model, optimizer=optimizer,
            batch_generator=generator)
    train_steps(model, optimizer, generator, 3)
    assert_same_state(uninterrupted, model.state_dict())


def test_schedule_state_round_trips_as_the_callbacks_state(tmp_path):
    """The schedule is a callback: its state travels under extra["callbacks"]["scheduler"], as
    Trainer.state() saves it and Trainer.resume_from() loads it."""
    from mlpkit.callbacks import Callbacks, saved_states
    from mlpkit.schedules import build_schedule

    halving = {"name": "step", "warmup_steps": 0, "step_size": 1, "gamma": 0.5}  # every epoch of 2 steps

    def scheduled_run(seed):
        model, optimizer, generator = make_run(seed=seed)
        return model, optimizer, generator, build_schedule(optimizer, halving, total_steps=10, steps_per_epoch=2)

    model, optimizer, generator, schedule = scheduled_run(0)
    for _ in range(3):
        train_steps(model, optimizer, generator, 1)
        schedule.after_step()
    save(tmp_path / "last.pt", model, optimizer, generator, extra={"callbacks": Callbacks([schedule]).state_dicts()})
    model2, optimizer2, generator2, schedule2 = scheduled_run(1)
    state = load_checkpoint(tmp_path / "last.pt")
    restore(state, model=model2, optimizer=optimizer2, batch_generator=generator2)
    Callbacks([schedule2]).load_state_dicts(saved_states(state), state["path"])
    assert schedule2.state_dict() == schedule.state_dict() and schedule2.steps == 3
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.005


def test_dictconfig_is_stored_resolved_and_non_plain_values_are_refused_at_save(tmp_path):
    model, optimizer, generator = make_run()
    config = OmegaConf.create({"a": 2, "b": "${a}"})
    save(tmp_path / "last.pt", model, optimizer, generator, config=config)
    assert load_checkpoint(tmp_path / "last.pt")["config"] == {"a": 2, "b": 2}
    with pytest.raises(TypeError, match=r"^checkpoint.extra.scores holds a ndarray"):
        save(tmp_path / "other.pt", model, optimizer, generator, extra={"scores": np.zeros(2)})
    with pytest.raises(TypeError, match=r"^checkpoint.best.value holds a float64"):
        save(tmp_path / "other.pt", model, optimizer, generator, best={"value": np.float64(0.5)})
    assert not (tmp_path / "other.pt").exists()


def test_file_permissions_follow_the_umask_like_any_other_file(tmp_path):
    model, optimizer, generator = make_run()
    path = save(tmp_path / "last.pt", model, optimizer, generator)
    (tmp_path / "metrics.json").write_text("{}")
    assert path.stat().st_mode & 0o777 == (tmp_path / "metrics.json").stat().st_mode & 0o777


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_round_trips_with_its_cuda_rng(tmp_path):
    model, optimizer, generator = make_run()
    model.cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(16, 4, device="cuda")
    model.train()
    model.logits(x).sum().backward()  # dropout draws from the CUDA generator
    optimizer.step()
    path = save(tmp_path / "last.pt", model, optimizer, generator)
    expected = torch.rand(5, device="cuda")
    other, _, other_generator = make_run(seed=9)
    other.cuda()
    other_optimizer = torch.optim.Adam(other.parameters(), lr=0.01)
    torch.rand(100, device="cuda")
    state = load_checkpoint(path, map_location="cuda")
    restore(state, model=other, optimizer=other_optimizer, batch_generator=other_generator)
    assert torch.equal(torch.rand(5, device="cuda"), expected)
    assert_same_state(model.state_dict(), other.state_dict())
    assert_same_state(optimizer.state_dict()["state"], other_optimizer.state_dict()["state"])


# --- atomic writes ---------------------------------------------------------------------------
def _fail_replace(source, target):
    raise OSError("simulated crash before the rename")


def _fail_save(payload, file, *args, **kwargs):
    file.write(b"PK\x03\x04 half a zip")  # a partial write, then the crash
    raise OSError("simulated crash while writing")


@pytest.mark.parametrize(("target", "failure"), [("os.replace", _fail_replace),
                                                 ("torch.save", _fail_save)])
def test_a_crash_mid_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch,
                                                                     target, failure):
    model, optimizer, generator = make_run()
    path = save(tmp_path / "checkpoints" / "last.pt", model, optimizer, generator, epoch=1)
    before = path.read_bytes()
    train_steps(model, optimizer, generator, 2)
    module, name = target.split(".")
    monkeypatch.setattr({"os": checkpoint.os, "torch": checkpoint.torch}[module], name, failure)
    with pytest.raises(OSError, match="simulated crash"):
        save(path, model, optimizer, generator, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_a_temporary_left_by_a_killed_run_is_removed_by_the_next_save(tmp_path):
    model, optimizer, generator = make_run()
    leftover = tmp_path / ".last.pt.0123456789ab.tmp"
    leftover.write_bytes(b"PK half a zip")
    save(tmp_path / "last.pt", model, optimizer, generator)
    save(tmp_path / "best.pt", model, optimizer, generator)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_best_is_a_second_name_of_last_and_keeps_its_state_when_last_moves_on(tmp_path):
    model, optimizer, generator = make_run()
    state = checkpoint.checkpoint_state(model=model, optimizer=optimizer, epoch=1, step=5,
                                        batch_generator=generator, config=CONFIG)
    checkpoint.atomic_save(state, tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert os.path.samefile(tmp_path / "best.pt", tmp_path / "last.pt")  # written once
    train_steps(model, optimizer, generator, 2)
    save(tmp_path / "last.pt", model, optimizer, generator, epoch=2)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_best_is_written_again_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(1, "Operation not permitted")

    model, optimizer, generator = make_run()
    state = checkpoint.checkpoint_state(model=model, optimizer=optimizer, epoch=3, step=5,
                                        batch_generator=generator, config=CONFIG)
    monkeypatch.setattr(checkpoint.os, "link", no_links)
    checkpoint.atomic_save(state, tmp_path / "last.pt", tmp_path / "best.pt")
    assert not os.path.samefile(tmp_path / "best.pt", tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


# --- unsafe and broken files -----------------------------------------------------------------
class CreatesMarker:
    """Unpickling this would run os.system and create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "last.pt"
    payload = {"format": checkpoint.FORMAT, "model": CreatesMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"checkpoint {path} was refused: it holds ")
    assert "system" in message and "\n" not in message
    assert not marker.exists()


def test_truncated_empty_and_foreign_files_name_the_file_and_the_problem(tmp_path):
    model, optimizer, generator = make_run()
    path = save(tmp_path / "last.pt", model, optimizer, generator)
    data = path.read_bytes()
    cases = {
        "truncated.pt": (data[: len(data) // 2], "cannot be read, it is truncated, corrupt"),
        "empty.pt": (b"", "cannot be read, it is truncated, corrupt"),
        "notes.pt": (b"hello, not a checkpoint\n", "cannot be read, it is truncated, corrupt"),
    }
    for name, (content, _expected) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    cases["bare.pt"] = (None, "is not an mlpkit checkpoint (a bare state_dict?)")
    torch.save({"format": checkpoint.FORMAT, "version": 1, "model": {}}, tmp_path / "partial.pt")
    cases["partial.pt"] = (None, "is incomplete: no optimizer, optimizer_class, epoch")
    cases["missing.pt"] = (None, "does not exist")
    damaged = load_checkpoint(path)
    damaged["model"] = {"linear1.weight": "not a tensor"}
    torch.save(damaged, tmp_path / "damaged.pt")
    cases["damaged.pt"] = (None, "is damaged: its model entry is not a state_dict of tensors")
    for name, (_, expected) in cases.items():
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(f"checkpoint {tmp_path / name} {expected}"), message
        assert "\n" not in message


def test_another_architecture_names_the_file_the_parameter_and_the_setting(tmp_path):
    model, optimizer, generator = make_run(hidden_sizes=[8])
    path = save(tmp_path / "last.pt", model, optimizer, generator)
    state = load_checkpoint(path)
    cases = [
        (make_run(hidden_sizes=[16]), ("linear1.weight has shape [8, 4] in the file but [16, 4] in "
         "the model (was it trained with other model.hidden_sizes? the file has "
         "model.hidden_sizes=[8])")),
        (make_run(hidden_sizes=[8, 8]), ("linear2.weight has shape [3, 8] in the file but [8, 8] in "
         "the model (was it trained with other model.hidden_sizes?")),
        (make_run(in_features=6), ("linear1.weight has shape [8, 4] in the file but [8, 6] in the "
         "model (was it trained with other data.source? the file has data.source=iris)")),
        (make_run(activation="prelu"), ("act1.weight is in the model but not in the file (was it "
         "trained with other activation? the file has activation={name:relu})")),
    ]
    for (other, other_optimizer, other_generator), expected in cases:
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(CheckpointError) as caught:
            restore(state, model=other, optimizer=other_optimizer, batch_generator=other_generator)
        assert str(caught.value).startswith(f"checkpoint {path} does not fit the model: {expected}")
        assert_same_state(before, other.state_dict())  # nothing was changed

    shallower, shallower_optimizer, _ = make_run(hidden_sizes=[])
    with pytest.raises(CheckpointError, match=r"linear1.weight has shape \[8, 4\] in the file but "
                                              r"\[3, 4\] in the model"):
        restore(state, model=shallower, optimizer=shallower_optimizer)


def test_another_optimizer_is_named(tmp_path):
    model, optimizer, generator = make_run()
    path = save(tmp_path / "last.pt", model, optimizer, generator)
    other, sgd, _ = make_run(optimizer=torch.optim.SGD)
    with pytest.raises(CheckpointError, match=r"has optimizer Adam but the run uses SGD"):
        restore(load_checkpoint(path), model=other, optimizer=sgd)


# --- resume= ---------------------------------------------------------------------------------
def test_resume_accepts_a_run_directory_or_a_file_and_says_when_nothing_is_there(tmp_path):
    model, optimizer, generator = make_run()
    last = save(tmp_path / "run" / "checkpoints" / "last.pt", model, optimizer, generator)
    best = save(tmp_path / "run" / "checkpoints" / "best.pt", model, optimizer, generator)
    assert resolve_resume_path(tmp_path / "run") == last
    assert resolve_resume_path(tmp_path / "run" / "checkpoints") == last
    assert resolve_resume_path(str(best)) == best

    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ConfigError, match=r"^resume=.*empty_run is not valid: expected a run "
                                          r"directory holding checkpoints/last.pt.*has no"):
        resolve_resume_path(tmp_path / "empty_run")
    with pytest.raises(ConfigError, match=r"nowhere does not exist"):
        resolve_resume_path(tmp_path / "nowhere")


# --- bookkeeping -----------------------------------------------------------------------------
def test_is_better():
    assert is_better(0.5, None, "min") and is_better(0.4, 0.5, "min") and not is_better(0.6, 0.5, "min")
    assert is_better(0.6, 0.5, "max") and not is_better(float("nan"), None, "max")
    assert is_better(0.1, float("nan"), "min")

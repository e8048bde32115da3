"""The training knobs other frameworks have: gradient accumulation, fp16 with loss scaling, weight
averaging (EMA, SWA), determinism, and limits on the batches an epoch reads. (Resuming each exactly:
tests/test_remedies_trainer.py, test_an_interrupted_and_resumed_run_ends_with_the_same_lr_and_weights.)"""
from __future__ import annotations

import logging
import math

import pytest
import torch

from mlpkit.config import validate
from mlpkit.errors import ConfigError
from mlpkit.settings import TrainerSettings
from mlpkit.trainer import Trainer
from tests.conftest import assembled, compose_config

TINY = ("model.hidden_sizes=[32]", "trainer.max_epochs=1", "optimizer.fused=false")


def weights(parts) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in parts.model.state_dict().items()}


def fitted(parts):
    parts.trainer.fit()
    return parts


def test_accumulated_batches_step_as_one_batch_that_many_times_larger():
    large = assembled(*TINY, "trainer.batch_size=64")
    accumulated = assembled(*TINY, "trainer.batch_size=16", "trainer.accumulate_grad_batches=4")
    large_result, accumulated_result = large.trainer.fit(), accumulated.trainer.fit()
    assert accumulated_result["steps"] == large_result["steps"] == math.ceil(1257 / 64)
    for name, value in weights(large).items():
        torch.testing.assert_close(weights(accumulated)[name], value, rtol=1e-4, atol=1e-5)
    assert accumulated_result["history"][0]["loss/train_epoch"] == pytest.approx(
        large_result["history"][0]["loss/train_epoch"], rel=1e-4)


def test_an_accumulated_steps_diagnostics_measure_its_whole_gradient():
    large = assembled(*TINY, "trainer.batch_size=64", "trainer.log_every_n_steps=1")
    accumulated = assembled(*TINY, "trainer.batch_size=16", "trainer.accumulate_grad_batches=4",
                            "trainer.log_every_n_steps=1")
    x, y = large.data.train.x[:64], large.data.train.y[:64]
    large.trainer.train_step(x, y)
    accumulated.trainer.train_step(x, y)
    large_norms, accumulated_norms = (parts.trainer.monitor.last.layers for parts in (large, accumulated))
    for layer, figures in large_norms.items():
        assert accumulated_norms[layer]["grad_norm"] == pytest.approx(figures["grad_norm"], rel=1e-4)


def test_fp16_is_refused_on_the_cpu_naming_bf16():
    from mlpkit.assemble import prepare_device

    with pytest.raises(ConfigError, match=r"trainer.precision=16-mixed is not valid: expected 32 or bf16-mixed on "
                                          r"this device. float16 with loss scaling is for CUDA devices"):
        prepare_device(compose_config("trainer.precision=16-mixed", "trainer.device=cpu"))


def fp16_trainer(parts) -> Trainer:
    """The run's parts in a Trainer with fp16 loss scaling, on the CPU (the command line allows it on CUDA only)."""
    settings = TrainerSettings(max_epochs=1, batch_size=64, precision="16-mixed", log_every_n_steps=1)
    return Trainer(parts.model, parts.objective, parts.optimizer, parts.data, settings, monitor=parts.trainer.monitor)


def test_fp16_unscales_the_gradients_before_they_are_read():
    reference, scaled = assembled(*TINY), assembled(*TINY)
    x, y = reference.data.train.x[:64], reference.data.train.y[:64]
    reference.trainer.backward(x, y, measuring=False)
    trainer = fp16_trainer(scaled)
    assert trainer.scaler.scaler.get_scale() == 65536.0  # the loss is multiplied by this before backward
    trainer.backward(x, y, measuring=False)
    for expected, got in zip(reference.model.parameters(), scaled.model.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=0.05, atol=2e-3)  # float16 rounding, not x65536


def test_an_fp16_overflow_skips_the_step_counts_it_and_is_not_judged():
    parts = assembled(*TINY)
    trainer = fp16_trainer(parts)
    trainer.scaler.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)  # float16 overflows at 65504
    before = weights(parts)
    x, y = parts.data.train.x[:64], parts.data.train.y[:64]
    trainer.train_step(x, y)  # measured (log every step): the monitor sees the infinite gradients
    assert all(torch.equal(value, before[name]) for name, value in weights(parts).items())  # skipped
    assert trainer.scaler.skipped.item() == 1 and trainer.scaler.scaler.get_scale() == 2.0 ** 119
    assert trainer.monitor.verdicts.fired == {}
    trainer.train_step(x, y)
    assert trainer.scaler.log_values(trainer)["amp/skipped_steps"].item() == 2


def test_ema_and_swa_are_evaluated_beside_the_raw_weights():
    parts = assembled("model.hidden_sizes=[32]", "trainer.max_epochs=3", "trainer.ema_decay=0.9",
                      "trainer.swa_start=2", "model.norm=batch")
    result = parts.trainer.fit()
    for key in ("val_ema", "test_ema", "val_swa", "test_swa"):
        assert set(result[key]) == set(result["val"]) and result[key] != result[key.split("_")[0]]
    averaging = next(c for c in parts.trainer.callbacks.callbacks if c.state_key == "weight_averaging")
    assert int(averaging.swa.n_averaged) == 2  # the ends of epochs 2 and 3
    assert int(averaging.ema.n_averaged) == result["steps"]


def test_swa_from_past_the_last_epoch_says_it_averages_nothing(caplog):
    parts = assembled(*TINY, "trainer.swa_start=3")
    result = parts.trainer.fit()
    assert "val_swa" not in result and "trainer.swa_start=3 comes after the run's last epoch" in caplog.text


def test_two_deterministic_runs_give_bit_identical_weights(caplog):
    from mlpkit.assemble import prepare_device

    caplog.set_level(logging.INFO, logger="mlpkit")
    try:
        prepare_device(compose_config("trainer.deterministic=true", "trainer.device=cpu"))
        assert torch.are_deterministic_algorithms_enabled()
        assert "trainer.deterministic=true: torch.use_deterministic_algorithms(True)" in caplog.text
        first, second = (weights(fitted(assembled(*TINY, "trainer.deterministic=true", "model.dropout=0.3")))
                         for _ in range(2))
        assert all(torch.equal(first[name], second[name]) for name in first)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("limit, steps", [("3", 3), ("0.5", 10), ("1.0", 20)])
def test_limit_train_batches_counts_or_shares_an_epochs_steps(limit, steps):
    parts = assembled(*TINY, f"trainer.limit_train_batches={limit}")
    assert parts.trainer.fit()["steps"] == steps


def test_limit_val_batches_evaluates_the_first_batches():
    parts = assembled(*TINY, "trainer.limit_val_batches=2")
    result = parts.trainer.fit()
    first_rows = parts.data.val
    from mlpkit.data import Split

    expected = parts.trainer.evaluate(Split(first_rows.x[:128], first_rows.y[:128]))
    assert result["val"] == expected and result["history"][0]["loss/val"] == expected["loss"]


@pytest.mark.parametrize("override, message", [
    ("trainer.accumulate_grad_batches=0", "an integer >= 1"),
    ("trainer.ema_decay=1.0", r"a decay \(0 = off\) in \[0, 1\)"),
    ("trainer.ema_decay=-0.1", r"a decay \(0 = off\) in \[0, 1\)"),
    ("trainer.swa_start=-1", "an integer >= 0"),
    ("trainer.limit_train_batches=0", r"an integer >= 1 \(batches\) or a fraction in \(0, 1\]"),
    ("trainer.limit_val_batches=1.5", r"an integer >= 1 \(batches\) or a fraction in \(0, 1\]"),
    ("trainer.deterministic=maybe", "true or false"),
])
def test_bad_knob_values_are_one_line(override, message):
    key, _, value = override.partition("=")
    with pytest.raises(ConfigError, match=rf"^{key}={value} is not valid: expected {message}") as refused:
        validate(compose_config(override))
    assert "\n" not in str(refused.value)

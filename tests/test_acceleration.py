"""Speed settings: bf16 autocast, torch.compile with static shapes, fused optimizers, TF32, CUDA graphs."""
from __future__ import annotations

import json

import pytest
import torch

from mlpkit.acceleration import set_matmul_precision
from mlpkit.checkpoint import load_checkpoint
from mlpkit.cli import run
from mlpkit.data import build_data
from mlpkit.errors import ConfigError
from mlpkit.trainer import Trainer
from tests.conftest import FAST, assembled, compose_config, run_cli

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# the steps the gradient monitor measures run eagerly: with every step logged (auto, in runs under 50
# steps) nothing would be compiled
COMPILED = ("trainer.compile=true", "trainer.log_every_n_steps=6")


def digits_trainer(tmp_path, *overrides: str, device: str = "cpu", batch_size: int = 100) -> Trainer:
    data = build_data({"source": "digits", "val_fraction": 0.15, "test_fraction": 0.15}, torch.device(device))
    return assembled(f"trainer.device={device}", "model.hidden_sizes=[32,32]", "optimizer.lr=3e-3",
                     "optimizer.fused=null", "trainer.max_epochs=3", f"trainer.batch_size={batch_size}", *overrides,
                     data=data, checkpoint_dir=tmp_path).trainer


@pytest.mark.slow
def test_bf16_mixed_runs_the_forward_pass_in_bfloat16_and_still_learns(tmp_path):
    trainer = digits_trainer(tmp_path, "trainer.precision=bf16-mixed")
    dtypes = []
    trainer.model.linear1.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    result = trainer.fit()
    assert set(dtypes) == {torch.bfloat16}  # training steps and evaluations alike
    assert result["val"]["accuracy"] > 0.8  # 10 classes: chance is 0.1
    assert trainer.model.linear1.weight.dtype == torch.float32  # the weights stay float32


@pytest.mark.slow
def test_compiled_step_drops_the_last_partial_batch_and_learns(tmp_path):
    torch._dynamo.reset()
    trainer = digits_trainer(tmp_path, *COMPILED)
    result = trainer.fit()
    train_rows = len(trainer.data.train)
    assert train_rows % 100 != 0  # a partial batch exists, and is dropped
    assert result["steps"] == 3 * (train_rows // 100)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really went through dynamo
    assert result["val"]["accuracy"] > 0.8
    assert load_checkpoint(tmp_path / "last.pt")["step"] == result["steps"]


def test_compile_refuses_a_batch_larger_than_the_training_split(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.batch_size=5000 is not valid: expected at most 1257 "):
        digits_trainer(tmp_path, "trainer.compile=true", batch_size=5000)


@pytest.mark.slow
def test_optimizer_fused_true_reaches_the_optimizer_and_its_checkpoint(tmp_path):
    run(compose_config(*FAST, "optimizer.fused=true", "trainer.device=cpu"), tmp_path)
    groups = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert all(group["fused"] is True for group in groups)


@pytest.mark.slow
@pytest.mark.parametrize(("setting", "fused"), [("auto", True), ("false", False), ("null", None)])
def test_optimizer_fused_auto_means_fused_on_cpu_and_can_be_turned_off(tmp_path, setting, fused):
    run(compose_config(*FAST, "trainer.device=cpu", f"optimizer.fused={setting}"), tmp_path)
    groups = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert all(group["fused"] is fused for group in groups)


BAD_SPEED_SETTINGS = [
    ("trainer.precision=fp16", "trainer.precision=fp16 is not valid: expected one of 32, bf16-mixed, 16-mixed"),
    ("trainer.compile=yes", "trainer.compile=yes is not valid: expected true or false"),
    ("optimizer.fused=maybe", "optimizer.fused=maybe is not valid: expected auto, true, false or null"),
    ("trainer.cuda_graphs=true", "trainer.cuda_graphs=True is not valid: expected false on this device. "
                                 "CUDA graphs need a CUDA device; this run trains on cpu"),
]


@pytest.mark.parametrize(("override", "message"), BAD_SPEED_SETTINGS)
def test_bad_speed_settings_are_refused_before_training(tmp_path, override, message):
    with pytest.raises(ConfigError) as error:
        run(compose_config(*FAST, "trainer.device=cpu", override), tmp_path)  # what the CLI runs
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_bad_speed_setting_stops_the_cli_with_exit_2(run_dir):
    override, message = BAD_SPEED_SETTINGS[-1]  # refused by the device check, after validate
    result = run_cli(run_dir, *FAST, "trainer.device=cpu", override)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (run_dir / "metrics.json").exists()


def assert_tf32_switch(matmul, setting: str, tf32, full_float32) -> None:
    """set_matmul_precision turns ``matmul.<setting>`` to ``tf32`` on CUDA, back to ``full_float32``
    when asked, and leaves it as it was for the CPU."""
    setattr(matmul, setting, full_float32)
    set_matmul_precision(torch.device("cpu"), True)
    assert getattr(matmul, setting) == full_float32
    set_matmul_precision(torch.device("cuda"), True)
    assert getattr(matmul, setting) == tf32
    set_matmul_precision(torch.device("cuda"), False)
    assert getattr(matmul, setting) == full_float32


def test_tf32_switch_sets_cudas_float32_matmul_precision_and_leaves_cpu_alone():
    matmul = torch.backends.cuda.matmul
    # torch 2.9 replaced allow_tf32 by fp32_precision; pyproject allows torch from 2.4
    setting, tf32, full_float32 = (("fp32_precision", "tf32", "ieee") if hasattr(matmul, "fp32_precision")
                                   else ("allow_tf32", True, False))
    before = getattr(matmul, setting)
    try:
        assert_tf32_switch(matmul, setting, tf32, full_float32)
    finally:
        setattr(matmul, setting, before)


def test_tf32_switch_uses_allow_tf32_on_a_torch_before_fp32_precision(monkeypatch):
    from types import SimpleNamespace

    before_2_9 = SimpleNamespace(allow_tf32=True)  # torch.backends.cuda.matmul of torch 2.4 to 2.8
    monkeypatch.setattr(torch.backends.cuda, "matmul", before_2_9)
    assert_tf32_switch(before_2_9, "allow_tf32", True, False)
    assert vars(before_2_9) == {"allow_tf32": False}  # no fp32_precision set on a torch without it


@needs_cuda
def test_cuda_graphs_train_on_cuda(tmp_path):
    torch._dynamo.reset()
    trainer = digits_trainer(tmp_path, *COMPILED, "trainer.cuda_graphs=true", device="cuda")
    result = trainer.fit()
    assert result["steps"] == 3 * (len(trainer.data.train) // 100)
    assert result["val"]["accuracy"] > 0.8
    assert json.dumps(result["history"])  # plain floats, read back from the device

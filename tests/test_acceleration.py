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
from mlpkit.model import build_model
from mlpkit.objective import build_objective
from mlpkit.trainer import Trainer
from tests.conftest import FAST, compose_config, run_cli

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def digits_trainer(tmp_path, device: str = "cpu", batch_size: int = 100, **settings) -> Trainer:
    data = build_data({"source": "digits", "val_fraction": 0.15, "test_fraction": 0.15}, torch.device(device))
    objective = build_objective("auto", "auto", data.task, data.name, data.n_classes)
    torch.manual_seed(0)
    model = build_model(data.in_features, objective.out_features, [32, 32], "relu", {}, objective.head)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return Trainer(model, objective, optimizer, data, max_epochs=3, batch_size=batch_size, seed=0,
                   checkpoint_dir=tmp_path, **settings)


@pytest.mark.slow
def test_bf16_mixed_runs_the_forward_pass_in_bfloat16_and_still_learns(tmp_path):
    trainer = digits_trainer(tmp_path, precision="bf16-mixed")
    dtypes = []
    trainer.model.linear1.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    result = trainer.fit()
    assert set(dtypes) == {torch.bfloat16}  # training steps and evaluations alike
    assert result["val"]["accuracy"] > 0.8  # 10 classes: chance is 0.1
    assert trainer.model.linear1.weight.dtype == torch.float32  # the weights stay float32


@pytest.mark.slow
def test_compiled_step_drops_the_last_partial_batch_and_learns(tmp_path):
    torch._dynamo.reset()
    trainer = digits_trainer(tmp_path, compile_step=True)
    result = trainer.fit()
    train_rows = len(trainer.data.train)
    assert train_rows % 100 != 0  # a partial batch exists, and is dropped
    assert result["steps"] == 3 * (train_rows // 100)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really went through dynamo
    assert result["val"]["accuracy"] > 0.8
    assert load_checkpoint(tmp_path / "last.pt")["step"] == result["steps"]


def test_compile_refuses_a_batch_larger_than_the_training_split(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.batch_size=5000 is not valid: expected at most 1257 "):
        digits_trainer(tmp_path, batch_size=5000, compile_step=True)


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
    ("trainer.precision=fp16", "trainer.precision=fp16 is not valid: expected 32 or bf16-mixed"),
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


def test_tf32_switch_sets_cudas_float32_matmul_precision_and_leaves_cpu_alone():
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        set_matmul_precision(torch.device("cpu"), True)
        assert torch.backends.cuda.matmul.fp32_precision == before
        set_matmul_precision(torch.device("cuda"), True)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        set_matmul_precision(torch.device("cuda"), False)
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision = before


@needs_cuda
def test_cuda_graphs_train_on_cuda(tmp_path):
    torch._dynamo.reset()
    trainer = digits_trainer(tmp_path, device="cuda", compile_step=True, cuda_graphs=True)
    result = trainer.fit()
    assert result["steps"] == 3 * (len(trainer.data.train) // 100)
    assert result["val"]["accuracy"] > 0.8
    assert json.dumps(result["history"])  # plain floats, read back from the device

"""The real `python train.py` (its run directory, TensorBoard files and exit codes), and the same run
function in-process: its numbers, its objective, and the combinations it refuses."""
import json
import math

import pytest
from omegaconf import OmegaConf

import mlpkit
from mlpkit.cli import run
from mlpkit.errors import EXIT_CONFIG, ConfigError
from tests.conftest import CONFIG_DIR, FAST, compose_config, read_scalars, run_cli

DATASETS = {"digits": "accuracy", "breast_cancer": "accuracy", "diabetes": "rmse"}


def check_metrics_and_scalars(run_dir, dataset: str) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["steps"] > 0 and metrics["samples_per_second"] > 0
    for split in ("train", "val", "test"):
        assert math.isfinite(metrics[split]["loss"])
        assert DATASETS[dataset] in metrics[split]
    scalars = read_scalars(run_dir)
    expected = {"loss/train", "loss/val", f"{DATASETS[dataset]}/val",
                "grad_norm/linear1", "grad_norm/linear2", "grad_norm/linear3"}
    assert expected <= set(scalars)
    assert all(math.isfinite(v) for tag in expected for _, v in scalars[tag])


@pytest.mark.slow
def test_train_writes_tensorboard_metrics_and_summary(run_dir):
    result = run_cli(run_dir, "data=digits", *FAST, "model.hidden_sizes=[16,8]")  # the real command
    assert result.returncode == 0, result.stderr
    check_metrics_and_scalars(run_dir, "digits")
    assert f"tensorboard --logdir {run_dir}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(set(DATASETS) - {"digits"}))
def test_every_task_writes_its_metrics_and_tensorboard_scalars(tmp_path, dataset):
    run = mlpkit.train([f"data={dataset}", *FAST, "model.hidden_sizes=[16,8]"], run_dir=tmp_path / "run")
    check_metrics_and_scalars(run.dir, dataset)
    log = (run.dir / "train.log").read_text()  # what the command line prints
    assert f"tensorboard --logdir {run.dir}" in log and "Traceback" not in log


@pytest.mark.slow
def test_grad_norms_are_logged_every_n_steps(tmp_path):
    # digits: 1257 training samples, batch 100 -> 13 steps; logged at steps 0, 5, 10.
    run = mlpkit.train([*FAST, "trainer.batch_size=100", "trainer.log_every_n_steps=5"], run_dir=tmp_path / "run")
    scalars = read_scalars(run.dir)
    assert [step for step, _ in scalars["grad_norm/linear1"]] == [0, 5, 10]
    assert [step for step, _ in scalars["loss/val"]] == [13]


BAD_COMBINATIONS = [
    (["head=sigmoid", "loss=ce"], "loss=ce is not valid: expected head=softmax with loss=ce"),
    (["data=diabetes", "loss=ce"], "head/loss=softmax/ce is not valid"),
    (["data=digits", "head=identity", "loss=mse"], "head=identity is not valid"),
    (["model.hidden_sizes=[64,0]"], "model.hidden_sizes=[64,0] is not valid: expected a list of positive"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 is not valid: expected a finite positive number"),
    (["objective.metric=accuracy", "data=diabetes"], "objective.metric=accuracy is not valid"),
]


@pytest.mark.parametrize("overrides, message", BAD_COMBINATIONS, ids=[" ".join(c[0]) for c in BAD_COMBINATIONS])
def test_bad_combinations_stop_with_one_line_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as error:
        run(compose_config(*overrides, *FAST), tmp_path)  # what the CLI runs, in-process
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert error.value.exit_code == EXIT_CONFIG
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_bad_combination_stops_the_cli_with_one_line_and_exit_code_2(run_dir):
    overrides, message = BAD_COMBINATIONS[0]  # found once the data is loaded, not by validate
    result = run_cli(run_dir, *overrides, *FAST)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "Config error" in line]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_same_command_gives_the_same_numbers_twice_on_cpu(tmp_path):
    cfg = compose_config("trainer.max_epochs=2", "trainer.progress=false", "model.dropout=0.1",
                         "trainer.device=cpu")
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        run(cfg, directory)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (first, second)]
    assert metrics[0]["history"] == metrics[1]["history"]
    assert metrics[0]["test"] == metrics[1]["test"]
    assert read_scalars(first)["grad_norm/linear1"] == read_scalars(second)["grad_norm/linear1"]


@pytest.mark.slow
def test_training_learns_digits(tmp_path):
    cfg = compose_config("trainer.max_epochs=15", "trainer.progress=false")
    objective = run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9
    assert objective == metrics["val"]["loss"]


@pytest.mark.slow
def test_objective_metric_and_mode_choose_what_main_returns(tmp_path):
    cfg = compose_config("trainer.max_epochs=1", "trainer.progress=false",
                         "objective.metric=accuracy", "objective.mode=max")
    value = run(cfg, tmp_path)
    assert value == json.loads((tmp_path / "metrics.json").read_text())["val"]["accuracy"]


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["activation", "head", "loss", "model", "optimizer", "data", "trainer"])
def test_every_config_choice_composes(group):
    for choice in _choices(group):
        cfg = compose_config(f"{group}={choice}")
        assert OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_trains(tmp_path, optimizer):
    cfg = compose_config(f"optimizer={optimizer}", "trainer.max_epochs=1", "trainer.progress=false",
                         "model.hidden_sizes=[8]")
    assert math.isfinite(run(cfg, tmp_path))


@pytest.mark.slow
def test_run_logs_graph_activation_figure_and_decision_boundary(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = mlpkit.train(["data=moons", "activation=tanh", *FAST, "model.hidden_sizes=[8]"], run_dir=tmp_path / "run")
    accumulator = EventAccumulator(str(run.dir), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"activation/tanh", "decision_boundary/train", "gradient_flow"} <= set(tags["images"])
    assert tags["graph"] is True
    assert "model/text_summary" in tags["tensors"]

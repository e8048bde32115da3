"""The remedies on the model side: normalisation layers, skip connections, class weights, and the
experiment that shows them turn a vanishing gradient into a healthy one."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlpkit
from mlpkit.config import validate
from mlpkit.diagnostics import GradientMonitor
from mlpkit.errors import ConfigError
from mlpkit.evaluation import evaluate_run
from mlpkit.model import build_model, count_parameters, model_summary
from mlpkit.objective import build_objective
from mlpkit.prediction import predict_csv
from tests.conftest import ROOT, compose_config, read_scalars, run_cli, run_cli_in_one_interpreter


# --- normalisation and skip connections -----------------------------------------------------------
@pytest.mark.parametrize("norm, module", [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)])
def test_a_norm_layer_sits_between_each_hidden_linear_and_its_activation(norm, module):
    model = build_model(10, 3, [32, 16], "sigmoid", {}, "softmax", norm=norm, dropout=0.1)
    assert [name for name, _ in model.named_children()] == [
        "linear1", "norm1", "act1", "dropout1", "linear2", "norm2", "act2", "dropout2", "linear3", "head"]
    assert isinstance(model.norm1, module) and isinstance(model.norm2, module)
    assert model.norm1.weight.shape == (32,) and model.norm2.weight.shape == (16,)
    plain = build_model(10, 3, [32, 16], "sigmoid", {}, "softmax")
    assert count_parameters(model) == count_parameters(plain) + 2 * (32 + 16)  # each norm's gain and shift
    assert "norm1    " in model_summary(model)
    # the diagnostics still report per Linear layer and watch the activations' outputs
    monitor = GradientMonitor(model)
    assert monitor.names == ["linear1", "linear2", "linear3"]
    assert monitor.activations == {"linear1": model.act1, "linear2": model.act2}


def test_skip_connections_go_around_the_hidden_layers_whose_widths_match_and_say_where():
    torch.manual_seed(0)
    model = build_model(10, 3, [32, 64, 64, 16, 16], "tanh", {}, "softmax", residual=True)
    note = "residual: h + act(linear(h)) around linear3, linear5 (16->16, 64->64)"
    assert str(model).splitlines()[1] == f"  {note}"
    assert model_summary(model).splitlines()[-1] == note
    x = torch.randn(6, 10)
    h1 = torch.tanh(model.linear1(x))
    h2 = torch.tanh(model.linear2(h1))
    h3 = h2 + torch.tanh(model.linear3(h2))
    h4 = torch.tanh(model.linear4(h3))
    h5 = h4 + torch.tanh(model.linear5(h4))
    assert torch.allclose(model.logits(x), model.linear6(h5), atol=1e-6)
    with_norm = build_model(10, 3, [16, 16], "relu", {}, "softmax", norm="layer", residual=True)
    assert "residual: h + act(norm(linear(h))) around linear2 (16->16)" in str(with_norm)


@pytest.mark.parametrize("sizes", ["[128,64]", "[64]", "[]"])
def test_residual_without_a_layer_of_equal_widths_is_refused_naming_the_sizes(sizes):
    cfg = compose_config("model.residual=true", f"model.hidden_sizes={sizes}")
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert str(error.value).startswith(
        "model.residual=true is not valid: expected false, or model.hidden_sizes with two equal widths in a row, "
        "e.g. [64,64,64]")
    assert f"model.hidden_sizes={sizes} has no hidden layer after the first whose input and output widths match" \
        in str(error.value)


def test_bad_norm_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"^model.norm=group is not valid: expected one of none, batch, layer$"):
        validate(compose_config("model.norm=group"))


@pytest.mark.slow
def test_the_refusals_are_one_line_and_exit_2_through_the_cli(tmp_path):
    residual, weights = run_cli_in_one_interpreter([  # train.py twice, in one fresh interpreter
        (tmp_path / "run", ("model.residual=true", "model.hidden_sizes=[128,64]")),
        (tmp_path / "weights", ("loss.class_weights=[1,2]", "trainer.max_epochs=1"))])
    assert residual.returncode == 2
    assert residual.stderr.strip().splitlines() == [
        "Config error: model.residual=true is not valid: expected false, or model.hidden_sizes with two equal "
        "widths in a row, e.g. [64,64,64] (skips around linear2 and linear3). model.hidden_sizes=[128,64] has "
        "no hidden layer after the first whose input and output widths match, so h + act(linear(h)) cannot be "
        "added"]
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert weights.returncode == 2
    assert weights.stderr.strip().splitlines()[-1] == (
        "Config error: loss.class_weights=[1,2] is not valid: expected a list of 10 weights, one per class of "
        "data=digits (2 given), or none or balanced")


@pytest.mark.slow
def test_a_norm_and_residual_run_resumes_evaluates_and_predicts(tmp_path):
    run_dir = tmp_path / "run"
    model = ["model.norm=batch", "model.residual=true", "model.hidden_sizes=[16,16,16]", "activation=sigmoid",
             "trainer.progress=false"]
    first = run_cli(run_dir, *model, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr
    assert "(norm2): BatchNorm1d(16" in first.stderr
    assert "residual: h + act(norm(linear(h))) around linear2, linear3 (16->16)" in first.stderr
    # resumed through the command line's run function, in-process (test_resume.py resumes train.py for real)
    mlpkit.train([*model, "trainer.max_epochs=2", f"resume={run_dir}"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumes"]

    # diagnostics per Linear layer; norm layers have no tags of their own
    tags = read_scalars(run_dir)
    assert {f"grad_norm/linear{i}" for i in range(1, 5)} <= set(tags)
    assert {f"saturation/linear{i}" for i in range(1, 4)} <= set(tags)
    assert not [tag for tag in tags if "norm1" in tag or "/act" in tag]

    # evaluate (eval mode: BatchNorm's running statistics) gives the run's own test metrics
    # (the evaluate and predict commands' function in-process: test_evaluation.py and test_prediction.py run them)
    evaluate_run(run_dir, "last")
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert report["metrics"]["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)

    # predict: one row alone gets what it gets among others (no batch statistics at prediction time)
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.head(8)
    run = mlpkit.load_run(run_dir)
    assert not run.model.training
    together = run.predict_proba(frame)
    alone = np.concatenate([run.predict_proba(frame.iloc[[i]]) for i in range(len(frame))])
    assert np.allclose(together, alone, atol=1e-6)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    predict_csv(run_dir, tmp_path / "rows.csv", tmp_path / "pred.csv")
    with open(tmp_path / "pred.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["prediction"] for row in rows] == [str(label) for label in run.predict(frame)]  # digits: ints


# --- class weights --------------------------------------------------------------------------------
def test_balanced_weights_come_from_the_training_split_and_weight_only_the_training_loss():
    train = torch.tensor([0, 0, 0, 1, 1, 2])  # 6 samples: 3, 2 and 1 of each class
    objective = build_objective("auto", "auto", "multiclass", "toy", 3, class_weights="balanced",
                                train_targets=train)
    assert objective.class_weights == pytest.approx([6 / (3 * 3), 6 / (3 * 2), 6 / (3 * 1)])
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    weights = torch.tensor(objective.class_weights)
    assert torch.allclose(objective.loss(logits, y), F.cross_entropy(logits, y, weight=weights))
    assert torch.allclose(objective.metrics(logits, y)["loss"], F.cross_entropy(logits, y))


def test_binary_balanced_weighs_positives_by_negatives_over_positives():
    train = torch.tensor([0, 0, 0, 0, 1])
    objective = build_objective("auto", "auto", "binary", "toy", 2, class_weights="balanced", train_targets=train)
    w0, w1 = objective.class_weights
    assert w1 / w0 == pytest.approx(4.0)  # negatives / positives, as pos_weight=4 would
    logits, y = torch.randn(6, 1), torch.tensor([0, 1, 1, 0, 0, 1])
    each = F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.float(), reduction="none")
    sample = torch.tensor([w0, w1])[y]
    assert torch.allclose(objective.loss(logits, y), (each * sample).sum() / sample.sum())
    assert torch.allclose(objective.metrics(logits, y)["loss"],
                          F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.float()))


def test_a_weight_list_of_the_wrong_length_names_the_key_the_length_and_the_classes():
    with pytest.raises(ConfigError) as error:
        build_objective("auto", "auto", "multiclass", "digits", 10, class_weights=[1, 2, 3])
    assert str(error.value) == ("loss.class_weights=[1,2,3] is not valid: expected a list of 10 weights, one "
                                "per class of data=digits (3 given), or none or balanced")


@pytest.mark.parametrize("overrides, message", [
    (["loss=bce", "loss.pos_weight=3", "loss.class_weights=balanced"],
     "loss.class_weights=balanced is not valid: expected none when loss.pos_weight is set"),
    (["loss.class_weights=[1,0]"], "loss.class_weights=[1,0] is not valid: expected none, balanced or a list"),
    (["loss.class_weights=heavy"], "loss.class_weights=heavy is not valid: expected none, balanced or a list"),
])
def test_bad_class_weights_are_refused_before_any_data_loads(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert str(error.value).startswith(message)


# --- the lesson as one command ----------------------------------------------------------------------
@pytest.mark.slow
def test_the_remedies_experiment_turns_vanishing_into_healthy(tmp_path):
    result = run_cli(tmp_path / "unused", "-m", "experiment=remedies", "trainer.max_epochs=2",
                     "trainer.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = {path.name.split("_", 1)[1]: json.loads((path / "metrics.json").read_text())
            for path in (tmp_path / "sweep").iterdir() if (path / "metrics.json").is_file()}
    assert sorted(runs) == ["batchnorm", "relu", "residual", "sigmoid"]
    assert list(runs["sigmoid"]["gradient_health"]["verdicts"]) == ["vanishing"]
    for variant in ("batchnorm", "residual", "relu"):
        assert runs[variant]["gradient_health"]["healthy"] is True, variant
        assert runs[variant]["val"]["accuracy"] > runs["sigmoid"]["val"]["accuracy"] + 0.2, variant
    assert runs["sigmoid"]["val"]["accuracy"] < 0.2  # chance on ten classes
    report = (tmp_path / "sweep" / "sweep_report.md").read_text()
    assert re.search(r"\| variant=sigmoid \|.*\| vanishing \|", report)
    assert re.search(r"\| variant=batchnorm \|.*\| healthy \|", report)


def test_the_experiment_and_the_new_keys_are_listed_for_help():
    footer = (ROOT / "configs" / "hydra" / "default.yaml").read_text()
    assert "python train.py -m experiment=remedies" in footer
    assert "model.norm=batch" in footer


def test_batch_norm_refuses_a_batch_of_one_row_before_training():
    from mlpkit.model import check_batch_norm_batches

    with pytest.raises(ConfigError) as error:
        check_batch_norm_batches("batch", 129, 64)
    assert str(error.value) == (
        "trainer.batch_size=64 is not valid: expected a size that leaves no batch of one row with "
        "model.norm=batch, e.g. 65. 129 training rows in batches of 64 leave one row alone, and BatchNorm "
        "cannot normalise a single row")
    check_batch_norm_batches("batch", 129, 64, drop_last=True)  # compiled runs drop the partial batch
    check_batch_norm_batches("layer", 129, 64)  # LayerNorm normalises each row alone
    check_batch_norm_batches("batch", 130, 64)

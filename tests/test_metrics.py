"""The classification metrics (mlpkit.metrics) against sklearn.metrics, their directions, and a run
that reports them in its result, its HParams and a sweep report."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from mlpkit.metrics import CLASSIFICATION_METRICS, METRIC_MODES, REGRESSION_METRICS
from mlpkit.objective import build_objective
from tests.conftest import assembled

NEW_METRICS = ("balanced_accuracy", "f1_macro", "roc_auc", "log_loss")
HEADS = {  # (head, loss, task, classes)
    "binary, sigmoid head": ("sigmoid", "bce", "binary", 2),
    "binary, softmax head": ("softmax", "ce", "binary", 2),
    "multiclass": ("softmax", "ce", "multiclass", 5),
}


def random_split(classes: int, out_features: int, case: str, rows: int = 240, seed: int = 0):
    """Logits and targets: ``continuous`` scores; ``ties``: 20 distinct rows repeated, so every score
    is tied with others; ``missing class``: class 3 never a target but sometimes predicted;
    ``absent class``: class 3 neither a target nor predicted."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, out_features, generator=generator) * 2
    if case == "ties":
        logits = logits[:20][torch.randint(0, 20, (rows,), generator=generator)]
    targets = torch.randint(0, classes, (rows,), generator=generator)
    if case in ("missing class", "absent class"):
        targets[targets == 3] = 4
    if case == "absent class":
        logits[:, 3] = -20.0
    return logits, targets


def sklearn_metrics(head: str, classes: int, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The same metrics from scikit-learn, on float64 probabilities (no float32 saturation)."""
    y = targets.numpy()
    probabilities = (logits.double().sigmoid() if head == "sigmoid" else logits.double().softmax(dim=1)).numpy()
    predicted = (probabilities[:, 0] > 0.5 if head == "sigmoid" else probabilities.argmax(axis=1)).astype(int)
    positive = probabilities[:, 0] if head == "sigmoid" else probabilities[:, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns of the undefined per-class values it leaves out
        if classes == 2:
            auc = sk.roc_auc_score(y, positive) if len(np.unique(y)) == 2 else math.nan
        elif len(np.unique(y)) == classes:
            auc = sk.roc_auc_score(y, probabilities, multi_class="ovr", average="macro")
        else:  # sklearn's macro is NaN with a class absent; mlpkit averages the classes that are defined
            auc = float(np.nanmean([sk.roc_auc_score(y == c, probabilities[:, c])
                                    for c in range(classes) if 0 < (y == c).sum() < len(y)]))
        return {
            "accuracy": sk.accuracy_score(y, predicted),
            "balanced_accuracy": sk.balanced_accuracy_score(y, predicted),
            "f1_macro": sk.f1_score(y, predicted, average="macro", zero_division=0),
            "roc_auc": auc,
            "log_loss": sk.log_loss(y, positive if head == "sigmoid" else probabilities, labels=list(range(classes))),
        }


def mlpkit_metrics(objective, logits, targets) -> dict[str, float]:
    return {name: value.item() for name, value in objective.metrics(logits, targets).items()}


@pytest.mark.parametrize(("heads", "case"), [
    *((heads, case) for heads in HEADS for case in ("continuous", "ties")),
    ("multiclass", "missing class"), ("multiclass", "absent class"),  # a binary one: one class present, below
])
def test_each_metric_equals_sklearns(heads, case):
    head, loss, task, classes = HEADS[heads]
    objective = build_objective(head, loss, task, "random", n_classes=classes)
    logits, targets = random_split(classes, objective.out_features, case)
    ours, theirs = mlpkit_metrics(objective, logits, targets), sklearn_metrics(head, classes, logits, targets)
    assert set(ours) == set(CLASSIFICATION_METRICS)
    for name, expected in theirs.items():
        assert ours[name] == pytest.approx(expected, rel=1e-5, abs=1e-7), name


def test_ties_share_their_average_rank():
    """Four rows, two of them tied across the classes: AUC = (1 + 0.5 + 1 + 1) / 4 pairs."""
    objective = build_objective("sigmoid", "bce", "binary", "ties")
    logits, targets = torch.tensor([[0.0], [1.0], [1.0], [2.0]]), torch.tensor([0, 0, 1, 1])
    assert mlpkit_metrics(objective, logits, targets)["roc_auc"] == pytest.approx(0.875)
    assert sk.roc_auc_score(targets.numpy(), logits.squeeze(1).numpy()) == pytest.approx(0.875)


def test_saturated_probabilities_still_rank_by_their_logits():
    """Logits 20 and 30 both round to a float32 probability of 1; the AUC still tells them apart."""
    objective = build_objective("sigmoid", "bce", "binary", "saturated")
    logits, targets = torch.tensor([[20.0], [30.0]]), torch.tensor([0, 1])
    assert objective.predict(logits)[0] == objective.predict(logits)[1]
    assert mlpkit_metrics(objective, logits, targets)["roc_auc"] == 1.0


@pytest.mark.parametrize("heads", list(HEADS))
def test_log_loss_clips_confident_mistakes_as_sklearn_does(heads):
    """A wrong class at probability ~1e-17: sklearn clips float32 probabilities to [eps, 1 - eps]."""
    head, loss, task, classes = HEADS[heads]
    objective = build_objective(head, loss, task, "confident", n_classes=classes)
    logits = torch.zeros(4, objective.out_features)
    targets = torch.tensor([0, 1, 1, 0])
    if head == "sigmoid":
        logits[:, 0] = torch.tensor([40.0, -40.0, 40.0, -40.0])  # the first two confidently wrong
    else:
        logits[range(4), [1, 0, 1, 0]] = 40.0
    probabilities = objective.predict(logits).numpy()  # float32, as the device has them
    expected = sk.log_loss(targets.numpy(), probabilities[:, 0] if head == "sigmoid" else probabilities,
                           labels=list(range(classes)))
    ours = mlpkit_metrics(objective, logits, targets)["log_loss"]
    assert ours == pytest.approx(expected, rel=1e-5)
    assert ours == pytest.approx(-math.log(np.finfo(np.float32).eps) / 2, rel=1e-3)  # two clipped rows of four


@pytest.mark.parametrize(("loss", "label_smoothing"), [("mse", 0.0), ("ce", 0.2)])
def test_log_loss_is_the_cross_entropy_whatever_the_training_loss(loss, label_smoothing):
    objective = build_objective("softmax", loss, "multiclass", "random", n_classes=5, label_smoothing=label_smoothing)
    logits, targets = random_split(5, 5, "continuous")
    ours = mlpkit_metrics(objective, logits, targets)
    assert ours["log_loss"] == pytest.approx(sklearn_metrics("softmax", 5, logits, targets)["log_loss"], rel=1e-5)
    assert ours["loss"] != pytest.approx(ours["log_loss"], rel=1e-3)


@pytest.mark.parametrize("heads", list(HEADS))
def test_a_split_with_one_class_has_no_auc_and_every_other_metric(heads):
    head, loss, task, classes = HEADS[heads]
    objective = build_objective(head, loss, task, "one class", n_classes=classes)
    logits, _ = random_split(classes, objective.out_features, "continuous", rows=30)
    targets = torch.ones(30, dtype=torch.long)
    ours, theirs = mlpkit_metrics(objective, logits, targets), sklearn_metrics(head, classes, logits, targets)
    assert math.isnan(ours.pop("roc_auc")) and math.isnan(theirs.pop("roc_auc"))
    for name, expected in theirs.items():
        assert ours[name] == pytest.approx(expected, rel=1e-5, abs=1e-7), name


@pytest.mark.parametrize("heads", list(HEADS))
def test_metrics_read_nothing_back_to_the_host(heads):
    """On meta tensors, which hold no values: an .item(), a bincount or a data-dependent shape raises."""
    head, loss, task, classes = HEADS[heads]
    objective = build_objective(head, loss, task, "meta", n_classes=classes)
    logits = torch.empty(1000, objective.out_features, device="meta")
    values = objective.metrics(logits, torch.empty(1000, dtype=torch.long, device="meta"))
    assert list(values) == list(CLASSIFICATION_METRICS)
    assert all(value.shape == () for value in values.values())


def test_every_metric_has_a_direction_that_a_perfect_model_beats_a_random_one():
    assert set(METRIC_MODES) == set(CLASSIFICATION_METRICS) | set(REGRESSION_METRICS)
    objective = build_objective("softmax", "ce", "multiclass", "random", n_classes=5)
    logits, targets = random_split(5, 5, "continuous")
    perfect = mlpkit_metrics(objective, torch.nn.functional.one_hot(targets, 5).float() * 10, targets)
    guessed = mlpkit_metrics(objective, logits, targets)
    regression = build_objective("identity", "mse", "regression", "random")
    truth = torch.randn(100, 1, generator=torch.Generator().manual_seed(1))
    perfect.update(mlpkit_metrics(regression, truth + 0.01, truth))
    guessed.update(mlpkit_metrics(regression, torch.zeros_like(truth) + 0.5, truth))
    for name, mode in METRIC_MODES.items():
        assert (perfect[name] < guessed[name]) == (mode == "min"), name


def test_a_split_too_small_for_an_auc_does_not_fail_the_run():
    """trainer.fast_dev_run with batch_size=1 evaluates one row of each split: roc_auc is NaN
    (undefined), which the final non-finite check leaves out; the run finishes."""
    parts = assembled("data=breast_cancer", "trainer.fast_dev_run=true", "trainer.batch_size=1")
    result = parts.trainer.fit()
    assert math.isnan(result["val"]["roc_auc"])
    assert all(math.isfinite(value) for name, value in result["val"].items() if name != "roc_auc")


# --- a run -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def breast_cancer_run():
    """One epoch on breast_cancer, judged by macro F1 (objective.metric=f1_macro is accepted)."""
    parts = assembled("data=breast_cancer", "trainer.max_epochs=2", "objective.metric=f1_macro",
                      "objective.mode=max")
    return parts, parts.trainer.fit()


def test_a_run_reports_every_metric_for_val_and_test(breast_cancer_run):
    parts, result = breast_cancer_run
    for split in ("val", "test"):
        assert list(result[split]) == list(CLASSIFICATION_METRICS)
        assert all(0.0 <= result[split][name] <= 1.0 for name in ("balanced_accuracy", "f1_macro", "roc_auc"))
    assert all(f"{name}/val" in entry for entry in result["history"] for name in CLASSIFICATION_METRICS)
    assert result["best"]["metric"] == "f1_macro/val"
    test = parts.data.test
    parts.model.eval()
    with torch.no_grad():
        logits = parts.model.logits(test.x)
    assert result["test"]["roc_auc"] == pytest.approx(
        sk.roc_auc_score(test.y.numpy(), logits.squeeze(1).numpy() if logits.shape[1] == 1 else logits[:, 1].numpy()))


def test_hparams_table_shows_the_new_metrics(breast_cancer_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from mlpkit.tensorboard import TensorBoardLogger, final_metrics

    _, result = breast_cancer_run
    logger = TensorBoardLogger(tmp_path)
    logger.log_hparams({"activation": "relu"}, final_metrics(result), step=1)
    logger.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    plugin_data = [plugin_data_pb2.HParamsPluginData.FromString(raw)
                   for raw in accumulator.PluginTagToContent("hparams").values()]
    experiment = next(data.experiment for data in plugin_data if data.HasField("experiment"))
    tags = {info.name.tag for info in experiment.metric_infos}
    assert {f"final/{split}_{name}" for split in ("val", "test") for name in NEW_METRICS} <= tags
    assert accumulator.Scalars("final/val_f1_macro")[-1].value == pytest.approx(result["val"]["f1_macro"])


def test_sweep_report_shows_the_new_metrics(breast_cancer_run, tmp_path):
    import yaml

    from mlpkit.sweeps import write_report

    _, result = breast_cancer_run
    for index, lr in enumerate((0.01, 0.1)):
        job = tmp_path / str(index)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}"]))
        (job / "metrics.json").write_text(json.dumps({**result, "status": "completed"}))
    text = write_report(tmp_path, "f1_macro", "max")
    header = next(line for line in text.splitlines() if line.startswith("| rank |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert columns[2] == "val_f1_macro"  # the objective first
    assert {f"{split}_{name}" for split in ("val", "test") for name in NEW_METRICS} <= set(columns)
    assert f"| {result['val']['roc_auc']:.4g} |" in text


@pytest.mark.parametrize("metric, mode", [("loss", "min"), ("f1_macro", "max"), ("roc_auc", "max"),
                                          ("log_loss", "min"), ("balanced_accuracy", "max")])
def test_the_mode_is_the_metrics_own_unless_given(metric, mode):
    """objective.mode=auto: the best checkpoint, early stopping, plateau and the sweeper follow the metric's way."""
    from mlpkit.config import validate
    from tests.conftest import assembled, compose_config

    parts = assembled("data=breast_cancer", f"objective.metric={metric}", "trainer.max_epochs=1")
    assert parts.trainer.settings.mode == mode and parts.trainer.best["mode"] == mode
    assert assembled("data=breast_cancer", f"objective.metric={metric}", "objective.mode=min").trainer.settings.mode \
        == "min"
    from mlpkit.new_dirs import register_resolvers

    register_resolvers()
    cfg = compose_config("hparams_search=optuna", f"objective.metric={metric}")
    validate(cfg)


def test_the_optuna_direction_follows_the_metric():
    from hydra import compose, initialize_config_dir

    from mlpkit.new_dirs import register_resolvers
    from tests.conftest import CONFIG_DIR

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for metric, direction in (("accuracy", "maximize"), ("loss", "minimize")):
            cfg = compose("train", overrides=["hparams_search=optuna", f"objective.metric={metric}"],
                          return_hydra_config=True)
            assert cfg.hydra.sweeper.direction == direction


def test_a_metric_the_task_does_not_report_names_the_ones_it_does():
    from mlpkit.errors import ConfigError
    from tests.conftest import assembled

    with pytest.raises(ConfigError, match=r"objective.metric=r2 is not valid: expected one of loss, accuracy, "
                                          r"balanced_accuracy, f1_macro, roc_auc, log_loss for a binary task"):
        assembled("data=breast_cancer", "objective.metric=r2")

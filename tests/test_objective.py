import pytest
import torch

from mlpkit.errors import ConfigError
from mlpkit.objective import build_objective


@pytest.mark.parametrize(
    "task, n_classes, expected",
    [("multiclass", 10, ("softmax", "ce", 10)), ("binary", 2, ("sigmoid", "bce", 1)),
     ("regression", 0, ("identity", "mse", 1))],
)
def test_auto_picks_the_natural_pair_for_the_task(task, n_classes, expected):
    objective = build_objective("auto", "auto", task, "data", n_classes)
    assert (objective.head, objective.loss_name, objective.out_features) == expected


def test_auto_head_follows_an_explicit_loss():
    assert build_objective("auto", "ce", "binary", "d", 2).head == "softmax"
    assert build_objective("auto", "ce", "binary", "d", 2).out_features == 2
    assert build_objective("sigmoid", "auto", "binary", "d", 2).loss_name == "bce"


@pytest.mark.parametrize(
    "head, loss, task, message",
    [
        ("sigmoid", "ce", "binary", r"loss=ce is not valid: expected head=softmax with loss=ce"),
        ("softmax", "bce", "multiclass", r"loss=bce is not valid: expected head=sigmoid.*10 competing"),
        ("softmax", "ce", "regression", r"head/loss=softmax/ce is not valid: expected head=identity loss=mse"),
        ("identity", "mse", "multiclass", r"head=identity is not valid: .*try head=softmax loss=ce"),
        ("sigmoid", "bce", "multiclass", r"head=sigmoid is not valid: expected head=softmax"),
    ],
)
def test_combinations_that_cannot_train_are_refused_with_keys_and_choices(head, loss, task, message):
    with pytest.raises(ConfigError, match=message):
        build_objective(head, loss, task, "mydata", 10)


def test_cross_entropy_is_computed_on_logits_and_stays_finite_for_extreme_logits():
    objective = build_objective("softmax", "ce", "multiclass", "d", 3)
    logits = torch.tensor([[1000.0, -1000.0, 0.0]])
    loss = objective.loss(logits, torch.tensor([1]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(2000.0)
    # The naive form, log of a softmax probability that underflowed to 0, is infinite.
    assert torch.isinf(-torch.log(logits.softmax(-1)[0, 1]))


def test_bce_is_computed_on_logits_and_stays_finite():
    objective = build_objective("sigmoid", "bce", "binary", "d", 2)
    loss = objective.loss(torch.tensor([[-200.0]]), torch.tensor([1]))
    assert loss.item() == pytest.approx(200.0)


def test_predict_applies_the_head():
    softmax = build_objective("softmax", "ce", "multiclass", "d", 3)
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert torch.allclose(softmax.predict(logits), logits.softmax(-1))
    sigmoid = build_objective("sigmoid", "bce", "binary", "d", 2)
    assert torch.allclose(sigmoid.predict(torch.tensor([[0.0]])), torch.tensor([[0.5]]))
    assert sigmoid.predict_class(torch.tensor([[0.3], [-0.3]])).tolist() == [1, 0]


def test_regression_metrics_are_in_original_units():
    objective = build_objective("identity", "mse", "regression", "d", target_mean=100.0, target_std=10.0)
    standardized_targets = torch.tensor([[0.0], [1.0]])       # 100 and 110 in original units
    metrics = objective.metrics(torch.tensor([[0.5], [1.0]]), standardized_targets)  # predicts 105, 110
    assert metrics["mae"].item() == pytest.approx(2.5)
    assert metrics["rmse"].item() == pytest.approx((25 / 2) ** 0.5)
    assert metrics["r2"].item() == pytest.approx(1 - 25 / 50)


def test_mse_with_softmax_compares_probabilities_with_one_hot_targets():
    objective = build_objective("softmax", "mse", "multiclass", "d", 2)
    loss = objective.loss(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(0.25)  # (0.5-1)^2 and (0.5-0)^2, averaged

import pytest
import torch
from torch import nn

from mlpkit.errors import ConfigError
from mlpkit.model import build_model


def test_printout_reads_like_a_classic_three_layer_network():
    model = build_model(4, 1, [20], "relu", {}, "sigmoid")
    assert str(model) == (
        "MLP(\n"
        "  (linear1): Linear(in_features=4, out_features=20, bias=True)\n"
        "  (act1): ReLU()\n"
        "  (linear2): Linear(in_features=20, out_features=1, bias=True)\n"
        "  (head): Sigmoid()\n"
        ")"
    )


def test_depth_follows_hidden_sizes_and_dropout_sits_after_each_activation():
    model = build_model(10, 3, [32, 16, 8], "tanh", {}, "softmax", dropout=0.2)
    names = [name for name, _ in model.named_children()]
    assert names == ["linear1", "act1", "dropout1", "linear2", "act2", "dropout2",
                     "linear3", "act3", "dropout3", "linear4", "head"]
    assert [m.out_features for m in model.linear_layers().values()] == [32, 16, 8, 3]


def test_forward_applies_the_head_and_logits_do_not():
    torch.manual_seed(0)
    model = build_model(5, 4, [8], "relu", {}, "softmax")
    x = torch.randn(7, 5)
    probabilities = model(x)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(7))
    assert torch.allclose(probabilities, model.logits(x).softmax(dim=1))


def test_linear_model_when_no_hidden_layers():
    model = build_model(3, 1, [], "relu", {}, "identity")
    assert list(model.linear_layers()) == ["linear1"]


@pytest.mark.parametrize("init", ["xavier_uniform", "xavier_normal", "kaiming_uniform",
                                  "kaiming_normal", "orthogonal"])
def test_init_sets_zero_biases_and_a_scale_chosen_for_the_activation(init):
    torch.manual_seed(0)
    relu = build_model(512, 10, [512, 512], "relu", {}, "softmax", init=init)
    sigmoid = build_model(512, 10, [512, 512], "sigmoid", {}, "softmax", init=init)
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in relu.linear_layers().values())
    # relu's gain is sqrt(2), sigmoid's 1 (kaiming uses the activation's gain too).
    ratio = relu.linear2.weight.std() / sigmoid.linear2.weight.std()
    assert ratio.item() == pytest.approx(2 ** 0.5, rel=0.05)


def test_kaiming_normal_keeps_relu_activations_from_shrinking_with_depth():
    torch.manual_seed(0)
    model = build_model(256, 10, [256] * 8, "relu", {}, "softmax", init="kaiming_normal")
    x = torch.randn(1024, 256)
    for name, module in model.named_children():
        x = module(x)
        if name == "act8":
            break
    # mean square of a kaiming-initialised relu stack stays of order 1 (the input's), not 2**-8.
    assert 0.3 < x.pow(2).mean().item() < 3


def test_default_init_is_torchs_own():
    torch.manual_seed(0)
    model = build_model(6, 2, [4], "relu", {}, "softmax")
    torch.manual_seed(0)
    reference = nn.Linear(6, 4)
    assert torch.equal(model.linear1.weight, reference.weight)


def test_model_summary_counts_parameters_per_layer():
    from mlpkit.model import model_summary

    model = build_model(4, 3, [5], "prelu", {"num_parameters": 1, "init": 0.25}, "softmax")
    lines = model_summary(model).splitlines()
    assert lines[0].split() == ["layer", "module", "out", "parameters"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["linear1"] == ["linear1", "Linear", "5", "25"]      # 4*5 weights + 5 biases
    assert rows["act1"][-1] == "1"                                    # PReLU's own slope
    assert rows["linear2"] == ["linear2", "Linear", "3", "18"]
    assert rows["total"] == ["total", "44"]


def test_a_bias_that_is_not_true_or_false_is_refused():
    # nn.Linear(bias="false") would build a bias: the text is truthy
    with pytest.raises(ConfigError, match=r"^model.bias=false is not valid: expected true or false$"):
        build_model(4, 2, [3], "relu", {}, "softmax", bias="false")

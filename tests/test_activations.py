import pytest
import torch

from mlpkit.activations import ACTIVATIONS, build_activation
from mlpkit.errors import ConfigError
from mlpkit.model import build_model
from tests.conftest import CONFIG_DIR, compose_config

ACTIVATION_NAMES = sorted(ACTIVATIONS)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_every_activation_config_builds_and_trains_a_step(name):
    cfg = compose_config(f"activation={name}")
    params = {k: v for k, v in cfg.activation.items() if k != "name"}
    torch.manual_seed(0)
    model = build_model(4, 3, [8, 8], name, params, "softmax")
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    before = model.linear1.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model.logits(x), y)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.linear1.weight)


def test_every_registered_activation_builds_the_torch_module_it_names():
    # the table holds class names (it imports no torch); a misspelt one would fail only here or in a run
    for name, spec in ACTIVATIONS.items():
        module = build_activation(name, {}, width=4)
        assert isinstance(module, torch.nn.Module) and type(module) is getattr(torch.nn, spec.torch_class), name
        assert module(torch.linspace(-2, 2, 8)).shape == (8,), name


def test_registry_matches_config_files():
    files = sorted(p.stem for p in (CONFIG_DIR / "activation").glob("*.yaml"))
    assert files == ACTIVATION_NAMES


@pytest.mark.parametrize(
    "name, override, attribute, expected",
    [
        ("leaky", "activation.negative_slope=0.2", "negative_slope", 0.2),
        ("elu", "activation.alpha=0.5", "alpha", 0.5),
        ("hardtanh", "activation.max_val=2.0", "max_val", 2.0),
        ("rrelu", "activation.lower=0.05", "lower", 0.05),
        ("gelu", "activation.approximate=tanh", "approximate", "tanh"),
        ("celu", "activation.alpha=2.0", "alpha", 2.0),
        ("softplus", "activation.beta=3.0", "beta", 3.0),
    ],
)
def test_activation_parameters_reach_the_torch_module(name, override, attribute, expected):
    cfg = compose_config(f"activation={name}", override)
    params = {k: v for k, v in cfg.activation.items() if k != "name"}
    module = build_activation(name, params, width=8)
    assert getattr(module, attribute) == expected


def test_prelu_gets_its_own_parameters_in_every_layer():
    model = build_model(4, 2, [8, 8, 8], "prelu", {"num_parameters": 1, "init": 0.1}, "softmax")
    slopes = [model.act1.weight, model.act2.weight, model.act3.weight]
    assert len({id(p) for p in slopes}) == 3
    assert all(p.item() == pytest.approx(0.1) for p in slopes)
    per_unit = build_model(4, 2, [8, 5], "prelu", {"num_parameters": 8, "init": 0.25}, "softmax")
    assert per_unit.act1.weight.shape == (8,) and per_unit.act2.weight.shape == (5,)


def test_derivative_bounds_are_what_the_lessons_teach():
    # Autograd's derivative maximum agrees with the registry: 0.25 for sigmoid, 1 for tanh.
    x = torch.linspace(-6, 6, 2001, requires_grad=True)
    for name in ("sigmoid", "tanh", "relu"):
        (grad,) = torch.autograd.grad(build_activation(name, {}, width=1)(x).sum(), x)
        assert grad.max().item() == pytest.approx(ACTIVATIONS[name].max_derivative, abs=1e-3)


def test_unknown_activation_parameter_names_the_key_and_allowed():
    with pytest.raises(ConfigError, match=r"activation.slope=0.3 .*leaky takes negative_slope"):
        build_activation("leaky", {"slope": 0.3}, width=4)

"""The registry of activations: config name -> torch module, plus what init and diagnostics need."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ActivationSpec:
    """One registered activation.

    ``family`` groups activations by how they fail: ``relu`` units can die (output exactly 0),
    ``squashing`` units saturate (derivative near 0 far from the origin), ``smooth`` ones do neither.
    ``max_derivative`` is the derivative's largest value, the factor that bounds how much gradient
    one layer can pass back (0.25 for sigmoid is why deep sigmoid stacks vanish).
    ``gain`` names the ``nn.init.calculate_gain`` nonlinearity used for xavier/kaiming/orthogonal init.
    """

    module: Callable[..., nn.Module]
    family: str
    max_derivative: float
    gain: str
    parameters: tuple[str, ...] = ()


ACTIVATIONS: dict[str, ActivationSpec] = {
    "relu": ActivationSpec(nn.ReLU, "relu", 1.0, "relu"),
    "sigmoid": ActivationSpec(nn.Sigmoid, "squashing", 0.25, "sigmoid"),
    "tanh": ActivationSpec(nn.Tanh, "squashing", 1.0, "tanh"),
    "leaky": ActivationSpec(nn.LeakyReLU, "relu", 1.0, "leaky_relu", ("negative_slope",)),
    "prelu": ActivationSpec(nn.PReLU, "relu", 1.0, "leaky_relu", ("num_parameters", "init")),
    "elu": ActivationSpec(nn.ELU, "smooth", 1.0, "relu", ("alpha",)),
    "hardtanh": ActivationSpec(nn.Hardtanh, "squashing", 1.0, "tanh", ("min_val", "max_val")),
    "rrelu": ActivationSpec(nn.RReLU, "relu", 1.0, "leaky_relu", ("lower", "upper")),
    "gelu": ActivationSpec(nn.GELU, "smooth", 1.129, "relu", ("approximate",)),
    "silu": ActivationSpec(nn.SiLU, "smooth", 1.1, "relu"),
    "selu": ActivationSpec(nn.SELU, "smooth", 1.7581, "selu"),
    "celu": ActivationSpec(nn.CELU, "smooth", 1.0, "relu", ("alpha",)),
    "softplus": ActivationSpec(nn.Softplus, "smooth", 1.0, "relu", ("beta", "threshold")),
    "mish": ActivationSpec(nn.Mish, "smooth", 1.09, "relu"),
}


def activation_spec(name: str) -> ActivationSpec:
    from mlpkit.config import ConfigError

    if name not in ACTIVATIONS:
        raise ConfigError("activation.name", name, f"one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def activation_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments among ``params`` (the activation config minus its name), checked."""
    from mlpkit.config import ConfigError

    spec = activation_spec(name)
    unknown = sorted(set(params) - set(spec.parameters))
    if unknown:
        allowed = ", ".join(spec.parameters) or "no parameters"
        raise ConfigError(f"activation.{unknown[0]}", params[unknown[0]], f"{name} takes {allowed}")
    return dict(params)


def build_activation(name: str, params: dict[str, Any], width: int) -> nn.Module:
    """A fresh module for one layer (PReLU gets its own parameters in every layer)."""
    kwargs = activation_params(name, params)
    if name == "prelu" and kwargs.get("num_parameters") not in (None, 1):
        kwargs["num_parameters"] = width  # one learned slope per unit of this layer
    return ACTIVATIONS[name].module(**kwargs)


def init_gain_args(name: str, params: dict[str, Any]) -> tuple[str, float | None]:
    """(nonlinearity, param) for ``nn.init.calculate_gain`` and kaiming init."""
    spec = activation_spec(name)
    if spec.gain == "leaky_relu":
        slope = {"leaky": params.get("negative_slope", 0.01), "prelu": params.get("init", 0.25)}
        if name == "rrelu":
            slope["rrelu"] = (params.get("lower", 1 / 8) + params.get("upper", 1 / 3)) / 2
        return "leaky_relu", float(slope[name])
    return spec.gain, None

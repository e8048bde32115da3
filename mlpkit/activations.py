"""The registry of activations: config name -> torch module, plus what init and diagnostics need.

A name is resolved once, by ``resolve_activation``, into an ``Activation`` (the spec and the checked
parameters); the model keeps it, and init, the gradient monitor and the figures read it from there.
Importing it imports no torch: config validation and the verdicts (``mlpkit.verdicts``) read the
table, and only building a module (``Activation.module``) needs torch.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlpkit.errors import ConfigError, is_int, is_number

if TYPE_CHECKING:
    import torch
    from torch import nn

    # (module, its input, its output) -> f'(input) / max f', elementwise, from what the layer computed
    DerivativeShare = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

SATURATED_BELOW = 0.05  # a unit is saturated where its derivative is below this share of the maximum


def _sigmoid_share(module: nn.Module, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return 4 * out * (1 - out)  # f' = f (1 - f), at most 0.25


def _tanh_share(module: nn.Module, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return 1 - out * out  # f' = 1 - f^2, at most 1


def _hardtanh_share(module: nn.Module, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return ((pre > module.min_val) & (pre < module.max_val)).float()  # f' is 1 inside [min, max], else 0


@dataclass(frozen=True)
class ActivationSpec:
    """One registered activation.

    ``torch_class`` names its class in ``torch.nn`` (a name, not the class: the table imports no torch).
    ``family`` groups activations by how they fail: ``relu`` units can die (output exactly 0),
    ``squashing`` units saturate (derivative near 0 far from the origin), ``smooth`` ones do neither.
    ``max_derivative`` is the derivative's largest value, the factor that bounds how much gradient
    one layer can pass back (0.25 for sigmoid is why deep sigmoid stacks vanish).
    ``gain`` names the ``nn.init.calculate_gain`` nonlinearity used for xavier/kaiming/orthogonal init;
    ``slope`` gives its negative slope from the parameters (leaky_relu gains only).
    ``derivative_share`` gives f'/max f' from a layer's input and output (squashing family): its
    mean is the share of gradient the layer lets through, and a unit with a share below
    ``SATURATED_BELOW`` is saturated. ``reads_input``: the rule needs the input, not only the output.
    """

    torch_class: str
    family: str
    max_derivative: float
    gain: str
    parameters: tuple[str, ...] = ()
    slope: Callable[[dict[str, Any]], float] | None = None
    derivative_share: DerivativeShare | None = None
    reads_input: bool = False

    def saturated(self, module: nn.Module, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Where the derivative is below SATURATED_BELOW of its maximum."""
        return self.derivative_share(module, pre, out) < SATURATED_BELOW


ACTIVATIONS: dict[str, ActivationSpec] = {
    "relu": ActivationSpec("ReLU", "relu", 1.0, "relu"),
    "sigmoid": ActivationSpec("Sigmoid", "squashing", 0.25, "sigmoid", derivative_share=_sigmoid_share),
    "tanh": ActivationSpec("Tanh", "squashing", 1.0, "tanh", derivative_share=_tanh_share),
    "leaky": ActivationSpec("LeakyReLU", "relu", 1.0, "leaky_relu", ("negative_slope",),
                            slope=lambda p: p.get("negative_slope", 0.01)),
    "prelu": ActivationSpec("PReLU", "relu", 1.0, "leaky_relu", ("num_parameters", "init"),
                            slope=lambda p: p.get("init", 0.25)),
    "elu": ActivationSpec("ELU", "smooth", 1.0, "relu", ("alpha",)),
    "hardtanh": ActivationSpec("Hardtanh", "squashing", 1.0, "tanh", ("min_val", "max_val"),
                               derivative_share=_hardtanh_share, reads_input=True),
    "rrelu": ActivationSpec("RReLU", "relu", 1.0, "leaky_relu", ("lower", "upper"),
                            slope=lambda p: (p.get("lower", 1 / 8) + p.get("upper", 1 / 3)) / 2),
    "gelu": ActivationSpec("GELU", "smooth", 1.129, "relu", ("approximate",)),
    "silu": ActivationSpec("SiLU", "smooth", 1.1, "relu"),
    "selu": ActivationSpec("SELU", "smooth", 1.7581, "selu"),
    "celu": ActivationSpec("CELU", "smooth", 1.0, "relu", ("alpha",)),
    "softplus": ActivationSpec("Softplus", "smooth", 1.0, "relu", ("beta", "threshold")),
    "mish": ActivationSpec("Mish", "smooth", 1.09, "relu"),
}


def _is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


# parameter name -> (accepts the value, what is allowed): the same meaning in every activation that takes it
PARAMETER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "negative_slope": (_is_finite, "a number, e.g. 0.01"),
    "num_parameters": (lambda n: is_int(n) and n >= 1, "1 (one slope per layer) or an integer > 1 (one per unit)"),
    "init": (_is_finite, "a number, e.g. 0.25"),
    "alpha": (lambda a: _is_finite(a) and a != 0, "a non-zero number, e.g. 1.0"),
    "min_val": (_is_finite, "a number, e.g. -1.0"),
    "max_val": (_is_finite, "a number, e.g. 1.0"),
    "lower": (_is_finite, "a number, e.g. 0.125"),
    "upper": (_is_finite, "a number, e.g. 0.333"),
    "approximate": (lambda a: a in ("none", "tanh"), "none or tanh"),
    "beta": (lambda b: _is_finite(b) and b > 0, "a positive number, e.g. 1.0"),
    "threshold": (_is_finite, "a number, e.g. 20.0"),
}
# (activation, smaller parameter, larger parameter, whether they may be equal): what torch asserts
ORDERED_PARAMETERS = (("hardtanh", "min_val", "max_val", False), ("rrelu", "lower", "upper", True))


def check_parameters(name: str, spec: ActivationSpec, params: dict[str, Any]) -> None:
    """ConfigError for the first parameter of ``name`` that is unknown or has a value it cannot take."""
    unknown = sorted(set(params) - set(spec.parameters))
    if unknown:
        allowed = ", ".join(spec.parameters) or "no parameters"
        raise ConfigError(f"activation.{unknown[0]}", params[unknown[0]], f"{name} takes {allowed}")
    for key, value in params.items():
        accepts, allowed = PARAMETER_RULES[key]
        if not accepts(value):
            raise ConfigError(f"activation.{key}", value, allowed)
    for activation, low, high, may_equal in ORDERED_PARAMETERS:
        if name == activation and low in params and high in params:
            ordered = params[low] <= params[high] if may_equal else params[low] < params[high]
            if not ordered:
                relation = "at most" if may_equal else "below"
                raise ConfigError(f"activation.{low}", params[low], f"a number {relation} activation.{high}"
                                  f"={params[high]}")


@dataclass(frozen=True)
class Activation:
    """A registered activation with its checked parameters: what a model is built with."""

    name: str
    spec: ActivationSpec
    params: dict[str, Any] = field(default_factory=dict)

    def module(self, width: int) -> nn.Module:
        """A fresh module for one layer (PReLU gets its own parameters in every layer)."""
        from torch import nn  # here, not at the top: the registry's readers need no torch

        kwargs = dict(self.params)
        if self.name == "prelu" and kwargs.get("num_parameters") not in (None, 1):
            kwargs["num_parameters"] = width  # one learned slope per unit of this layer
        return getattr(nn, self.spec.torch_class)(**kwargs)

    def init_gain_args(self) -> tuple[str, float | None]:
        """(nonlinearity, param) for ``nn.init.calculate_gain`` and kaiming init."""
        return self.spec.gain, None if self.spec.slope is None else float(self.spec.slope(self.params))

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def saturates(self) -> bool:
        return self.spec.derivative_share is not None


def activation_spec(name: str) -> ActivationSpec:
    if name not in ACTIVATIONS:
        raise ConfigError("activation.name", name, f"one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def resolve_activation(name: str, params: dict[str, Any] | None = None) -> Activation:
    """The spec for ``name`` and its parameters (the activation config minus its name), checked."""
    spec, params = activation_spec(name), dict(params or {})
    check_parameters(name, spec, params)
    return Activation(name, spec, params)


def build_activation(name: str, params: dict[str, Any], width: int) -> nn.Module:
    """A fresh module for one layer of width ``width``."""
    return resolve_activation(name, params).module(width)

"""The gradient verdicts: vanishing, exploding, dead, saturated, with their thresholds and patience.

``Verdicts`` turns each interval's per-layer figures (measured by ``mlpkit.diagnostics.GradientMonitor``)
into at most one one-line verdict per kind, and reports them as the ``gradient_health`` entry of
metrics.json. Pure Python on host numbers: no torch, and nothing here imports ``mlpkit.diagnostics``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

SATURATED_BELOW = 0.05  # a unit is saturated where its derivative is below this share of the maximum


@dataclass(frozen=True)
class Thresholds:
    """When a verdict fires; defaults measured on digits (see README, "Gradient diagnostics")."""

    vanishing_ratio: float = 1e-3  # first layer's ||g||/||W|| below this fraction of the last layer's
    patience: int = 5  # intervals in a row a condition must hold (not for non-finite values)
    exploding_growth: float = 1e3  # total gradient norm above this multiple of its first logged value
    dead_fraction: float = 0.75  # ReLU family: share of a layer's units that output 0 for the whole batch
    saturation_fraction: float = 0.5  # sigmoid/tanh: share of a layer's pre-activations that saturate

    def __post_init__(self):
        from mlpkit.config import ConfigError, is_int, is_number

        for key, allowed, ok in (
            ("vanishing_ratio", "a number in (0, 1)", lambda v: 0 < v < 1),
            ("patience", "an integer >= 1", lambda v: is_int(v) and v >= 1),
            ("exploding_growth", "a number > 1", lambda v: v > 1),
            ("dead_fraction", "a fraction in (0, 1]", lambda v: 0 < v <= 1),
            ("saturation_fraction", "a fraction in (0, 1]", lambda v: 0 < v <= 1),
        ):
            value = getattr(self, key)
            if not is_number(value) or not ok(value):
                raise ConfigError(f"diagnostics.{key}", value, allowed)

    @classmethod
    def from_mapping(cls, values: Any) -> Thresholds:
        """The threshold keys of ``values`` (the diagnostics config); other keys are not thresholds."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


class Verdicts:
    """Turns each interval's per-layer figures into at most one verdict per kind, with the figures."""

    def __init__(self, thresholds: Thresholds, family: str, activation: str):
        self.thresholds, self.family, self.activation = thresholds, family, activation
        self.fired: dict[str, dict[str, Any]] = {}
        self.streaks = {"vanishing": 0, "dead": 0, "saturated": 0}
        self.first_total_norm: float | None = None
        self.ratios: list[float] = []  # first/last relative gradient, every interval

    def update(self, step: int, loss: float, layers: dict[str, dict[str, float]]) -> list[str]:
        """New verdict lines for this interval (each kind fires once per run)."""
        names, limits = list(layers), self.thresholds
        lines = []
        norms = [v[m] for v in layers.values() for m in ("grad_norm", "grad_norm_bias") if m in v]
        bad = [n for n, v in layers.items() if not all(math.isfinite(v[m]) for m in ("grad_norm", "grad_norm_bias")
                                                        if m in v)]
        if not math.isfinite(loss) or bad:
            lines.append(self._fire("exploding", step, layers, (
                f"gradients are exploding: non-finite values at step {step} (loss {loss:.4g}; non-finite "
                f"gradients in {', '.join(bad) or 'none'}); training stops")))
            return [line for line in lines if line]
        total = math.sqrt(sum(n * n for n in norms))
        if self.first_total_norm is None and total > 0:
            self.first_total_norm = total
        if self.first_total_norm and total > limits.exploding_growth * self.first_total_norm:
            lines.append(self._fire("exploding", step, layers, (
                f"gradients are exploding: total gradient norm {total:.3g} at step {step} is "
                f"{total / self.first_total_norm:.3g}x its first logged value {self.first_total_norm:.3g} "
                f"(exploding_growth {limits.exploding_growth:g})")))

        first, last = layers[names[0]]["grad_ratio"], layers[names[-1]]["grad_ratio"]
        ratio = first / last if len(names) > 1 and last > 0 else math.nan
        if math.isfinite(ratio):
            self.ratios.append(ratio)
        if self._streak("vanishing", ratio < limits.vanishing_ratio):
            lines.append(self._fire("vanishing", step, layers, (
                f"gradients are vanishing: ||g||/||W|| of {names[0]} is {first:.3g} against {last:.3g} for "
                f"{names[-1]} (ratio {ratio:.3g} < vanishing_ratio {limits.vanishing_ratio:g}) for "
                f"{limits.patience} intervals in a row, at step {step}")))
        for kind, measure, key, limit, what in (
            ("dead", "dead_frac", "dead_fraction", limits.dead_fraction,
             f"dead {self.activation} units (output 0 for the whole batch)"),
            ("saturated", "saturation", "saturation_fraction", limits.saturation_fraction,
             f"saturated {self.activation} units (derivative < {SATURATED_BELOW:.0%} of its maximum)"),
        ):
            over = {n: v[measure] for n, v in layers.items() if v.get(measure, 0.0) > limit}
            if self._streak(kind, bool(over)):
                shares = ", ".join(f"{n} {share:.0%}" for n, share in over.items())
                lines.append(self._fire(kind, step, layers, (
                    f"{what} above {key} {limit:g} "
                    f"for {limits.patience} intervals in a row, at step {step}: {shares}")))
        return [line for line in lines if line]

    def _streak(self, kind: str, holds: bool) -> bool:
        self.streaks[kind] = self.streaks[kind] + 1 if holds else 0
        return self.streaks[kind] >= self.thresholds.patience

    def _fire(self, kind: str, step: int, layers: dict[str, dict[str, float]], message: str) -> str:
        if kind in self.fired:
            return ""
        self.fired[kind] = {"step": step, "message": message, "layers": layers}
        return message

    def report(self, last_step: int | None, last_layers: dict[str, dict[str, float]]) -> dict[str, Any]:
        """The ``gradient_health`` entry of metrics.json."""
        ratios = sorted(self.ratios)
        return {
            "healthy": not self.fired,
            "verdicts": self.fired,
            "first_last_grad_ratio": {"first": self.ratios[0], "min": ratios[0],
                                      "median": ratios[len(ratios) // 2], "last": self.ratios[-1]}
            if ratios else None,
            "thresholds": asdict(self.thresholds),
            "last": {"step": last_step, "layers": last_layers},
        }

"""The gradient verdicts: vanishing, exploding, dead, saturated; the one place that judges them.

``Verdicts`` turns each measured step's per-layer figures (from ``mlpkit.diagnostics``) into at most
one one-line verdict per kind, each naming what to try next, and reports them as the
``gradient_health`` entry of metrics.json; the sweep report and the API read that entry and never
judge again. Pure Python on host numbers: no torch.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from mlpkit.activations import SATURATED_BELOW
from mlpkit.errors import ConfigError, is_int, is_number

KINDS = ("vanishing", "exploding", "dead", "saturated")
ADVICE = {  # what to try, one clause per verdict kind
    "vanishing": "try a relu-family activation with model.init=kaiming_normal (or a shallower model)",
    "exploding": "try a lower optimizer.lr",
    "dead": "try a lower optimizer.lr, or activation=leaky or activation=elu",
    "saturated": "try a lower optimizer.lr, or model.init=xavier_normal",
}


@dataclass(frozen=True)
class Thresholds:
    """When a verdict fires; calibrated by scripts/calibrate_verdicts.py (README, "Gradient diagnostics")."""

    vanishing_ratio: float = 1e-3  # first layer's ||g||/||W|| below this fraction of the last layer's
    patience: int = 5  # measured steps in a row a condition must hold (not for non-finite values)
    exploding_growth: float = 1e3  # total gradient norm above this multiple of its early value (non-finite always is)
    dead_fraction: float = 0.23  # ReLU family: hidden layers' mean share of units at 0 on the last `patience` batches
    saturated_derivative: float = 0.18  # sigmoid/tanh: the hidden layers' mean f'/max f' below this

    def __post_init__(self):
        for key, allowed, ok in (
            ("vanishing_ratio", "a number in (0, 1)", lambda v: 0 < v < 1),
            ("patience", "an integer >= 1", lambda v: is_int(v) and v >= 1),
            ("exploding_growth", "a number > 1", lambda v: v > 1),
            ("dead_fraction", "a fraction in (0, 1]", lambda v: 0 < v <= 1),
            ("saturated_derivative", "a fraction in (0, 1)", lambda v: 0 < v < 1),
        ):
            value = getattr(self, key)
            if not is_number(value) or not ok(value):
                raise ConfigError(f"diagnostics.{key}", value, allowed)

    @classmethod
    def from_mapping(cls, values: Any) -> Thresholds:
        """The threshold keys of ``values`` (the diagnostics config); other keys are not thresholds."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


class Verdicts:
    """Turns each measured step's per-layer figures into at most one verdict per kind."""

    def __init__(self, thresholds: Thresholds, activation: str, family: str):
        self.thresholds, self.activation, self.family = thresholds, activation, family
        self.fired: dict[str, dict[str, Any]] = {}
        self.streaks = dict.fromkeys(KINDS, 0)
        self.early_totals: list[float] = []  # total gradient norms of the first `patience` measured steps
        self.ratios: list[float] = []  # first/last relative gradient, every measured step
        self.measurements = 0
        self.explained = False  # dead or saturated units, as of the last step that measured them
        self.last_step: int | None = None
        self.last_layers: dict[str, dict[str, float]] = {}

    # What a checkpoint keeps, so that a resumed run is judged on all its measured steps, not only on
    # those after the resume (plain values only: checkpoints load with weights_only=True).
    STATE = ("fired", "streaks", "early_totals", "ratios", "measurements", "explained", "last_step", "last_layers")

    def state(self) -> dict[str, Any]:
        return {key: copy.deepcopy(getattr(self, key)) for key in self.STATE}

    def load(self, state: dict[str, Any]) -> None:
        for key in self.STATE:
            if key in state:  # a checkpoint from before a key existed keeps its default
                setattr(self, key, copy.deepcopy(state[key]))

    def update(self, step: int, loss: float, layers: dict[str, dict[str, float]]) -> list[str]:
        """New verdict lines for this measured step (each kind fires once per run)."""
        self.measurements += 1
        self.last_step, self.last_layers = step, layers
        lines = [self._exploding(step, loss, layers)]
        if "exploding" in self.fired and self.fired["exploding"]["step"] == step:
            return [line for line in lines if line]
        if any("dead_frac" in entry or "derivative" in entry for entry in layers.values()):
            lines += self._units(step, layers)  # a step that measured the activation statistics
        lines.append(self._vanishing(step, layers, self.explained))
        return [line for line in lines if line]

    def _units(self, step: int, layers: dict[str, dict[str, float]]) -> list[str]:
        """Dead and saturated units, judged on the steps that measure the activation statistics
        (``patience`` of those in a row)."""
        limits, lines = self.thresholds, []
        dead, saturated = self._dead(layers), self._saturated(layers)
        self.explained = bool(dead or saturated)  # dead or saturated units starve the layers below them of gradient
        if self._streak("dead", bool(dead)):
            lines.append(self._fire("dead", step, layers, (
                f"dead {self.activation} units: {dead} for {limits.patience} measured steps in a row, at step {step}")))
        if self._streak("saturated", bool(saturated)):
            lines.append(self._fire("saturated", step, layers, (
                f"saturated {self.activation} units: {saturated} for {limits.patience} measured steps in a row, "
                f"at step {step}")))
        return lines

    def _dead(self, layers: dict[str, dict[str, float]]) -> str:
        """What is dead when the hidden layers' mean share of units that output 0 for the whole batch is
        above dead_fraction, else ""."""
        shares = {name: entry["dead_frac"] for name, entry in layers.items() if "dead_frac" in entry}
        mean, limit = _mean(shares.values()), self.thresholds.dead_fraction
        if not shares or mean <= limit:
            return ""
        return (f"{mean:.0%} of a hidden layer's units, on average, output 0 for every sample of the last "
                f"{self.thresholds.patience} measured batches (dead_fraction {limit:g}); "
                f"most: {_worst(shares, reverse=True)}")

    def _saturated(self, layers: dict[str, dict[str, float]]) -> str:
        """What is saturated when the hidden layers pass on average less than saturated_derivative of the
        gradient their activation could (mean f'/max f'), else ""."""
        shares = {name: entry["derivative"] for name, entry in layers.items() if "derivative" in entry}
        mean, limit = _mean(shares.values()), self.thresholds.saturated_derivative
        if not shares or mean >= limit:
            return ""
        saturated = {name: layers[name]["saturation"] for name in shares}
        return (f"the hidden layers' mean derivative is {mean:.2g} of its maximum (saturated_derivative "
                f"{limit:g}); units with f' < {SATURATED_BELOW:.0%} of it: {_worst(saturated, reverse=True)}")

    def _exploding(self, step: int, loss: float, layers: dict[str, dict[str, float]]) -> str:
        norms = [v[m] for v in layers.values() for m in ("grad_norm", "grad_norm_bias") if m in v]
        bad = [n for n, v in layers.items()
               if not all(math.isfinite(v[m]) for m in ("grad_norm", "grad_norm_bias") if m in v)]
        if not math.isfinite(loss) or bad:
            return self._fire("exploding", step, layers, (
                f"gradients are exploding: non-finite values at step {step} (loss {loss:.4g}; non-finite "
                f"gradients in {', '.join(bad) or 'none'}); training stops"))
        total = math.sqrt(sum(n * n for n in norms))
        # The reference is the largest of the first `patience` measured steps: a network's first
        # steps move its gradients by orders of magnitude (a ReLU net's first Adam step at lr 0.1
        # multiplies them by a thousand) without anything exploding.
        if len(self.early_totals) < self.thresholds.patience:
            self.early_totals.append(total)
            return ""
        reference, growth = max(self.early_totals), self.thresholds.exploding_growth
        if not self._streak("exploding", reference > 0 and total > growth * reference):
            return ""
        return self._fire("exploding", step, layers, (
            f"gradients are exploding: total gradient norm {total:.3g} at step {step} is "
            f"{total / reference:.3g}x its early value {reference:.3g} (exploding_growth {growth:g}) "
            f"for {self.thresholds.patience} measured steps in a row"))

    def _vanishing(self, step: int, layers: dict[str, dict[str, float]], explained: bool) -> str:
        """A small first/last relative gradient, unless dead or saturated units already explain it
        (their verdict names the cause; a second line would name its symptom)."""
        names, limit = list(layers), self.thresholds.vanishing_ratio
        first, last = layers[names[0]]["grad_ratio"], layers[names[-1]]["grad_ratio"]
        ratio = first / last if len(names) > 1 and last > 0 else math.nan
        if math.isfinite(ratio):
            self.ratios.append(ratio)
        if not self._streak("vanishing", ratio < limit and not explained):
            return ""
        return self._fire("vanishing", step, layers, (
            f"gradients are vanishing: ||g||/||W|| of {names[0]} is {first:.3g} against {last:.3g} for "
            f"{names[-1]} (ratio {ratio:.3g} < vanishing_ratio {limit:g}) for "
            f"{self.thresholds.patience} measured steps in a row, at step {step}"))

    def _streak(self, kind: str, holds: bool) -> bool:
        self.streaks[kind] = self.streaks[kind] + 1 if holds else 0
        return self.streaks[kind] >= self.thresholds.patience

    def _fire(self, kind: str, step: int, layers: dict[str, dict[str, float]], message: str) -> str:
        if kind in self.fired:
            return ""
        message = f"{message}; {ADVICE[kind]}"
        self.fired[kind] = {"step": step, "message": message, "layers": layers}
        return message

    def report(self, every_n_steps: int) -> dict[str, Any]:
        """The ``gradient_health`` entry of metrics.json; ``healthy`` is None when there was too little to judge."""
        patience = self.thresholds.patience
        judged = bool(self.fired) or self.measurements >= patience
        ratios = sorted(self.ratios)
        health: dict[str, Any] = {
            "judged": judged,
            "healthy": (not self.fired) if judged else None,
            "verdicts": self.fired,
            "measurements": self.measurements,
            "every_n_steps": every_n_steps,
            "first_last_grad_ratio": {"first": self.ratios[0], "min": ratios[0],
                                      "median": ratios[len(ratios) // 2], "last": self.ratios[-1]}
            if ratios else None,
            "thresholds": asdict(self.thresholds),
            "last": {"step": self.last_step, "layers": self.last_layers},
        }
        if not judged:
            health["reason"] = (
                f"only {self.measurements} measured steps (one every {every_n_steps}); a verdict needs "
                f"diagnostics.patience={patience} in a row: train for more steps (more epochs or a smaller "
                f"trainer.batch_size), measure more often (trainer.log_every_n_steps=1) or lower "
                f"diagnostics.patience")
        return health


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _worst(shares: dict[str, float], reverse: bool, count: int = 3) -> str:
    """The ``count`` layers with the largest (reverse) shares, as "linear2 91%, linear7 88%"."""
    ranked = sorted(shares.items(), key=lambda item: item[1], reverse=reverse)[:count]
    return ", ".join(f"{name} {share:.0%}" for name, share in ranked)


def summary(health: dict[str, Any], messages: bool = False) -> str:
    """One line for the end of a run: the verdicts, healthy, or why nothing was judged. ``messages``:
    each verdict's own message (what was measured, the remedy to try) in the line, for a fit whose
    verdict lines were not shown (an estimator's at verbose=0)."""
    if not health.get("judged"):
        return f"gradients: not judged: {health.get('reason', 'no measured step')}"
    if health["verdicts"] and messages:
        return "gradients: " + "; ".join(f"{verdict['message']}" for verdict in health["verdicts"].values())
    if health["verdicts"]:
        return "gradients: " + ", ".join(health["verdicts"]) + " (see the verdict lines above)"
    return f"gradients: healthy ({health['measurements']} measured steps, every {health['every_n_steps']})"

"""Per-layer gradient diagnostics on the device: hooks, fused measurements, scalars and figures.

Every ``every_n_steps`` steps the monitor measures, per Linear layer, the gradient norms, the
relative gradient ||g||/||W||, the update-to-weight ratio ||dW||/||W|| and the statistics of the
layer's output after its activation. Everything is computed on the device with fused kernels and
comes to the host in one transfer per interval; on other steps the monitor does nothing at all
(no hook is registered). Figures are drawn in ``finish`` from numbers recorded at their steps, so
matplotlib never runs inside the training loop. The verdicts (vanishing, exploding, dead,
saturated) and their thresholds live in ``mlpkit.verdicts``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlpkit.activations import activation_spec
from mlpkit.model import MLP
from mlpkit.verdicts import SATURATED_BELOW, Thresholds, Verdicts

log = logging.getLogger("mlpkit")
OK, NONFINITE = "ok", "nonfinite"  # what after_backward returns
SATURATING = ("sigmoid", "tanh", "hardtanh")  # the squashing activations whose saturation we can measure
MEASURES = ("grad_norm", "grad_norm_bias", "grad_ratio", "update_ratio",
            "act_mean", "act_std", "dead_frac", "saturation")
FIGURE_MEASURES = ("grad_norm", "grad_ratio", "update_ratio")


def saturation_mask(activation: str, module: nn.Module, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Where the activation's derivative is below SATURATED_BELOW of its maximum (one of SATURATING)."""
    bound = SATURATED_BELOW * activation_spec(activation).max_derivative
    if activation == "sigmoid":
        return out * (1 - out) < bound
    if activation == "tanh":
        return 1 - out * out < bound
    if activation == "hardtanh":
        return (pre <= module.min_val) | (pre >= module.max_val)
    raise ValueError(f"no saturation rule for activation {activation!r}; expected one of {SATURATING}")



class GradientMonitor:
    """What the trainer calls around a step; on steps where ``is_log_step`` is false it is never called.

    Per step: ``monitored = is_log_step(step)``; if monitored, ``before_forward(step)``; forward,
    loss, backward; if monitored, ``after_backward(step, loss)``, which returns ``NONFINITE`` when
    the loss or a gradient is not finite: the trainer then stops before ``optimizer.step()``, so the
    weights stay finite. At the end, ``finish()`` (also after a stop).

    The step before each scalar step is a log step too: ``after_backward`` then only copies the
    weights, so the scalar step can measure the update that step applied (||dW||/||W||) in the same
    single transfer to the host.
    """

    def __init__(self, model: MLP, activation: str, logger: Any | None = None, run_dir: Path | None = None, *,
                 every_n_steps: int = 10, histogram_every_n_steps: int = 0, figure_every_n_steps: int = 0,
                 thresholds: Thresholds = Thresholds()):
        self.logger, self.run_dir, self.activation = logger, run_dir, activation
        self.every_n_steps, self.histogram_every_n_steps = every_n_steps, histogram_every_n_steps
        self.figure_every_n_steps = figure_every_n_steps
        self.family = activation_spec(activation).family
        self.measures_saturation = self.family == "squashing" and activation in SATURATING
        self.layers = model.linear_layers()
        self.names = list(self.layers)
        self.activations: dict[str, nn.Module] = {}  # Linear name -> the activation right after it
        current = None
        for name, module in model.named_children():
            if isinstance(module, nn.Linear):
                current = name
            elif name.startswith("act") and current is not None:
                self.activations[current] = module
        self.has_bias = all(layer.bias is not None for layer in self.layers.values())
        self.verdicts = Verdicts(thresholds, self.family, activation)
        self.hooks: list[Any] = []
        self.captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.snapshot: tuple[int, torch.Tensor] | None = None  # (step, flat weights before its update)
        self.segments: torch.Tensor | None = None
        self.figure_steps: dict[int, dict[str, list[float]]] = {}
        self.last_step: int | None = None
        self.last_layers: dict[str, dict[str, float]] = {}
        if logger is not None:
            logger.log_layout(self.layout())

    def layout(self) -> dict[str, dict[str, list[str]]]:
        """One chart per measure, every layer a line: a vanishing gradient is a fan of lines."""
        return {"gradients": {m: [rf"^{m}/"] for m in ("grad_norm", "grad_norm_bias", "grad_ratio", "update_ratio")},
                "activations": {m: [rf"^{m}/"] for m in ("act_mean", "act_std", "dead_frac", "saturation")},
                "loss": {"loss": [r"^loss/"]}}

    def is_scalar_step(self, step: int) -> bool:
        return step % self.every_n_steps == 0

    def is_histogram_step(self, step: int) -> bool:
        return self.histogram_every_n_steps > 0 and step % self.histogram_every_n_steps == 0

    def is_log_step(self, step: int) -> bool:
        return self.is_scalar_step(step) or self.is_scalar_step(step + 1) or self.is_histogram_step(step)

    # --- around one step --------------------------------------------------------------------------
    def before_forward(self, step: int) -> None:
        """On scalar and histogram steps, hooks that keep each hidden layer's output (removed after backward)."""
        self.remove_hooks()
        if not (self.is_scalar_step(step) or self.is_histogram_step(step)):
            return
        for name, module in self.activations.items():
            def keep(module, args, output, name=name):
                # the pre-activation only where saturation is read from it (hardtanh)
                pre = args[0].detach() if self.activation == "hardtanh" else output.detach()
                self.captured[name] = (pre, output.detach())
            self.hooks.append(module.register_forward_hook(keep))

    def remove_hooks(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()

    def after_backward(self, step: int, loss: torch.Tensor) -> str:
        """Measure on the device, one transfer to the host, scalars and verdicts; NONFINITE means stop."""
        self.remove_hooks()
        captured, self.captured = self.captured, {}
        weights = [layer.weight.detach() for layer in self.layers.values()]
        if self.is_histogram_step(step):
            self.log_histograms(step, weights, captured)
        status = OK
        if self.is_scalar_step(step):
            status = self.measure(step, loss, weights, captured)
        if status == OK and self.is_scalar_step(step + 1):
            # one flat copy (a single kernel) of the weights before this step's update
            self.snapshot = (step, torch.cat([w.reshape(-1) for w in weights]))
        return status

    def measure(self, step: int, loss: torch.Tensor, weights: list[torch.Tensor], captured: dict) -> str:
        grads = [_grad(layer.weight) for layer in self.layers.values()]
        if self.has_bias:
            grads += [_grad(layer.bias) for layer in self.layers.values()]
        updates: list[torch.Tensor] = []
        if self.snapshot is not None and self.snapshot[0] == step - 1:
            change = self.snapshot[1] - torch.cat([w.reshape(-1) for w in weights])  # the last update
            updates = list(change.split([w.numel() for w in weights]))
        self.snapshot = None
        parts = [loss.detach().float().reshape(1), torch.stack(torch._foreach_norm(grads + weights + updates)).float()]
        stats = self.activation_stats(captured)
        if stats is not None:
            parts.append(stats.flatten())
        values = torch.cat(parts).tolist()  # the interval's only host synchronisation
        return self.record(step, values, list(captured), has_updates=bool(updates))

    # --- on the device ----------------------------------------------------------------------------
    def activation_stats(self, captured: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
        """(hidden layers, 4): mean, mean of squares, dead share, saturated share; a handful of kernels."""
        if not captured:
            return None
        out = torch.cat([c[1].reshape(-1, c[1].shape[-1]) for c in captured.values()], dim=1).float()
        columns = [out.mean(0), out.square().mean(0)]
        zeros = torch.zeros_like(columns[0])
        columns.append((out == 0).all(0).float() if self.family == "relu" else zeros)
        if self.measures_saturation:
            pre = torch.cat([c[0].reshape(-1, c[0].shape[-1]) for c in captured.values()], dim=1).float()
            mask = saturation_mask(self.activation, next(iter(self.activations.values())), pre, out)
            columns.append(mask.float().mean(0))
        else:
            columns.append(zeros)
        if self.segments is None or self.segments.shape[1] != out.shape[1]:
            widths = [c[1].shape[-1] for c in captured.values()]
            rows = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))
            segments = torch.zeros(len(widths), out.shape[1])
            segments[rows, torch.arange(out.shape[1])] = 1.0 / torch.tensor(widths, dtype=torch.float)[rows]
            self.segments = segments.to(out.device)
        return self.segments @ torch.stack(columns, dim=1)  # per-column figures averaged per layer

    # --- on the host ------------------------------------------------------------------------------
    def record(self, step: int, values: list[float], hidden: list[str], has_updates: bool) -> str:
        """Host side of a scalar step: name the values, write them, judge them."""
        n = len(self.names)
        loss, values = values[0], values[1:]
        grad_norms, values = values[:n], values[n:]
        bias_norms, values = (values[:n], values[n:]) if self.has_bias else ([], values)
        weight_norms, values = values[:n], values[n:]
        update_norms, values = (values[:n], values[n:]) if has_updates else ([], values)
        layers: dict[str, dict[str, float]] = {}
        for index, name in enumerate(self.names):
            weight_norm = weight_norms[index] or math.nan
            entry = {"grad_norm": grad_norms[index], "grad_ratio": grad_norms[index] / weight_norm}
            if self.has_bias:
                entry["grad_norm_bias"] = bias_norms[index]
            if has_updates:
                entry["update_ratio"] = update_norms[index] / weight_norm
            layers[name] = entry
        for index, name in enumerate(hidden):
            mean, mean_square, dead, saturated = values[4 * index:4 * index + 4]
            layers[name].update(act_mean=mean, act_std=math.sqrt(max(mean_square - mean * mean, 0.0)))
            if self.family == "relu":
                layers[name]["dead_frac"] = dead
            if self.measures_saturation:
                layers[name]["saturation"] = saturated
        self.last_step, self.last_layers = step, layers
        if self.logger is not None:
            scalars = {"loss/train": loss}
            scalars.update({f"{m}/{name}": v for name, entry in layers.items() for m, v in entry.items()})
            self.logger.log_scalars(scalars, step)
        last_figure = max(self.figure_steps, default=None)
        if self.figure_every_n_steps > 0 and (last_figure is None
                                              or step - last_figure >= self.figure_every_n_steps):
            self.figure_steps[step] = {m: [layers[name].get(m, math.nan) for name in self.names]
                                       for m in FIGURE_MEASURES}
        for line in self.verdicts.update(step, loss, layers):
            log.warning(line)
            if self.logger is not None:
                self.logger.log_text("gradient_health", line, step)
        if not all(math.isfinite(v) for v in [loss, *grad_norms, *bias_norms]):
            return NONFINITE
        return OK

    def log_histograms(self, step: int, weights: list[torch.Tensor], captured: dict) -> None:
        if self.logger is None:
            return
        for name, weight in zip(self.names, weights):
            self.logger.log_histogram(f"weights/{name}", weight, step)
            if self.layers[name].weight.grad is not None:
                self.logger.log_histogram(f"gradients/{name}", self.layers[name].weight.grad, step)
        for name, (_, output) in captured.items():
            self.logger.log_histogram(f"activations/{name}", output, step)

    def finish(self) -> dict[str, Any]:
        """The figures (TensorBoard images at their steps, the final PNG) and the verdicts, for metrics.json."""
        self.remove_hooks()
        self.snapshot = None
        if self.figure_steps or self.last_step is not None:
            from mlpkit import figures  # matplotlib: only runs that draw pay for the import

            for step, measures in self.figure_steps.items():
                if self.logger is not None:
                    figure = figures.gradient_flow_figure(self.names, measures, f"gradient flow, step {step}")
                    self.logger.log_image("gradient_flow", figures.figure_to_rgb(figure), step)
            if self.run_dir is not None and self.last_step is not None:
                measures = {m: [self.last_layers[n].get(m, math.nan) for n in self.names] for m in FIGURE_MEASURES}
                figure = figures.gradient_flow_figure(
                    self.names, measures, f"gradient flow, {self.activation}, step {self.last_step}")
                figures.save_png(figure, Path(self.run_dir) / "gradient_flow.png")
        health = self.verdicts.report(self.last_step, self.last_layers)
        if self.logger is not None:
            summary = "\n".join(v["message"] for v in health["verdicts"].values()) or "no gradient problem detected"
            self.logger.log_text("gradient_health/summary", summary, self.last_step or 0)
        return health


def _grad(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)

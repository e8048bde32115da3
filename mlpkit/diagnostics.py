"""Per-layer gradient diagnostics, measured on the device and fetched once per measured step.

On the steps the trainer logs, the monitor measures, per Linear layer, the gradient norms and the
relative gradient ||g||/||W||; on every ``statistics_every``-th of them (``auto``: as seldom as still gives
STATISTICS_POINTS points) also the update-to-weight ratio ||dW||/||W|| of that step's update and the
statistics of the layer's output after its activation, which cost more to measure (a copy of the
weights, a pass over every hidden layer's output) than the rest together.
Everything is computed on the device with a handful of fused kernels and comes to the host in one
transfer (the update a second, after ``optimizer.step()``); on other steps the monitor does nothing
(no hook is registered).
The verdicts (vanishing, exploding, dead, saturated) are judged in ``mlpkit.verdicts``; the
trainer writes what ``measure`` returns to its loggers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from mlpkit.activations import SATURATED_BELOW
from mlpkit.callbacks import Callback
from mlpkit.model import MLP
from mlpkit.patches import foreach_copy_, foreach_norm, foreach_sub_
from mlpkit.verdicts import Thresholds, Verdicts

FIGURE_MEASURES = ("grad_norm", "grad_ratio", "update_ratio")  # the gradient-flow figure's bar groups
STATISTICS_POINTS = 16  # statistics_every=auto: at least this many steps measure the statistics (every one below)
CHARTS = {  # TensorBoard's custom-scalars layout: one chart per measure, every layer a line
    "gradients": ("grad_norm", "grad_norm_bias", "grad_ratio", "update_ratio"),
    "activations": ("act_mean", "act_std", "dead_frac", "saturation", "derivative"),
}


@dataclass
class Measurement:
    """What one measured step found: the loss, each layer's figures, and any new verdict lines."""

    step: int
    loss: float
    layers: dict[str, dict[str, float]]
    verdict_lines: list[str] = field(default_factory=list)
    histograms: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, list[float]] = field(default_factory=dict)  # the trainer's own values, fetched alongside

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and all(
            math.isfinite(entry[m]) for entry in self.layers.values() for m in ("grad_norm", "grad_norm_bias")
            if m in entry)

    def scalars(self) -> dict[str, float]:
        """``<measure>/<layer>`` TensorBoard tags and their values."""
        return {f"{measure}/{name}": value for name, entry in self.layers.items() for measure, value in entry.items()}


class Packed:
    """Named device tensors gathered for a single transfer to the host: add, then ``fetch`` once."""

    def __init__(self) -> None:
        self.parts: dict[str, torch.Tensor] = {}

    def add(self, name: str, values: torch.Tensor) -> None:
        # each conversion only where needed: on a measured step every call costs 5-15 us
        if values.requires_grad:
            values = values.detach()
        if values.dtype != torch.float32:
            values = values.float()
        self.parts[name] = values if values.dim() == 1 else values.reshape(-1)

    def fetch(self) -> dict[str, list[float]]:
        """Every part as host floats; the one host synchronisation."""
        parts = list(self.parts.values())
        flat = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()
        fetched, start = {}, 0
        for name, values in self.parts.items():
            fetched[name], start = flat[start:start + values.numel()], start + values.numel()
        return fetched


def layout() -> dict[str, dict[str, list[str]]]:
    """Custom-scalars charts: a vanishing gradient shows as a fan of lines in one chart."""
    charts = {category: {m: [rf"^{m}/"] for m in measures} for category, measures in CHARTS.items()}
    return {**charts, "loss": {"loss": [r"^loss/"]}}


class GradientMonitor(Callback):
    """What the trainer calls around a measured step; idle on every other step.

    ``watch(step)`` before the forward pass, ``measure(step, loss)`` after backward (a non-finite
    loss or gradient is then caught before ``optimizer.step()``), ``after_update(step)`` after it;
    ``finish()`` at the end (also after a stop). A callback for its checkpoint state: the measured
    step itself is the trainer's, whose one host transfer it shares.
    """

    state_key = "monitor"

    def __init__(self, model: MLP, *, histogram_every_n_steps: int = 0, figure_every_n_steps: int = 0,
                 statistics_every: int | str = "auto", thresholds: Thresholds = Thresholds()):
        self.activation = model.activation
        self.histogram_every_n_steps = histogram_every_n_steps
        self.figure_every_n_steps = figure_every_n_steps
        self.statistics_every = statistics_every
        self.log_every_n_steps, self.statistics_interval = 1, 1  # see plan()
        self.layers = model.linear_layers()
        self.names = list(self.layers)
        self.activations = model.activation_after()  # hidden Linear name -> its activation module
        self.has_bias = all(layer.bias is not None for layer in self.layers.values())
        self.weights = [layer.weight for layer in self.layers.values()]  # the live parameters, read under no_grad
        self.biases = [layer.bias for layer in self.layers.values()] if self.has_bias else []
        self.verdicts = Verdicts(thresholds, self.activation.name, self.activation.family)
        self.hooks: list[Any] = []
        self.captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.before_update: tuple[int, list[float]] | None = None  # the measured step and its weight norms
        self.snapshot: list[torch.Tensor] | None = None  # the weights before that step's update
        self.active_window: torch.Tensor | None = None  # (patience, hidden units): active on each recent measured batch
        self.window_batches = 0  # measured batches written into active_window
        self.averaging: torch.Tensor | None = None  # (hidden layers, hidden units): see layer_means
        self.figure_steps: dict[int, Measurement] = {}  # the measurements the gradient-flow images show
        self.last: Measurement | None = None
        self.last_complete: Measurement | None = None  # the last with the update ratio and activation statistics

    def plan(self, log_every_n_steps: int, total_steps: int) -> None:
        """The trainer's measuring cadence: every ``log_every_n_steps`` of ``total_steps`` steps."""
        self.log_every_n_steps = log_every_n_steps
        self.statistics_interval = statistics_interval(self.statistics_every, -(-total_steps // log_every_n_steps))

    def measures_statistics(self, step: int) -> bool:
        """Whether measured ``step`` measures the update ratio and the activation statistics too."""
        return (self.is_histogram_step(step)
                or (step // self.log_every_n_steps) % self.statistics_interval == 0)

    def is_histogram_step(self, step: int) -> bool:
        return self.histogram_every_n_steps > 0 and step % self.histogram_every_n_steps == 0

    # --- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to measure and judge as an uninterrupted one would: the verdicts'
        streaks and the dead-unit window (its measured batches so far), as plain values and a host
        tensor (checkpoints load with weights_only=True). Called at checkpoint time only: the copy
        to the host is the one synchronisation, never one per step."""
        window = self.active_window.to("cpu", copy=True) if self.active_window is not None else None
        return {"verdicts": self.verdicts.state(),
                "monitor": {"active_window": window, "window_batches": self.window_batches}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's monitor state; one from before a key existed starts it afresh."""
        if state.get("verdicts") is not None:
            self.verdicts.load(state["verdicts"])
        saved = state.get("monitor") or {}
        if saved.get("active_window") is not None:
            self.active_window = saved["active_window"].to(self.weights[0].device)
            self.window_batches = saved["window_batches"]

    # --- around one step --------------------------------------------------------------------------
    def watch(self, step: int) -> None:
        """Hooks that keep each hidden layer's output (and input, where saturation is read from it),
        on the steps that measure the statistics."""
        self.remove_hooks()
        if not self.measures_statistics(step):
            return
        reads_input = self.activation.spec.reads_input
        for name, module in self.activations.items():
            def keep(module, args, output, name=name):
                self.captured[name] = (args[0].detach() if reads_input else output.detach(), output.detach())
            self.hooks.append(module.register_forward_hook(keep))

    def remove_hooks(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()

    @torch.no_grad()
    def measure(self, step: int, loss: torch.Tensor, extra: dict[str, torch.Tensor] | None = None,
                judge_nonfinite: bool = True) -> Measurement:
        """After backward: measure on the device, fetch once (with the trainer's ``extra`` device values),
        judge. Keeps the weights for ``after_update``. ``judge_nonfinite=False``: a step with a non-finite
        gradient is not judged (fp16 loss scaling overflowed: the scaler skips it)."""
        self.remove_hooks()
        captured, self.captured = self.captured, {}
        grads = [_grad(weight) for weight in self.weights]
        # the loss, then every gradient, weight and bias-gradient norm: one norm call, one stack
        norms = foreach_norm(grads + self.weights + [_grad(bias) for bias in self.biases])
        packed = Packed()
        packed.add("figures", torch.stack([loss, *norms]))
        if captured:
            packed.add("activations", self.activation_stats(captured))
        for name, value in (extra or {}).items():
            packed.add(name, value)
        values = packed.fetch()
        figures, count = values.pop("figures"), len(self.names)
        values.update(loss=figures[:1], grad_norm=figures[1:1 + count], weight_norm=figures[1 + count:1 + 2 * count],
                      grad_norm_bias=figures[1 + 2 * count:])
        rows = next((out.numel() // out.shape[-1] for _, out in captured.values()), 0)  # the batch's rows
        measurement = Measurement(step, values["loss"][0], self.name_layers(values, list(captured), rows),
                                  extra={name: values[name] for name in extra or {}})
        if self.is_histogram_step(step):
            measurement.histograms = self.histogram_values(self.weights, grads, captured)
        statistics = self.measures_statistics(step)
        if measurement.finite and statistics:
            # the weights before optimizer.step() updates them, copied (one fused kernel) into buffers
            # kept for the run: a fresh allocation of a large model's size costs more than the copy
            if self.snapshot is None:
                self.snapshot = [torch.empty_like(weight) for weight in self.weights]
            foreach_copy_(self.snapshot, self.weights)
            self.before_update = (step, values["weight_norm"])
        if not measurement.finite and not judge_nonfinite:
            self.last = measurement
            return measurement
        measurement.verdict_lines = self.verdicts.update(step, measurement.loss, measurement.layers)
        if statistics:
            self.keep_for_figures(measurement)
            self.last_complete = measurement
        self.last = measurement
        return measurement

    @torch.no_grad()
    def after_update(self, step: int) -> dict[str, float]:
        """``update_ratio/<layer>``: ||dW||/||W|| of the update ``optimizer.step()`` just applied."""
        if self.before_update is None or self.before_update[0] != step:
            return {}
        _, weight_norms = self.before_update
        self.before_update = None
        foreach_sub_(self.snapshot, self.weights)  # in place: the buffers now hold the update
        norms = torch.stack(foreach_norm(self.snapshot)).tolist()
        ratios = {name: norm / (weight or math.nan) for name, norm, weight in zip(self.names, norms, weight_norms)}
        if self.last is not None and self.last.step == step:
            for name, ratio in ratios.items():
                self.last.layers[name]["update_ratio"] = ratio
        return {f"update_ratio/{name}": ratio for name, ratio in ratios.items()}

    # --- on the device ----------------------------------------------------------------------------
    def activation_stats(self, captured: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(hidden layers, measures): each of ``activation_measures`` per layer, summed over the
        batch's rows (``name_layers`` divides) except the share of recently active units. Every hidden layer's output
        goes side by side into one (rows, units) tensor, so a few column sums and one small matmul
        serve all layers: a reduction costs a kernel launch, and on small nets a few per layer were
        most of a measured step. A unit is dead when it output 0 for every sample of the last
        ``patience`` measured batches (``recently_active``; one batch alone leaves a healthy but
        selective unit at 0 too often)."""
        outputs = [_rows(out) for _, out in captured.values()]
        units = torch.cat(outputs, 1)
        per_unit = [units.sum(0), (units * units).sum(0)]
        if self.activation.family == "relu":
            per_unit.append(self.recently_active(per_unit[1]))
        if self.activation.saturates:
            share = torch.cat([_rows(self.activation.spec.derivative_share(self.activations[name], _rows(pre), out))
                               for (name, (pre, _)), out in zip(captured.items(), outputs)], 1)
            per_unit += [(share < SATURATED_BELOW).float().sum(0), share.sum(0)]
        return self.layer_means([out.shape[-1] for out in outputs], units) @ torch.stack(per_unit, 1)

    def activation_measures(self) -> tuple[str, ...]:
        """What ``activation_stats`` gives each hidden layer, in order."""
        measures = ("act_mean", "act_mean_square")
        if self.activation.family == "relu":
            measures += ("active_frac",)  # name_layers reports 1 - it as dead_frac
        if self.activation.saturates:
            measures += ("saturation", "derivative")
        return measures

    def recently_active(self, square_sums: torch.Tensor) -> torch.Tensor:
        """1.0 for each unit active on any of the last ``patience`` measured batches, else 0.0 (dead).
        A unit is active on a batch when the sum of its squared outputs is above 0: some output is
        not 0 (or smaller than 1e-22 in magnitude, whose square float32 rounds to 0)."""
        patience = self.verdicts.thresholds.patience
        if self.active_window is None or self.active_window.shape != (patience, square_sums.numel()):
            self.active_window = torch.zeros((patience, square_sums.numel()), device=square_sums.device)
            self.window_batches = 0
        torch.gt(square_sums, 0, out=self.active_window[self.window_batches % patience])  # written as 0.0/1.0
        self.window_batches += 1
        window = self.active_window if self.window_batches >= patience else self.active_window[:self.window_batches]
        return window.amax(0)

    def layer_means(self, widths: list[int], like: torch.Tensor) -> torch.Tensor:
        """(layers, units): row j averages layer j's units (built once for the run)."""
        if self.averaging is None or self.averaging.shape != (len(widths), sum(widths)):
            self.averaging = torch.block_diag(*[torch.full((1, width), 1.0 / width) for width in widths])
        if self.averaging.device != like.device:
            self.averaging = self.averaging.to(like.device)
        return self.averaging

    # --- on the host ------------------------------------------------------------------------------
    def name_layers(self, values: dict[str, list[float]], hidden: list[str], rows: int) -> dict[str, dict[str, float]]:
        """Each layer's figures by name; the activation statistics of a batch of ``rows`` rows."""
        layers: dict[str, dict[str, float]] = {}
        for index, name in enumerate(self.names):
            grad_norm, weight_norm = values["grad_norm"][index], values["weight_norm"][index]
            layers[name] = {"grad_norm": grad_norm, "grad_ratio": grad_norm / (weight_norm or math.nan)}
            if self.has_bias:
                layers[name]["grad_norm_bias"] = values["grad_norm_bias"][index]
        stats, measures = values.get("activations", []), self.activation_measures()
        for index, name in enumerate(hidden):
            found = {measure: value if measure == "active_frac" else value / rows  # the rest are sums over rows
                     for measure, value in zip(measures, stats[len(measures) * index:len(measures) * (index + 1)])}
            mean, mean_square = found.pop("act_mean"), found.pop("act_mean_square")
            layers[name].update(act_mean=mean, act_std=math.sqrt(max(mean_square - mean * mean, 0.0)))
            if "active_frac" in found:
                layers[name]["dead_frac"] = 1.0 - found.pop("active_frac")
            layers[name].update(found)
        return layers

    def histogram_values(self, weights: list[torch.Tensor], grads: list[torch.Tensor],
                         captured: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        values = {f"weights/{name}": weight for name, weight in zip(self.names, weights)}
        values.update({f"gradients/{name}": grad for name, grad in zip(self.names, grads)})
        values.update({f"activations/{name}": output for name, (_, output) in captured.items()})
        return values

    def keep_for_figures(self, measurement: Measurement) -> None:
        last_figure = max(self.figure_steps, default=None)
        if self.figure_every_n_steps > 0 and (last_figure is None
                                              or measurement.step - last_figure >= self.figure_every_n_steps):
            self.figure_steps[measurement.step] = measurement

    def figure_measures(self, measurement: Measurement) -> dict[str, list[float]]:
        """The gradient-flow figure's bars: each of FIGURE_MEASURES for every layer."""
        return {m: [measurement.layers[name].get(m, math.nan) for name in self.names] for m in FIGURE_MEASURES}

    def finish(self, every_n_steps: int) -> dict[str, Any]:
        """The ``gradient_health`` entry of metrics.json: verdicts, or why there are none
        (``every_n_steps``: how often the trainer measured, for the message)."""
        self.remove_hooks()
        self.before_update = None
        return self.verdicts.report(every_n_steps)


def statistics_interval(setting: int | str, logged_steps: int) -> int:
    """``diagnostics.statistics_every``: an integer, or ``auto`` (as seldom as still gives
    STATISTICS_POINTS points: every logged step in runs that log fewer than twice that many)."""
    if str(setting) == "auto":
        return max(1, logged_steps // STATISTICS_POINTS)
    return int(setting)


def _rows(values: torch.Tensor) -> torch.Tensor:
    """A layer's values as (rows, units) float32 (an MLP's already are: no conversion then)."""
    if values.dtype != torch.float32:
        values = values.float()
    return values if values.dim() == 2 else values.reshape(-1, values.shape[-1])


def _grad(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)

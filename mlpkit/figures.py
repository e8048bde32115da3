"""Matplotlib figures. Matplotlib is imported inside each function: importing it costs about a
second, which a run that draws no figure should not pay. Figures are drawn on matplotlib's Agg
canvas directly, without pyplot: no backend to choose, no global figure manager to close, and
pyplot's own import (about a tenth of matplotlib's) is not paid.

Every function here that builds, draws or saves a figure holds one lock: matplotlib is not
thread-safe (two threads laying out a log axis's labels at once break its shared mathtext parser),
and runs trained in threads (``mlpkit.train``, a notebook) draw their figures at the same time."""
from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mlpkit.cache import disk_cached, source_digest
from mlpkit.rundir import GRADIENT_FLOW_FIGURE

FLOOR = 1e-12  # bars at or below zero are drawn at this height so a log axis can show them
_MATPLOTLIB = threading.RLock()  # reentrant: a locked function calls others
Function = TypeVar("Function", bound=Callable[..., Any])


def _drawing(function: Function) -> Function:
    """``function`` run while holding the matplotlib lock: one thread uses matplotlib at a time."""

    @functools.wraps(function)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _MATPLOTLIB:
            return function(*args, **kwargs)

    return locked  # type: ignore[return-value]


def _subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A figure and its axes as pyplot's subplots would make them, on an Agg canvas of its own (draws to
    memory without a display: servers and tests)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    subplot_keys = {key: kwargs.pop(key) for key in ("squeeze", "sharex", "sharey") if key in kwargs}
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(nrows, ncols, **subplot_keys)


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


@_drawing
def gradient_flow_figure(layer_names: Sequence[str], measures: dict[str, Sequence[float]], title: str) -> Any:
    """Bars on a log axis: one group per measure, one bar per layer (input side first, dark to light).

    A vanishing gradient reads as a staircase that climbs from the first layer to the last by orders
    of magnitude; a healthy network has bars of similar height in each group.
    """
    n_layers = len(layer_names)
    colors = _colormap("viridis")([i / max(n_layers - 1, 1) for i in range(n_layers)])
    width = 0.8 / max(n_layers, 1)
    figure, axes = _subplots(figsize=(max(6.0, 1.2 + 2.2 * len(measures)), 4.0), dpi=90)
    for group, values in enumerate(measures.values()):
        for index, value in enumerate(values):
            shown = value if math.isfinite(value) and value > FLOOR else FLOOR
            axes.bar(group - 0.4 + width * (index + 0.5), shown, width=width, color=colors[index],
                     hatch=None if math.isfinite(value) else "xx",
                     label=layer_names[index] if group == 0 else None)
    axes.set_xticks(range(len(measures)), list(measures))
    axes.set_yscale("log")
    axes.set_ylabel("per-layer value (log scale)")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", which="major", alpha=0.3)
    axes.legend(fontsize=7, ncol=2 if n_layers > 6 else 1, loc="best", frameon=False)
    figure.tight_layout()
    return figure


@_drawing
def _redraw_gradient_flow(figure: Any, measures: dict[str, Sequence[float]], title: str) -> Any:
    """``figure`` (a gradient_flow_figure of the same layers and measures) showing ``measures``
    instead: its bars' heights, hatches, title and y range change; its layout is kept. About a third
    of drawing a new figure (no axes, bars or legend built, no second layout pass)."""
    axes = figure.axes[0]
    values = [value for group in measures.values() for value in group]
    for bar, value in zip(axes.patches, values):  # in the order gradient_flow_figure added them
        bar.set_height(value if math.isfinite(value) and value > FLOOR else FLOOR)
        bar.set_hatch(None if math.isfinite(value) else "xx")
    axes.set_title(title, fontsize=10)
    axes.relim()
    axes.autoscale_view()
    return figure


@_drawing
def log_gradient_flow(logger: Any, run_dir: Path | None, monitor: Any, activation: str) -> None:
    """A run's gradient-flow figures: a TensorBoard image at each of the monitor's figure steps, and
    gradient_flow.png in the run directory from its last measured step. One figure is built and
    redrawn for each of them."""
    frames = [(step, monitor.figure_measures(measurement), f"gradient flow, step {step}")
              for step, measurement in monitor.figure_steps.items()]
    last = monitor.last_complete or monitor.last  # one with the update ratio, where there is one
    if run_dir is not None and last is not None:  # step None: the PNG
        frames.append((None, monitor.figure_measures(last), f"gradient flow, {activation}, step {last.step}"))
    figure = None
    for step, measures, title in frames:
        if figure is None:
            figure = gradient_flow_figure(monitor.names, measures, title)
        else:
            _redraw_gradient_flow(figure, measures, title)
        if step is not None:
            logger.log_image("gradient_flow", figure_to_rgb(figure), step)
        else:
            save_png(figure, Path(run_dir) / GRADIENT_FLOW_FIGURE)


@_drawing
def figure_to_rgb(figure: Any) -> Any:
    """The figure as an (height, width, 3) uint8 array."""
    import numpy as np

    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


@_drawing
def save_png(figure: Any, path: Path) -> Path:
    """Write the figure as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# --- activations ---------------------------------------------------------------------------------
ACTIVATION_LIMIT = 6  # x in [-6, 6]: wide enough to show where sigmoid (|x| > 4.4) and tanh (> 2.2) saturate


def activation_curve(name: str, params: dict[str, Any] | None = None, x: Any = None) -> tuple[Any, Any, Any]:
    """(x, f(x), f'(x)) as float32 tensors for a registered activation; f' comes from autograd.

    The module is built as a run builds it, in eval mode (RReLU then uses its mean slope).
    """
    import torch

    from mlpkit.activations import build_activation

    if x is None:  # steps of 0.01 that hit x = 0 exactly: selu's derivative peaks there
        x = torch.arange(-100 * ACTIVATION_LIMIT, 100 * ACTIVATION_LIMIT + 1, dtype=torch.float32) / 100
    x = torch.as_tensor(x, dtype=torch.float32).detach().clone().requires_grad_(True)
    module = build_activation(name, dict(params or {}), 1).eval()
    y = module(x)
    (derivative,) = torch.autograd.grad(y.sum(), x)  # elementwise: d(sum f)/dx_i = f'(x_i)
    return x.detach(), y.detach(), derivative


def _draw_activation(axes: Any, name: str, params: dict[str, Any] | None, legend: bool,
                     shared_scale: bool) -> None:
    """Curve, derivative, its maximum marked, and (squashing family) where it is saturated.

    ``shared_scale``: the same y range for every panel of a gallery, so heights compare.
    """
    from mlpkit.activations import ACTIVATIONS, SATURATED_BELOW

    x, y, derivative = (t.numpy() for t in activation_curve(name, params))
    top = int(derivative.argmax())
    axes.axhline(0, color="0.8", linewidth=0.8)
    axes.axvline(0, color="0.8", linewidth=0.8)
    if ACTIVATIONS[name].derivative_share is not None:
        saturated = derivative < SATURATED_BELOW * derivative[top]
        axes.fill_between(x, 0, 1, where=saturated, transform=axes.get_xaxis_transform(), color="tab:red",
                          alpha=0.08, linewidth=0, label=f"saturated: f' < {SATURATED_BELOW:.0%} of max")
    axes.plot(x, y, color="tab:blue", linewidth=2, label="f(x)")
    axes.plot(x, derivative, color="tab:orange", linewidth=2, linestyle="--", label="f'(x) (autograd)")
    axes.plot(x[top], derivative[top], "o", color="tab:orange", markeredgecolor="black", zorder=3)
    right_half = x[top] > x[0] + 0.75 * (x[-1] - x[0])  # keep the label inside
    axes.annotate(f"max f' = {derivative[top]:.3g}", (x[top], derivative[top]), textcoords="offset points",
                  xytext=(-6 if right_half else 6, 6), ha="right" if right_half else "left", fontsize=8)
    axes.set_xlim(x[0], x[-1])
    low = min(y.min(), derivative.min()) - 0.2
    high = max(y.max(), derivative.max()) + 0.5
    if shared_scale:
        axes.set_ylim(min(low, -1.2), 3.0)
    else:
        axes.set_ylim(min(low, -0.2), min(high, 3.0))
    shown = ", ".join(f"{key}={value}" for key, value in (params or {}).items())
    axes.set_title(f"{name}({shown})" if shown else name, fontsize=10)
    axes.grid(alpha=0.25)
    if legend:
        axes.legend(fontsize=7, loc="best", framealpha=0.8)


@_drawing
def activation_figure(name: str, params: dict[str, Any] | None = None) -> Any:
    """One activation and its derivative (autograd), the derivative's maximum marked."""
    figure, axes = _subplots(figsize=(5.5, 3.8), dpi=90)
    _draw_activation(axes, name, params, legend=True, shared_scale=False)
    axes.set_xlabel("x")
    figure.tight_layout()
    return figure


def activation_image(name: str, params: dict[str, Any] | None = None) -> Any:
    """``activation_figure`` as an (height, width, 3) uint8 array, drawn once for each activation and
    arguments and then read from the cache (mlpkit/cache.py): a run need not import matplotlib for it."""
    return _cached_activation_image(name, dict(params or {}), source_digest("figures", "activations"))


@disk_cached
def _cached_activation_image(name: str, params: dict[str, Any], code: str) -> Any:
    """``code``: the digest of the modules that draw it, so a change to them draws it again."""
    return figure_to_rgb(activation_figure(name, params))


@_drawing
def activation_gallery_figure(names: Sequence[str] | None = None, columns: int = 4) -> Any:
    """Every registered activation (torch's default arguments) and its derivative, one panel each."""
    from mlpkit.activations import ACTIVATIONS, SATURATED_BELOW

    names = list(names or ACTIVATIONS)
    rows = math.ceil(len(names) / columns)
    figure, grid = _subplots(rows, columns, figsize=(3.4 * columns, 2.7 * rows), dpi=90, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index < len(names):
            _draw_activation(axes, names[index], None, legend=index == 0, shared_scale=True)
        else:
            axes.set_visible(False)
    figure.suptitle("activations f(x) (solid) and their derivatives f'(x) (dashed): each layer scales the "
                    "gradient it passes back by f'\nshaded: where sigmoid, tanh and hardtanh saturate "
                    f"(f' below {SATURATED_BELOW:.0%} of its maximum)", fontsize=11)
    figure.tight_layout()
    return figure


# --- what a trained model predicts -------------------------------------------------------------
def _predictions(model: Any, objective: Any, inputs: Any) -> Any:
    """objective.predict on standardized ``inputs`` (numpy), as numpy; eval mode, then as before."""
    import torch

    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model.logits(torch.as_tensor(inputs, dtype=parameter.dtype, device=parameter.device))
        predicted = objective.predict(logits).float().cpu().numpy()
    model.train(was_training)
    return predicted


def _class_probabilities(model: Any, objective: Any, inputs: Any) -> Any:
    """(N, n_classes) probabilities; a sigmoid head's one output p becomes (1 - p, p)."""
    import numpy as np

    predicted = _predictions(model, objective, inputs)
    if objective.head == "sigmoid":
        predicted = predicted.reshape(-1, 1)
        return np.concatenate([1 - predicted, predicted], axis=1)
    return predicted


def _train_points(data: Any, max_points: int) -> tuple[Any, Any]:
    """Up to ``max_points`` training rows (standardized x, y), the same ones every time."""
    import numpy as np

    x, y = data.train.x.cpu().numpy(), data.train.y.cpu().numpy()
    if len(x) > max_points:
        rows = np.sort(np.random.default_rng(0).choice(len(x), max_points, replace=False))
        x, y = x[rows], y[rows]
    return x, y


def _grid_axis(values: Any, resolution: int) -> Any:
    import numpy as np

    low, high = float(values.min()), float(values.max())
    margin = 0.1 * (high - low) + 1e-3
    return np.linspace(low - margin, high + margin, resolution)


@_drawing
def decision_boundary_figure(model: Any, objective: Any, data: Any, resolution: int = 200,
                             max_points: int = 1500) -> Any:
    """Predicted class regions of a 2-input classifier, with the training points on top.

    The grid spans the standardized inputs; the axes show the original units. Each region's colour
    is its class's, faded where the model is unsure (the colours mixed by probability).
    """
    import numpy as np

    points, labels = _train_points(data, max_points)
    first, second = _grid_axis(points[:, 0], resolution), _grid_axis(points[:, 1], resolution)
    grid = np.stack(np.meshgrid(first, second), axis=-1).reshape(-1, 2)
    probabilities = _class_probabilities(model, objective, grid)
    n_classes = probabilities.shape[1]
    colors = np.asarray(_colormap("tab10").colors)[np.arange(n_classes) % 10]
    shade = np.clip(0.65 + 0.35 * (probabilities @ colors), 0, 1)  # pale: the points stand out
    mean, std = np.asarray(data.feature_mean, float), np.asarray(data.feature_std, float)
    first, second = first * std[0] + mean[0], second * std[1] + mean[1]
    points = points * std + mean

    figure, axes = _subplots(figsize=(5.5, 5.0), dpi=90)
    axes.imshow(shade.reshape(resolution, resolution, 3), origin="lower", aspect="auto",
                extent=(first[0], first[-1], second[0], second[-1]), interpolation="bilinear")
    predicted = probabilities.argmax(axis=1).reshape(resolution, resolution)
    for index in range(n_classes):  # the boundaries: where the predicted class changes
        if 0 < (predicted == index).sum() < predicted.size:
            axes.contour(first, second, (predicted == index).astype(float), levels=[0.5], colors="black",
                         linewidths=0.8)
    names = list(data.class_names) or [str(index) for index in range(n_classes)]
    for index in range(n_classes):
        mine = labels == index
        axes.scatter(points[mine, 0], points[mine, 1], s=10, color=colors[index], edgecolors="black",
                     linewidths=0.5, label=names[index])
    accuracy = float((_class_probabilities(model, objective, data.train.x.cpu().numpy()).argmax(axis=1)
                      == data.train.y.cpu().numpy()).mean())
    axes.set_xlabel(data.feature_names[0])
    axes.set_ylabel(data.feature_names[1])
    axes.set_title(f"data={data.name}: predicted class regions (train accuracy {accuracy:.3f})", fontsize=10)
    axes.legend(fontsize=7, loc="best", framealpha=0.8, markerscale=1.5)
    figure.tight_layout()
    return figure


@_drawing
def regression_fit_figure(model: Any, objective: Any, data: Any, resolution: int = 400,
                          max_points: int = 1500) -> Any:
    """The fitted curve of a 1-input regression over the training points, in original units."""
    import numpy as np

    points, targets = _train_points(data, max_points)
    inputs = _grid_axis(points[:, 0], resolution).reshape(-1, 1)
    curve = _predictions(model, objective, inputs)[:, 0]
    mean, std = float(np.asarray(data.feature_mean).reshape(-1)[0]), float(np.asarray(data.feature_std).reshape(-1)[0])
    targets = targets.reshape(len(targets), -1)[:, 0] * data.target_std + data.target_mean

    figure, axes = _subplots(figsize=(6.0, 4.0), dpi=90)
    axes.scatter(points[:, 0] * std + mean, targets, s=8, color="0.55", alpha=0.6, label="training points")
    axes.plot(inputs[:, 0] * std + mean, curve, color="tab:red", linewidth=2, label="model")
    axes.set_xlabel(data.feature_names[0])
    axes.set_ylabel(data.extra.get("target") or "target")
    axes.set_title(f"data={data.name}: the model's fit", fontsize=10)
    axes.legend(fontsize=8, frameon=False)
    axes.grid(alpha=0.25)
    figure.tight_layout()
    return figure


def prediction_figure(model: Any, objective: Any, data: Any) -> Any | None:
    """What the model predicts over its input space, where that can be drawn: the decision boundary
    of a 2-input classifier or the curve of a 1-input regression; None for any other data (and a
    stream's, whose training rows are not held)."""
    if data.placement == "stream":
        return None
    if objective.is_classification and data.in_features == 2:
        return decision_boundary_figure(model, objective, data)
    if not objective.is_classification and data.in_features == 1 and objective.out_features == 1:
        return regression_fit_figure(model, objective, data)
    return None


# --- evaluation -------------------------------------------------------------------------------
@_drawing
def confusion_matrix_figure(matrix: Any, class_names: Sequence[str], title: str) -> Any:
    """Counts per (true, predicted) class; the diagonal is what the model got right."""
    import numpy as np

    matrix = np.asarray(matrix)
    size = len(class_names)
    figure, axes = _subplots(figsize=(max(4.5, 1.2 + 0.5 * size), max(4.0, 0.9 + 0.45 * size)), dpi=90)
    image = axes.imshow(matrix, cmap="Blues")
    if size <= 25:
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > matrix.max() / 2 else "black")
    long_names = max((len(str(name)) for name in class_names), default=0) > 3
    axes.set_xticks(range(size), class_names, rotation=45 if long_names else 0,
                    ha="right" if long_names else "center", fontsize=8)
    axes.set_yticks(range(size), class_names, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure


@_drawing
def predicted_vs_true_figure(true: Any, predicted: Any, title: str, target: str = "target") -> Any:
    """One point per sample; a perfect model puts every point on the diagonal."""
    import numpy as np

    true, predicted = np.asarray(true, float).reshape(-1), np.asarray(predicted, float).reshape(-1)
    low, high = min(true.min(), predicted.min()), max(true.max(), predicted.max())
    figure, axes = _subplots(figsize=(4.8, 4.5), dpi=90)
    axes.plot([low, high], [low, high], color="0.5", linestyle="--", linewidth=1, label="predicted = true")
    axes.scatter(true, predicted, s=10, alpha=0.6, color="tab:blue")
    axes.set_xlabel(f"true {target}")
    axes.set_ylabel(f"predicted {target}")
    axes.set_aspect("equal", adjustable="datalim")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, frameon=False, loc="upper left")
    axes.grid(alpha=0.25)
    figure.tight_layout()
    return figure


@_drawing
def sweep_curves_figure(curves: dict[str, list[tuple[int, float, float]]], metric: str) -> Any:
    """A sweep's validation curves: per configuration, (epoch, mean, std) over its seeds, with a ±std band."""
    figure, axes = _subplots(figsize=(8, 4.5), dpi=120)
    for label, points in curves.items():
        epochs, means, stds = zip(*points)
        line, = axes.plot(epochs, means, marker="o", label=label)
        low = [m - (0.0 if math.isnan(s) else s) for m, s in zip(means, stds)]
        high = [m + (0.0 if math.isnan(s) else s) for m, s in zip(means, stds)]
        axes.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set(xlabel="epoch", ylabel=f"val_{metric}",
             title=f"val_{metric} per configuration: mean over seeds, band = ±1 std")
    return _with_legend(figure, axes)


@_drawing
def sweep_grad_norms_figure(lines: dict[str, list[float]]) -> Any:
    """One line per job across its layers (input side first), on a log axis."""
    figure, axes = _subplots(figsize=(8, 4.5), dpi=120)
    for label, norms in lines.items():
        shown = [max(norm, FLOOR) if math.isfinite(norm) else math.nan for norm in norms]
        axes.plot(range(1, len(shown) + 1), shown, marker="o", label=label)
    axes.set_yscale("log")
    axes.set_xticks(range(1, max(len(norms) for norms in lines.values()) + 1))
    axes.set(xlabel="layer (linear1 = input side, last = output layer)",
             ylabel="gradient L2 norm (last measured step)", title="Per-layer gradient norms by job")
    return _with_legend(figure, axes)


def _with_legend(figure: Any, axes: Any) -> Any:
    axes.legend(fontsize="small", loc="best")
    figure.tight_layout()
    return figure


@_drawing
def save_figure(figure: Any, path: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write the figure once per format (``path`` with each suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in formats:
        target = path.with_suffix(f".{suffix}")
        figure.savefig(target, format=suffix)
        written.append(target)
    return written


@_drawing
def lr_find_figure(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: float,
                   rule: str) -> Any:
    """The learning-rate range test: loss against lr (log axis), raw and smoothed, the suggestion marked."""
    figure, axes = _subplots(figsize=(6.4, 4.0), dpi=100)
    axes.plot(lrs, losses, color="0.75", linewidth=1, label="loss per step")
    axes.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed")
    axes.axvline(suggestion, color="C3", linestyle="--", label=f"suggested lr {suggestion:.3g} ({rule})")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    low, high = min(smoothed), max(smoothed[0], min(smoothed) * 2)
    axes.set_ylim(low - 0.1 * (high - low), high + 0.3 * (high - low))
    axes.legend(loc="upper left")
    axes.set_title("learning-rate range test")
    figure.tight_layout()
    return figure


@_drawing
def cv_curves_figure(curves: dict[str, list[tuple[int, float]]], metric: str) -> Any:
    """Each fold's validation metric per epoch, and their mean (a cross-validation's figure)."""
    figure, axes = _subplots(figsize=(8, 4.5), dpi=120)
    for name, points in curves.items():
        axes.plot(*zip(*points), marker="o", markersize=3, linewidth=1, alpha=0.8, label=name)
    by_epoch: dict[int, list[float]] = {}
    for points in curves.values():
        for epoch, value in points:
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    axes.plot(epochs, [sum(by_epoch[epoch]) / len(by_epoch[epoch]) for epoch in epochs], color="black",
              linewidth=2, linestyle="--", label="mean")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set(xlabel="epoch", ylabel=f"val_{metric}",
             title=f"val_{metric} of each fold ({len(curves)}-fold cross-validation)")
    axes.legend(fontsize="small", loc="best")
    figure.tight_layout()
    return figure

"""Matplotlib figures. Matplotlib is imported inside each function (Agg backend): importing it costs
about a second, which a run that draws no figure should not pay."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FLOOR = 1e-12  # bars at or below zero are drawn at this height so a log axis can show them


def _pyplot():
    # Agg draws to memory without a display: works on servers and in tests.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gradient_flow_figure(layer_names: Sequence[str], measures: dict[str, Sequence[float]], title: str) -> Any:
    """Bars on a log axis: one group per measure, one bar per layer (input side first, dark to light).

    A vanishing gradient reads as a staircase that climbs from the first layer to the last by orders
    of magnitude; a healthy network has bars of similar height in each group.
    """
    plt = _pyplot()
    n_layers = len(layer_names)
    colors = plt.get_cmap("viridis")([i / max(n_layers - 1, 1) for i in range(n_layers)])
    width = 0.8 / max(n_layers, 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 + 2.2 * len(measures)), 4.0), dpi=90)
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


def figure_to_rgb(figure: Any) -> Any:
    """The figure as an (height, width, 3) uint8 array, then closed."""
    import numpy as np

    plt = _pyplot()
    figure.canvas.draw()
    rgb = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return rgb


def save_png(figure: Any, path: Path) -> Path:
    """Write the figure as PNG, then close it."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path

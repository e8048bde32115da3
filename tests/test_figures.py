"""The figures: activation curves (values agree with torch, derivatives from autograd) and what a
model predicts over a 2-D or 1-D input space."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mlpkit import figures
from mlpkit.activations import ACTIVATIONS
from mlpkit.data import build_data
from mlpkit.model import build_model
from mlpkit.objective import build_objective
from tests.conftest import ROOT, python_c

POINTS = [-1.0, 1.0, 2.0, 3.0]


def test_activation_curves_agree_with_torch():
    _, sigmoid, _ = figures.activation_curve("sigmoid", x=POINTS)
    _, tanh, _ = figures.activation_curve("tanh", x=POINTS)
    assert sigmoid.tolist() == pytest.approx([0.2689, 0.7311, 0.8808, 0.9526], abs=1e-4)
    assert tanh.tolist() == pytest.approx([-0.7616, 0.7616, 0.9640, 0.9951], abs=1e-4)
    _, leaky, _ = figures.activation_curve("leaky", {"negative_slope": 0.2}, x=POINTS)
    assert leaky.tolist() == pytest.approx([-0.2, 1.0, 2.0, 3.0])


def test_derivatives_come_from_autograd_and_peak_where_the_textbook_says():
    x, sigmoid, d_sigmoid = figures.activation_curve("sigmoid")
    assert d_sigmoid.tolist() == pytest.approx((sigmoid * (1 - sigmoid)).tolist(), abs=1e-6)
    assert float(d_sigmoid.max()) == pytest.approx(0.25) and float(x[d_sigmoid.argmax()]) == pytest.approx(0, abs=1e-6)
    _, tanh, d_tanh = figures.activation_curve("tanh")
    assert d_tanh.tolist() == pytest.approx((1 - tanh**2).tolist(), abs=1e-6)
    assert float(d_tanh.max()) == pytest.approx(1.0)
    _, _, d_relu = figures.activation_curve("relu", x=[-2.0, -0.5, 0.5, 2.0])
    assert d_relu.tolist() == [0.0, 0.0, 1.0, 1.0]
    for name, spec in ACTIVATIONS.items():  # the registry's bound is what autograd finds
        assert float(figures.activation_curve(name)[2].max()) == pytest.approx(spec.max_derivative, abs=3e-3), name


def texts(figure) -> list[str]:
    return [text.get_text() for axes in figure.axes for text in (axes.title, *axes.texts)]


def test_activation_figure_marks_the_derivative_maximum():
    figure = figures.activation_figure("sigmoid", {})
    assert "sigmoid" in texts(figure) and "max f' = 0.25" in texts(figure)
    assert figures.figure_to_rgb(figure).shape[2] == 3
    leaky = figures.activation_figure("leaky", {"negative_slope": 0.2})
    assert "leaky(negative_slope=0.2)" in texts(leaky)
    figures.figure_to_rgb(leaky)


def test_gallery_has_one_panel_per_registered_activation():
    figure = figures.activation_gallery_figure()
    titles = [axes.get_title() for axes in figure.axes if axes.get_visible()]
    assert titles == list(ACTIVATIONS)
    assert "max f' = 0.25" in texts(figure) and "max f' = 1" in texts(figure)
    figures.figure_to_rgb(figure)


def tiny(source: str, **params):
    data = build_data({"source": source, "val_fraction": 0.15, "test_fraction": 0.15, "split_seed": 0,
                       "n_samples": 200, **params})
    objective = build_objective("auto", "auto", data.task, data.name, data.n_classes, data.n_targets,
                                target_mean=data.target_mean, target_std=data.target_std)
    torch.manual_seed(0)
    model = build_model(data.in_features, objective.out_features, [8], "tanh", {}, objective.head, dropout=0.5)
    return model, objective, data


@pytest.mark.parametrize("source", ["moons", "spirals"])
def test_decision_boundary_of_a_2d_classifier(source):
    model, objective, data = tiny(source)
    model.train()
    figure = figures.prediction_figure(model, objective, data)
    assert model.training  # drawn in eval mode (no dropout), then put back as it was
    axes = figure.axes[0]
    assert axes.get_xlabel() == "x1" and axes.get_ylabel() == "x2"
    assert axes.get_title().startswith(f"data={source}: predicted class regions (train accuracy ")
    assert [text.get_text() for text in axes.get_legend().get_texts()] == data.class_names
    rgb = figures.figure_to_rgb(figure)
    assert rgb.shape[2] == 3 and rgb.std() > 10  # regions, not a blank canvas


def test_regression_fit_of_a_1d_input_and_none_for_other_shapes():
    model, objective, data = tiny("sine")
    figure = figures.prediction_figure(model, objective, data)
    assert figure.axes[0].get_title() == "data=sine: the model's fit"
    figures.figure_to_rgb(figure)
    assert figures.prediction_figure(*tiny("blobs", n_features=3)) is None  # 3 inputs: nothing to draw


def test_a_redrawn_gradient_flow_figure_shows_what_a_new_one_would():
    """log_gradient_flow builds one figure and redraws it for each step: every frame must show its own
    bars, hatches and y range, as a figure drawn for that step alone does."""
    import math

    names = ["linear1", "linear2", "linear3"]
    first = {"grad_norm": [0.1, 0.01, 1.0], "grad_ratio": [0.5, 0.2, 0.3]}
    later = {"grad_norm": [1e-7, math.nan, 10.0], "grad_ratio": [0.0, 2.0, 30.0]}
    fresh = figures.gradient_flow_figure(names, later, "gradient flow, step 8")
    redrawn = figures._redraw_gradient_flow(figures.gradient_flow_figure(names, first, "step 0"), later,
                                            "gradient flow, step 8")
    bars = lambda figure: [(bar.get_height(), bar.get_hatch()) for bar in figure.axes[0].patches]  # noqa: E731
    assert bars(redrawn) == bars(fresh)
    assert bars(redrawn)[1] == (figures.FLOOR, "xx") and bars(redrawn)[3] == (figures.FLOOR, None)  # NaN, 0
    assert redrawn.axes[0].get_ylim() == pytest.approx(fresh.axes[0].get_ylim())
    assert redrawn.axes[0].get_title() == "gradient flow, step 8"
    assert figures.figure_to_rgb(redrawn).shape == figures.figure_to_rgb(fresh).shape


# Threads drawing a run's figures at once, in a fresh interpreter (matplotlib's text layout
# caches what it parsed: a warm process would hide a race there).
DRAW_IN_THREADS = """
import pathlib, sys, threading
from mlpkit import figures
failures, start = [], threading.Barrier(4)
def draw(offset):
    start.wait()
    try:
        for k in range(8):
            measures = {"grad_norm": [10.0 ** -(k + offset), 1.0, 10.0 ** (k + offset)], "grad_ratio": [0.1, 0.2, 0.3]}
            figure = figures.gradient_flow_figure(["linear1", "linear2", "linear3"], measures, f"step {k}")
            figures.figure_to_rgb(figure)
            figures._redraw_gradient_flow(figure, measures, "again")
            figures.save_png(figure, pathlib.Path(sys.argv[1]) / f"{offset}_{k}.png")
        figures.figure_to_rgb(figures.activation_figure("tanh" if offset else "sigmoid"))
    except Exception as error:
        failures.append(repr(error))
threads = [threading.Thread(target=draw, args=(offset,)) for offset in (0, 2, 4, 6)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(failures, "matplotlib.pyplot" in sys.modules)
"""


@pytest.mark.slow
def test_threads_draw_figures_at_once_without_pyplot(tmp_path):
    result = subprocess.run([sys.executable, "-c", DRAW_IN_THREADS, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[] False"  # no failure, and pyplot never imported
    assert len(list(tmp_path.glob("*.png"))) == 32


TRAIN_IN_TWO_THREADS = """
import sys, threading
import mlpkit
failures = []
def train(name):
    try:
        mlpkit.train(["trainer.max_epochs=1", "data=moons", "trainer.progress=false", "model.hidden_sizes=[8]",
                      "activation=" + name], run_dir=sys.argv[1] + "/" + name)
    except Exception as error:
        failures.append(repr(error))
threads = [threading.Thread(target=train, args=(name,)) for name in ("tanh", "relu")]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(failures)
"""


@pytest.mark.slow
def test_two_runs_in_two_threads_both_finish_with_their_figures(tmp_path):
    env = {**os.environ, "MLPKIT_CACHE_DIR": ""}  # the activation figure drawn in both threads too
    result = subprocess.run([sys.executable, "-c", TRAIN_IN_TWO_THREADS, str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]", result.stderr
    for name in ("tanh", "relu"):
        assert (tmp_path / name / "metrics.json").is_file()
        assert (tmp_path / name / "gradient_flow.png").is_file()


@pytest.mark.slow
def test_the_sweep_figures_leave_the_process_backend_alone_and_never_import_pyplot(tmp_path):
    """A notebook's inline backend survives mlpkit.sweep: its figures are drawn on a canvas of their own."""
    code = f"""
import sys
from pathlib import Path
import matplotlib
matplotlib.use("svg")
from mlpkit.sweeps import plot_grad_norms, plot_val_curves
out = Path({str(tmp_path)!r})
jobs = [{{"grad_norms": {{"linear1": 1e-7, "linear2": 0.3}}, "overrides": ["activation=sigmoid"], "dir": out}},
        {{"grad_norms": {{"linear1": 0.2, "linear2": 0.3}}, "overrides": ["activation=relu"], "dir": out}}]
groups = [{{"name": "relu", "completed": [{{"metrics": {{"history": [{{"epoch": 1, "loss/val": 0.5}},
                                                                    {{"epoch": 2, "loss/val": 0.3}}]}}}}]}}]
assert plot_grad_norms(jobs, [], out / "norms.png") == out / "norms.png"
assert plot_val_curves(groups, "loss", out / "curves.png") == out / "curves.png"
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    result = python_c(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "False"]
    assert (tmp_path / "norms.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"

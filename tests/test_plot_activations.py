"""scripts/plot_activations.py: the activation gallery as PNG and SVG files, or as TensorBoard images."""
from __future__ import annotations

import importlib.util

import pytest

from mlpkit.activations import ACTIVATIONS
from tests.conftest import ROOT, script

SCRIPT = ROOT / "scripts" / "plot_activations.py"


@pytest.mark.slow
def test_writes_png_and_svg_for_the_grid_and_each_activation(tmp_path):
    result = script("plot_activations", "figures", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {2 * (len(ACTIVATIONS) + 1)} files to figures")
    stems = ["activations", *(f"activation_{name}" for name in ACTIVATIONS)]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        f"{stem}.{suffix}" for stem in stems for suffix in ("png", "svg"))
    assert (tmp_path / "figures" / "activations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "figures" / "activation_sigmoid.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_tensorboard_gets_the_same_figures_as_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = importlib.util.spec_from_file_location("plot_activations", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--tensorboard", str(tmp_path / "tb")]) == 0
    accumulator = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    assert sorted(tags) == sorted(["activations/all", *(f"activation/{name}" for name in ACTIVATIONS)])
    grid = accumulator.Images("activations/all")[0]
    assert grid.width > 1000 and grid.height > 800  # one panel per activation
    assert not any(path.suffix in (".png", ".svg") for path in tmp_path.rglob("*"))  # images only

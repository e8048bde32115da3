"""scripts/plot_activations.py: the activation gallery as PNG and SVG files, or as TensorBoard images."""
from __future__ import annotations

import importlib.util

from mlpkit.activations import ACTIVATIONS
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "plot_activations.py"


def load_script():
    """scripts/plot_activations.py as a module: its main() in-process (test_readme.py runs the README's
    plot_activations commands as __main__ in a fresh interpreter)."""
    spec = importlib.util.spec_from_file_location("plot_activations", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_writes_png_and_svg_for_the_grid_and_each_activation(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert load_script().main(["figures"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {2 * (len(ACTIVATIONS) + 1)} files to figures")
    stems = ["activations", *(f"activation_{name}" for name in ACTIVATIONS)]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        f"{stem}.{suffix}" for stem in stems for suffix in ("png", "svg"))
    assert (tmp_path / "figures" / "activations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "figures" / "activation_sigmoid.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_tensorboard_gets_the_same_figures_as_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert load_script().main(["--tensorboard", str(tmp_path / "tb")]) == 0
    accumulator = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    assert sorted(tags) == sorted(["activations/all", *(f"activation/{name}" for name in ACTIVATIONS)])
    grid = accumulator.Images("activations/all")[0]
    assert grid.width > 1000 and grid.height > 800  # one panel per activation
    assert not any(path.suffix in (".png", ".svg") for path in tmp_path.rglob("*"))  # images only

"""What a run needs that is slow to make and always the same is cached on disk (mlpkit/cache.py): a run
whose data was seen before does not import scikit-learn and gets the same arrays and splits; the
activation figure is drawn once."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# build_data in a fresh interpreter: the splits it made and whether scikit-learn was imported
BUILD = """
import json, sys
from mlpkit.data import build_data
data = build_data({"source": sys.argv[1], "val_fraction": 0.15, "test_fraction": 0.15, "split_seed": 3})
print(json.dumps({"sklearn": "sklearn" in sys.modules, "train": data.train.x[:, 0].tolist()[:50],
                  "val": data.val.y.tolist(), "rows": [len(data.train), len(data.val), len(data.test)],
                  "names": data.class_names}))
"""


def build(source: str, cache_dir) -> dict:
    env = {**os.environ, "MLPKIT_CACHE_DIR": str(cache_dir)}
    result = subprocess.run([sys.executable, "-c", BUILD, source], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("source", ["digits", "breast_cancer", "moons"])
def test_a_second_run_reads_the_cache_and_does_not_import_sklearn(tmp_path, source):
    first, second = build(source, tmp_path), build(source, tmp_path)
    assert first.pop("sklearn") is True and second.pop("sklearn") is False
    assert first == second  # the same rows in the same splits
    assert list(tmp_path.glob("*/mlpkit/data/splits/train_test_split/*/output.pkl"))


@pytest.mark.slow
def test_a_zero_epoch_run_with_a_warm_cache_imports_neither_sklearn_nor_matplotlib(tmp_path):
    code = ("import runpy, sys; sys.argv = ['train.py', 'trainer.max_epochs=0', 'trainer.progress=false', "
            "'hydra.run.dir=' + sys.argv[1]]\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('sklearn', 'matplotlib') if m in sys.modules))")
    env = {**os.environ, "MLPKIT_CACHE_DIR": str(tmp_path / "cache")}
    imported = []
    for run in ("first", "second"):
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path / run)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        imported.append(result.stdout.splitlines()[-1])
    assert imported == ["['matplotlib', 'sklearn']", "[]"]


def test_the_cached_activation_image_is_the_figure(tmp_path, monkeypatch):
    from mlpkit import figures

    monkeypatch.setenv("MLPKIT_CACHE_DIR", str(tmp_path))
    drawn = figures.figure_to_rgb(figures.activation_figure("leaky", {"negative_slope": 0.2}))
    first = figures.activation_image("leaky", {"negative_slope": 0.2})
    again = figures.activation_image("leaky", {"negative_slope": 0.2})
    assert (first == drawn).all() and (again == drawn).all()
    assert len(list(tmp_path.glob("*/mlpkit/figures/_cached_activation_image/*/output.pkl"))) == 1
    other = figures.activation_image("leaky", {"negative_slope": 0.3})  # other arguments: drawn anew
    assert other.shape == drawn.shape and (other != drawn).any()


@pytest.mark.slow
def test_an_empty_cache_dir_turns_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = build("digits", ""), build("digits", "")
    assert first["sklearn"] and second["sklearn"] and first == second
    assert not list(tmp_path.iterdir())  # nothing written, here or anywhere it could be told


@pytest.mark.slow
def test_an_unwritable_or_damaged_cache_never_fails_a_run(tmp_path):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("not a folder")
    expected = build("digits", tmp_path / "cache")
    assert build("digits", in_the_way) == expected  # computed, not cached
    for entry in (tmp_path / "cache").glob("*/mlpkit/data/*/*/*/output.pkl"):
        entry.write_bytes(b"cut short by a kill")
    damaged = build("digits", tmp_path / "cache")
    assert damaged.pop("sklearn") is True and damaged == {k: v for k, v in expected.items() if k != "sklearn"}
    assert build("digits", tmp_path / "cache")["sklearn"] is False  # written again


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from mlpkit.cache import cache_dir

    monkeypatch.setenv("MLPKIT_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.setenv("MLPKIT_CACHE_DIR", "")
    assert cache_dir() is None
    monkeypatch.delenv("MLPKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mlpkit"

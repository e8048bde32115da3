"""What a run needs that is slow to make and always the same is cached on disk (mlpkit/cache.py): a run
whose data was seen before does not import scikit-learn and gets the same arrays and splits; the
activation figure is drawn once. The cache holds arrays and plain values in files that cannot carry
code: a file planted there runs nothing."""
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlpkit.cache import disk_cached
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


def build(source: str, cache_dir, quiet: bool = False) -> dict:
    """``quiet``: the run printed nothing on stderr."""
    env = {**os.environ, "MLPKIT_CACHE_DIR": str(cache_dir)}
    result = subprocess.run([sys.executable, "-c", BUILD, source], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not quiet or result.stderr == "", result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def entries(root, function: str) -> list:
    """The cache's entries for ``function`` (module.name), one file each."""
    return list(root.glob(f"*/{function}/*"))


@pytest.mark.slow
@pytest.mark.parametrize("source", ["breast_cancer", "moons"])  # digits: in the test of a damaged cache below
def test_a_second_run_reads_the_cache_and_does_not_import_sklearn(tmp_path, source):
    assert_second_build_reads_the_cache(source, tmp_path)


def assert_second_build_reads_the_cache(source: str, cache_dir) -> dict:
    """Two builds into a fresh cache: the second imports no scikit-learn and gets the same splits. The first's."""
    first, second = build(source, cache_dir), build(source, cache_dir)
    assert first["sklearn"] is True and second.pop("sklearn") is False
    assert {k: v for k, v in first.items() if k != "sklearn"} == second  # the same rows in the same splits
    assert len(entries(cache_dir, "mlpkit.data.splits.train_test_split")) == 2  # rest/test, then train/val
    return first


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
    assert len(entries(tmp_path, "mlpkit.figures._cached_activation_image")) == 1
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
    expected = assert_second_build_reads_the_cache("digits", tmp_path / "cache")
    assert build("digits", in_the_way) == expected  # computed, not cached
    damaged_entries = [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert damaged_entries
    for entry in damaged_entries:
        entry.write_bytes(b"cut short by a kill")
    damaged = build("digits", tmp_path / "cache", quiet=True)  # made again without a word
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


# --- the cache itself, on functions of this module (in-process: fast) ----------------------------
CALLS: list = []


@disk_cached
def squares(n: int, scale: float = 1.0) -> dict:
    """Every kind of value the cache holds."""
    CALLS.append((n, scale))
    return {"values": np.arange(n, dtype=np.float64) ** 2 * scale, "names": [f"row {i}" for i in range(3)],
            "pair": (n, "text"), "none": None, "flag": True, "labels": np.array(["a", "bb"]),
            "count": np.int64(n)}


@disk_cached
def total(values: np.ndarray) -> float:
    CALLS.append("total")
    return float(values.sum())


@disk_cached
def unstorable(kind: str):
    return {"set": {1, 2}, "objects": np.array([object()]), "bytes": b"raw"}[kind]


class Bomb:
    """A pickle that creates ``marker`` when it is loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache of this test's own, the compute log cleared, every check of the folder made anew."""
    from mlpkit import cache as module

    root = tmp_path / "cache"
    monkeypatch.setenv("MLPKIT_CACHE_DIR", str(root))
    module._prepared.cache_clear()
    CALLS.clear()
    yield root
    module._prepared.cache_clear()


def files(root):
    return sorted(path for path in root.rglob("*") if path.is_file())


def same(first, second) -> bool:
    """Equal values of the same types (arrays: same dtype, shape and contents)."""
    if isinstance(first, (np.ndarray, np.generic)):
        return type(first) is type(second) and first.dtype == second.dtype and np.array_equal(first, second)
    if isinstance(first, dict):
        return type(second) is dict and first.keys() == second.keys() and all(same(first[k], second[k]) for k in first)
    if isinstance(first, (list, tuple)):
        return type(first) is type(second) and len(first) == len(second) and all(map(same, first, second))
    return type(first) is type(second) and first == second


def test_a_cached_result_is_the_functions_own(cache):
    computed = squares.__wrapped__(7)
    assert same(squares(7), computed) and same(squares(7), computed)
    assert same(squares(7, 1.0), computed) and same(squares(n=7), computed)  # the same arguments, spelt otherwise
    assert CALLS == [(7, 1.0), (7, 1.0)]  # the unwrapped call, then one computed for the cache
    assert same(squares(7, scale=2.0), squares.__wrapped__(7, scale=2.0))  # other arguments: another entry
    total(np.arange(5)), total(np.arange(5)), total(np.arange(6))  # arrays are keyed by their contents
    assert CALLS.count("total") == 2


def test_a_pickle_planted_where_an_entry_lives_runs_nothing(cache, tmp_path):
    """Whatever file name an entry has (the old joblib cache's output.pkl or this one's), a pickle
    put there by someone else is never loaded: nothing it names runs, and the result is right."""
    marker = tmp_path / "ran"
    bomb = pickle.dumps(Bomb(marker))
    pickle.loads(bomb)  # the bomb works
    assert marker.exists()
    marker.unlink()
    squares(4)
    versions = next(cache.iterdir())
    for name in ("tests/test_cache/squares/0123abcd/output.pkl", "tests/test_cache/squares/func_code.py"):
        (versions / name).parent.mkdir(parents=True, exist_ok=True)
        (versions / name).write_bytes(bomb)
    for path in files(cache):
        path.write_bytes(bomb)
    assert same(squares(4), squares.__wrapped__(4))
    assert not marker.exists()


def test_a_damaged_entry_is_made_again_without_a_traceback(cache, capfd):
    expected = squares.__wrapped__(9)
    squares(9)
    for path in files(cache):
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # cut short
    capfd.readouterr()
    assert same(squares(9), expected)
    for path in files(cache):
        path.write_bytes(b"not an entry at all")
    assert same(squares(9), expected)
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out and len((printed.err + printed.out).splitlines()) <= 2
    CALLS.clear()
    assert same(squares(9), expected) and CALLS == []  # written again whole


def test_a_value_the_cache_cannot_hold_is_a_type_error_not_a_pickle(cache):
    for kind in ("set", "objects", "bytes"):
        with pytest.raises(TypeError, match="unstorable"):
            unstorable(kind)
    assert not [path for path in files(cache) if "unstorable" in str(path)]


def test_past_the_limit_the_entries_used_longest_ago_go(cache, monkeypatch):
    from mlpkit import cache as module

    written = {}
    for n in (1000, 1001, 1002):  # about 8 KB each
        before = set(files(cache))
        squares(n)
        (written[n],) = set(files(cache)) - before
    now = time.time()
    for age, n in ((300, 1000), (200, 1001), (100, 1002)):
        os.utime(written[n], (now - age, now - age))
    module._prepared.cache_clear()  # another process: reading 1000 makes it the one used last
    squares(1000)
    size = written[1000].stat().st_size
    monkeypatch.setattr(module, "CACHE_BYTES", int(2.5 * size))
    module._prepared.cache_clear()  # the next process trims the cache to the limit
    CALLS.clear()
    squares(1000), squares(1002), squares(1001)
    assert CALLS == [(1001, 1.0)]  # 1001, used longest ago, went


def test_a_cache_others_can_write_is_refused_with_one_line(cache, capfd):
    cache.mkdir()
    cache.chmod(0o777)
    capfd.readouterr()
    assert same(squares(3), squares.__wrapped__(3)) and same(squares(3), squares.__wrapped__(3))
    assert files(cache) == [] and CALLS == [(3, 1.0)] * 4  # nothing read or written there
    printed = capfd.readouterr().err
    assert len(printed.splitlines()) == 1 and str(cache) in printed and "chmod" in printed


def test_threads_writing_one_entry_at_once_leave_one_whole_entry(cache):
    start = threading.Barrier(6)

    def write():
        start.wait()
        return squares(20000)

    with ThreadPoolExecutor(6) as pool:
        results = [future.result() for future in [pool.submit(write) for _ in range(6)]]
    expected = squares.__wrapped__(20000)
    assert all(same(result, expected) for result in results)
    assert len(files(cache)) == 1 and same(squares(20000), expected)


def test_every_cached_function_of_mlpkit_reads_back_what_it_returned(cache):
    """The format holds exactly what the cached functions return: a bundled set's arrays and names,
    generated points, split indices, the activation image."""
    from mlpkit.data import bundled, splits, synthetic
    from mlpkit.figures import _cached_activation_image

    calls = [(bundled._load, ("load_digits",), {}), (bundled._load, ("load_diabetes",), {"scaled": False}),
             (synthetic._generated, ("make_moons", 50), {"noise": 0.1, "random_state": 0}),
             (splits.train_test_split, (np.arange(40), 8, 3, np.arange(40) % 2), {}),
             (_cached_activation_image, ("tanh", {}, "code"), {})]
    for function, args, kwargs in calls:
        expected = function.__wrapped__(*args, **kwargs)
        assert same(function(*args, **kwargs), expected) and same(function(*args, **kwargs), expected), function
    assert len(files(cache)) == len(calls)

"""Generated sets, every data config, splits, standardisation and device placement."""
from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch

from mlpkit.data import SOURCES, Data, Split, build_data, save_label_mapping
from mlpkit.data import dataset as dataset_module
from mlpkit.data.dataset import SPLIT_KEYS, choose_placement
from mlpkit.errors import ConfigError
from tests.conftest import CONFIG_DIR, python_c

DATA_CONFIG_DIR = CONFIG_DIR / "data"
SPLITS = {"val_fraction": 0.15, "test_fraction": 0.15, "split_seed": 0}


def load(source: str, **keys) -> Data:
    return build_data({"source": source, **SPLITS, **keys})


def original_units(data: Data, split: Split) -> tuple[np.ndarray, np.ndarray]:
    x = split.x.numpy() * data.feature_std + data.feature_mean
    y = split.y.numpy()
    if data.task == "regression":
        y = y[:, 0] * data.target_std + data.target_mean
    return x, y


@pytest.mark.parametrize("source, task, in_features, n_classes", [
    ("moons", "binary", 2, 2), ("circles", "binary", 2, 2), ("spirals", "multiclass", 2, 3),
    ("xor", "binary", 2, 2), ("blobs", "multiclass", 2, 3), ("sine", "regression", 1, 0),
])
def test_generated_sets_declare_task_and_sizes(source, task, in_features, n_classes):
    data = load(source, n_samples=400)
    assert (data.task, data.in_features, data.n_classes) == (task, in_features, n_classes)
    assert (len(data.train), len(data.val), len(data.test)) == (280, 60, 60)
    again, other = load(source, n_samples=400), load(source, n_samples=400, seed=1)
    assert torch.equal(data.train.x, again.train.x)  # seeded
    assert not torch.equal(data.train.x, other.train.x)


def linear_accuracy(data: Data) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=500).fit(data.train.x.numpy(), data.train.y.numpy())
    return model.score(data.val.x.numpy(), data.val.y.numpy())


@pytest.mark.parametrize("source, keys", [("spirals", {"n_arms": 3}), ("xor", {})])
def test_a_linear_model_fails_where_an_mlp_is_needed(source, keys):
    assert linear_accuracy(load(source, **keys)) < 0.6
    assert linear_accuracy(load("blobs", noise=0.5)) > 0.95  # while blobs are linearly separable


def test_spiral_arms_are_classes_of_equal_size():
    data = load("spirals", n_samples=800, n_arms=4, noise=0.0)
    assert data.class_names == ["arm 0", "arm 1", "arm 2", "arm 3"]
    labels = torch.cat([data.train.y, data.val.y, data.test.y])
    assert torch.bincount(labels).tolist() == [200, 200, 200, 200]
    assert load("spirals", n_arms=2).task == "binary"


def test_xor_labels_follow_the_quadrants():
    data = load("xor", noise=0.0)
    x, y = original_units(data, data.train)
    assert np.all(np.abs(x) <= 1)
    assert np.array_equal(y, (x[:, 0] * x[:, 1] < 0).astype(int))


def test_circles_factor_is_the_ratio_of_radii():
    data = load("circles", noise=0.0, factor=0.3)
    x, y = original_units(data, data.train)
    radius = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(radius[y == 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(radius[y == 1], 0.3, atol=1e-5)


def test_sine_without_noise_is_the_sine():
    data = load("sine", noise=0.0, periods=1.5)
    x, y = original_units(data, data.test)
    assert np.all(np.abs(x) <= 1.5 * np.pi)
    np.testing.assert_allclose(y, np.sin(x[:, 0]), atol=1e-5)


def test_blobs_features_and_classes():
    data = load("blobs", n_classes=4, n_features=5)
    assert (data.in_features, data.n_classes, data.task) == (5, 4, "multiclass")
    assert load("blobs", n_classes=2).task == "binary"


@pytest.mark.parametrize("source, keys, message", [
    ("moons", {"n_samples": 0}, "data.n_samples=0 is not valid: expected an integer >= 10"),
    ("moons", {"noise": -1}, "data.noise=-1 is not valid: expected a number >= 0"),
    ("spirals", {"n_arms": 1}, "data.n_arms=1 is not valid: expected an integer >= 2"),
    ("circles", {"factor": 1.5}, "data.factor=1.5 is not valid: expected a number in (0, 1)"),
    ("moons", {"arms": 3},
     "data.arms=3 is not valid: expected one of the keys data.source=moons reads: n_samples"),
    ("nope", {}, "data.source=nope is not valid: expected one of arrays, blobs, breast_cancer"),
])
def test_bad_keys_stop_with_the_key_and_what_is_allowed(source, keys, message):
    with pytest.raises(ConfigError) as error:
        load(source, **keys)
    assert str(error.value).startswith(message)


def test_too_few_samples_for_the_fractions():
    with pytest.raises(ConfigError,
                       match=r"at least one sample of each class\. 12 samples in 3 classes"):
        load("spirals", n_samples=12)


def test_splits_are_stratified_and_seeded():
    data = load("spirals", n_samples=1500, n_arms=3)
    for split in (data.train, data.val, data.test):
        shares = torch.bincount(split.y) / len(split)
        assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.01)
    again, moved = load("spirals", n_samples=1500), load("spirals", n_samples=1500, split_seed=1)
    assert torch.equal(data.test.x, again.test.x) and not torch.equal(data.test.x, moved.test.x)


def test_standardisation_uses_the_training_split_only():
    data = load("sine")
    assert abs(float(data.train.x.mean())) < 1e-5
    assert abs(float(data.train.x.std(unbiased=False)) - 1) < 1e-5
    assert abs(float(data.train.y.mean())) < 1e-5  # regression target too
    assert abs(float(data.val.x.mean())) > 1e-4  # the val split was not used to fit
    raw = load("sine", standardize=False, standardize_target=False)
    assert np.allclose(data.feature_mean, raw.train.x.numpy().mean(axis=0))
    assert (raw.feature_mean, raw.feature_std, raw.target_mean) == (0, 1, 0)


def test_describe_names_what_was_loaded():
    assert load("moons").describe() == (
        "data=moons: binary, train 700, val 150, test 150, 2 features, 2 classes; 15.6 KB on cpu")
    assert "1 feature;" in load("sine").describe()


def test_label_mapping_of_a_generated_set(tmp_path):
    assert "inner" in save_label_mapping(load("circles"), tmp_path).read_text()


# --- placement ---------------------------------------------------------------------------------
def test_cpu_data_is_always_on_the_device():
    data = load("moons")
    assert (data.placement, data.train.x.device.type) == ("device", "cpu")
    assert choose_placement(10**15, torch.device("cpu")) == ("device", None)


def test_a_set_larger_than_free_device_memory_stays_in_pinned_host_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 8000))
    assert choose_placement(700, torch.device("cuda", 0)) == ("device", 1000)
    assert choose_placement(900, torch.device("cuda", 0)) == ("pinned-host", 1000)  # keeps headroom
    data = load("moons")
    data.placement, data.device = "pinned-host", torch.device("cuda", 0)
    data.device_free_bytes = 2**30
    assert data.describe().endswith("15.6 KB in pinned host memory (1.0 GB free on cuda:0), "
                                    "copied 8 MB at a time")


def test_split_batch_on_the_device_is_plain_indexing():
    split = load("moons").train
    rows = torch.tensor([3, 1, 2])
    x, y = split.batch(rows, torch.device("cpu"))
    assert torch.equal(x, split.x[rows]) and torch.equal(y, split.y[rows])


@pytest.mark.parametrize("gather_bytes", [1, 3 * 16 * 8, 8 << 20])  # a batch, 3 batches, the whole epoch a chunk
@pytest.mark.parametrize(("first", "count"), [(0, 13), (5, 13), (12, 13), (0, 4)])
def test_training_batches_are_the_rows_of_the_shuffle_chunk_by_chunk(monkeypatch, gather_bytes, first, count):
    split = Split(torch.randn(200, 8), torch.arange(200))  # 16 rows a batch: 12 whole and one of 8
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(dataset_module, "GATHER_BYTES", gather_bytes)
    batches = list(split.batches(order, 16, first, count, torch.device("cpu")))
    assert len(batches) == count - first
    for number, (x, y) in enumerate(batches, start=first):
        rows = order[number * 16:(number + 1) * 16]
        assert torch.equal(x, split.x[rows]) and torch.equal(y, split.y[rows])
    assert len(batches[-1][0]) == (8 if count == 13 else 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_host_placement_on_cuda(monkeypatch):
    monkeypatch.setattr(dataset_module, "DEVICE_MEMORY_SHARE", 0.0)
    data = build_data({"source": "moons", **SPLITS}, "cuda")
    assert data.placement == "pinned-host" and data.train.x.is_pinned()
    x, _ = data.train.batch(torch.arange(5), data.device)
    assert x.device.type == "cuda" and torch.equal(x.cpu(), data.train.x[:5])
    monkeypatch.setattr(dataset_module, "DEVICE_MEMORY_SHARE", 0.75)
    assert build_data({"source": "moons", **SPLITS}, "cuda").train.x.device.type == "cuda"


# --- what every run pays -----------------------------------------------------------------------
@pytest.mark.slow
def test_torchvision_is_imported_only_for_image_sets(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    code = (
        "import sys\nfrom mlpkit.data import build_data\n"
        "splits = dict(val_fraction=0.2, test_fraction=0.2)\n"
        "build_data(dict(source='digits', **splits))\nbuild_data(dict(source='moons', **splits))\n"
        f"build_data(dict(source='csv', path={str(tmp_path / 't.csv')!r}, target='b', **splits))\n"
        "print('torchvision' in sys.modules)\n"
    )
    result = python_c(code, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


# --- the config files --------------------------------------------------------------------------
def compose_data(name: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(DATA_CONFIG_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=name), resolve=True)


@pytest.mark.parametrize("config", sorted(path.stem for path in DATA_CONFIG_DIR.glob("*.yaml")))
def test_every_data_config_matches_its_source(config):
    cfg = compose_data(config)
    assert cfg["source"] in SOURCES and cfg["source"] == config  # data=<name> loads source <name>
    module_name, function_name = SOURCES[cfg["source"]].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    source_keys = {key for key in cfg if key not in SPLIT_KEYS}
    assert source_keys == set(inspect.signature(function).parameters)  # every key is documented
    for line in (DATA_CONFIG_DIR / f"{config}.yaml").read_text().splitlines():
        assert line.startswith("#") or "#" in line, f"{config}.yaml: key without a comment: {line}"
    if config in ("moons", "circles", "spirals", "xor", "blobs", "sine", "digits"):
        assert len(build_data(cfg).train) > 0

"""torchvision image sets, through torchvision's real loading code, on tiny files written here.

The test machines cannot download, so each test writes the datasets' own formats itself:
MNIST/Fashion-MNIST as uncompressed IDX files under root/<Class>/raw/ (what torchvision reads after
its downloader has unpacked the .gz archives), CIFAR-10 as the pickled python batches plus
batches.meta under root/cifar-10-batches-py/.

torchvision checks every CIFAR file against the md5 of the official archive. To keep that real
check running on test-written files, the CIFAR tests replace only the expected md5 sums (the
class attributes train_list/test_list/meta) with the sums of the files written here; MNIST's
loader checks only that its files exist.
"""
from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpkit.data import DataError, build_data
from mlpkit.errors import ConfigError
from tests.conftest import run_cli

# Pooled: 50 tiny images split 30/10/10 (the official split carves val from 30 images only, too few
# for a stratified 20% of 10 classes; test_official_split_keeps_the_official_test_set covers it).
SPLITS = {"val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0, "split": "pooled"}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file: magic (0, 0, type 0x08 = uint8, dims), big-endian dimension sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header = magic + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def constant_images(count: int, first: int, size: int = 28) -> np.ndarray:
    """Image i is filled with the value 5 * (first + i): a row's pixels tell which image it is."""
    return np.stack([np.full((size, size), 5 * (first + i), dtype=np.uint8) for i in range(count)])


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 30, n_test: int = 20
                ) -> np.ndarray:
    """Tiny MNIST-format files; returns the labels of all images, train first."""
    labels = np.arange(n_train + n_test) % 10
    raw = root / folder / "raw"
    write_idx(raw / "train-images-idx3-ubyte", constant_images(n_train, 0))
    write_idx(raw / "train-labels-idx1-ubyte", labels[:n_train])
    write_idx(raw / "t10k-images-idx3-ubyte", constant_images(n_test, n_train))
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[n_train:])
    return labels


def all_rows(data) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.cat([data.train.x, data.val.x, data.test.x]),
            torch.cat([data.train.y, data.val.y, data.test.y]))


@pytest.mark.parametrize("source, folder, first_class", [
    ("mnist", "MNIST", "0 - zero"), ("fashion_mnist", "FashionMNIST", "T-shirt/top"),
])
def test_mnist_formats_load_flattened_and_scaled(tmp_path, source, folder, first_class):
    labels = write_mnist(tmp_path, folder)
    data = build_data({"source": source, "root": str(tmp_path), "download": False, **SPLITS,
                       "standardize": False})
    assert (data.task, data.in_features, data.n_classes) == ("multiclass", 784, 10)
    assert data.class_names[0] == first_class
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)  # train+test pooled
    x, y = all_rows(data)
    assert float(x.min()) >= 0 and float(x.max()) <= 1  # scaled from 0..255
    image = torch.round(x[:, 0] * 255 / 5).long()  # which written image each row is
    assert sorted(image.tolist()) == list(range(50))
    assert torch.equal(y, torch.from_numpy(labels)[image])
    assert torch.all(x == x[:, :1])  # a constant image stays constant: pixels are not shuffled


def test_official_split_keeps_the_official_test_set(tmp_path):
    """The default: test is exactly the t10k file; val is carved from the training file only, and the
    normalisation statistics come from the remaining training images."""
    write_mnist(tmp_path)  # 30 training images, 20 test images
    splits = {"val_fraction": 0.4, "test_fraction": 0.2, "split_seed": 0}  # data.split left at its default
    # val: 12 of the 30 training images, at least one per class for the stratified carve
    data = build_data({"source": "mnist", "root": str(tmp_path), "download": False, **splits,
                       "standardize": False})
    image = {name: sorted(torch.round(split.x[:, 0] * 255 / 5).long().tolist())
             for name, split in (("train", data.train), ("val", data.val), ("test", data.test))}
    assert image["test"] == list(range(30, 50))  # the official test images, all of them
    assert len(image["val"]) == 12 and len(image["train"]) == 18  # 40% of the 30 training images
    assert sorted(image["train"] + image["val"]) == list(range(30))
    assert "(test: the official test set, val carved from the official training set)" in data.describe()
    standardized = build_data({"source": "mnist", "root": str(tmp_path), "download": False, **splits})
    train_pixels = np.asarray(image["train"], dtype=np.float64) * 5 / 255
    np.testing.assert_allclose(standardized.feature_mean[0], train_pixels.mean(), rtol=1e-5)


def test_bad_split_choice_is_named(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(ConfigError, match="data.split=random is not valid: expected official"):
        build_data({"source": "mnist", "root": str(tmp_path), "download": False, **SPLITS, "split": "random"})


def test_mnist_is_normalised_with_training_statistics(tmp_path):
    write_mnist(tmp_path)
    data = build_data({"source": "mnist", "root": str(tmp_path), "download": False, **SPLITS})
    # One mean and std for all pixels (a gray channel), from the training split only.
    assert abs(float(data.train.x.mean())) < 1e-4
    assert abs(float(data.train.x.std(unbiased=False)) - 1) < 1e-4
    assert len(set(data.feature_mean.tolist())) == 1 and len(set(data.feature_std.tolist())) == 1


def test_missing_files_name_the_folder_and_the_download_override(tmp_path):
    with pytest.raises(ConfigError) as error:
        build_data({"source": "mnist", "root": str(tmp_path), "download": False, **SPLITS})
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "data.download=true" in message and "\n" not in message


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried: no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DataError, match=r"could not download mnist into .*MNIST/raw: Error "
                       r"downloading train-images-idx3-ubyte.gz: Tried: no network$"):
        build_data({"source": "mnist", "root": str(tmp_path), "download": True, **SPLITS})


def test_unreadable_files_say_so(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x09junk")
    with pytest.raises(DataError, match="cannot be read"):
        build_data({"source": "mnist", "root": str(tmp_path), "download": False, **SPLITS})


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def write_cifar(root: Path, per_batch: int = 8, n_test: int = 10) -> dict[str, str]:
    """Five training batches, a test batch and batches.meta; returns each file's md5."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]
    image = 0
    for name in names:
        count = n_test if name == "test_batch" else per_batch
        # Image i: red = i, green = 100 + i, blue = 200 - i in every pixel (rows are CHW-flattened).
        data = np.stack([np.concatenate([np.full(1024, i), np.full(1024, 100 + i),
                                         np.full(1024, 200 - i)])
                         for i in range(image, image + count)]).astype(np.uint8)
        labels = [i % 10 for i in range(image, image + count)]
        image += count
        with open(folder / name, "wb") as handle:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch}, handle)
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir()}


def trust_written_cifar(monkeypatch, md5: dict[str, str]) -> None:
    """Expect the md5 sums of the files written here instead of the official archive's."""
    from torchvision.datasets import CIFAR10

    train_list = [[name, md5[name]] for name, _ in CIFAR10.train_list]
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})


def test_cifar10_loads_channels_first_and_scaled(tmp_path, monkeypatch):
    trust_written_cifar(monkeypatch, write_cifar(tmp_path))
    data = build_data({"source": "cifar10", "root": str(tmp_path), "download": False, **SPLITS,
                       "standardize": False})
    assert (data.task, data.in_features, data.class_names) == ("multiclass", 3072, CIFAR_CLASSES)
    assert len(data.train) + len(data.val) + len(data.test) == 50
    assert data.feature_names[0] == "red_pixel_0_0" and data.feature_names[-1] == "blue_pixel_31_31"
    x, y = all_rows(data)
    image = torch.round(x[:, 0] * 255).long()
    assert sorted(image.tolist()) == list(range(50))
    assert torch.equal(y, image % 10)
    assert torch.allclose(x[:, 1024:2048] * 255, (100 + image).float()[:, None].expand(-1, 1024))
    assert torch.allclose(x[:, 2048:] * 255, (200 - image).float()[:, None].expand(-1, 1024))


def test_cifar10_normalises_each_channel(tmp_path, monkeypatch):
    trust_written_cifar(monkeypatch, write_cifar(tmp_path))
    data = build_data({"source": "cifar10", "root": str(tmp_path), "download": False, **SPLITS})
    for channel in range(3):
        block = data.train.x[:, channel * 1024:(channel + 1) * 1024]
        assert abs(float(block.mean())) < 1e-4
        assert abs(float(block.std(unbiased=False)) - 1) < 1e-3


def test_cifar10_files_that_fail_the_integrity_check_are_reported(tmp_path):
    write_cifar(tmp_path)  # md5 sums differ from the official files: torchvision rejects them
    with pytest.raises(DataError, match=r"no cifar10 files found in .*cifar-10-batches-py \(or "
                       r"they are corrupted\); add data.download=true"):
        build_data({"source": "cifar10", "root": str(tmp_path), "download": False, **SPLITS})


@pytest.mark.slow
def test_cli_stops_with_one_line_when_files_are_missing(tmp_path):
    result = run_cli(tmp_path / "run", "data=mnist", f"data.root={tmp_path}", "trainer.max_epochs=1",
                     "trainer.progress=false", "trainer.device=cpu")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(tmp_path / "MNIST" / "raw") in lines[0] and "data.download=true" in lines[0]

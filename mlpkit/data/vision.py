"""torchvision image sets, flattened to vectors for the MLP and scaled to [0, 1].

build_data then normalises each colour channel with the mean and std of the training split. With
data.split=official (the default) the test split is the official test set and the validation split
is carved from the official training set (data.val_fraction, stratified, seeded); with
data.split=pooled the official files are pooled and split by data.val_fraction/test_fraction like
every other set.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mlpkit.data.raw import RawData, launch_path
from mlpkit.errors import ConfigError, DataError

SPLITS = ("official", "pooled")


class ImageSet(NamedTuple):
    class_name: str  # the torchvision.datasets class
    folder: str  # where that class reads its files, under data.root
    channels: tuple[str, ...]


IMAGE_SETS = {
    "mnist": ImageSet("MNIST", "MNIST/raw", ("gray",)),
    "fashion_mnist": ImageSet("FashionMNIST", "FashionMNIST/raw", ("gray",)),
    "cifar10": ImageSet("CIFAR10", "cifar-10-batches-py", ("red", "green", "blue")),
}
# What torchvision raises on files it finds but cannot parse.
UNREADABLE = (AssertionError, ValueError, TypeError, EOFError, KeyError, pickle.UnpicklingError)


def mnist(root: str = "data", download: bool = False, split: str = "official") -> RawData:
    """70,000 handwritten digits, 28x28 gray: 784 features, 10 classes."""
    return load_image_set("mnist", root, download, split)


def fashion_mnist(root: str = "data", download: bool = False, split: str = "official") -> RawData:
    """70,000 Zalando clothing images, 28x28 gray: 784 features, 10 classes."""
    return load_image_set("fashion_mnist", root, download, split)


def cifar10(root: str = "data", download: bool = False, split: str = "official") -> RawData:
    """60,000 32x32 colour images: 3072 features, 10 classes."""
    return load_image_set("cifar10", root, download, split)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def open_torchvision(name: str, root: Path, download: bool) -> tuple:
    """The train and test sets as torchvision datasets; a DataError naming the folder if missing."""
    # torchvision is imported here, only when an image set is chosen: importing it costs over 2 s.
    from torchvision import datasets

    spec = IMAGE_SETS[name]
    dataset_class = getattr(datasets, spec.class_name)
    folder = root / spec.folder
    try:
        train = dataset_class(str(root), train=True, download=bool(download))
        test = dataset_class(str(root), train=False, download=False)
    except UNREADABLE as error:
        raise DataError("data.root", root, f"the {name} files in {folder} cannot be read "
                        f"({_one_line(error)}); delete them and add data.download=true") from None
    except (RuntimeError, OSError) as error:  # torchvision: "Dataset not found", a failed download
        if download:
            raise DataError("data.download", True, f"could not download {name} into {folder}: "
                            f"{_one_line(error)}") from None
        if isinstance(error, OSError):
            raise DataError("data.root", root,
                            f"cannot read {folder}: {_one_line(error)}") from None
        raise DataError("data.root", root, f"no {name} files found in {folder} (or they are "
                        "corrupted); add data.download=true to fetch them, or set data.root to "
                        f"the folder that holds {spec.folder}") from None
    return train, test


def load_image_set(name: str, root: str, download: bool, split: str = "official") -> RawData:
    if split not in SPLITS:
        raise ConfigError("data.split", split, "official (the official test set; val carved from the "
                          "official training set) or pooled (train and test files pooled, split by fractions)")
    train, test = open_torchvision(name, launch_path(root), download)
    # .data holds every image as uint8: (N, H, W) tensors for MNIST, (N, H, W, C) arrays for CIFAR.
    images = np.concatenate([np.asarray(train.data), np.asarray(test.data)])
    if images.ndim == 3:
        images = images[..., None]
    images = images.transpose(0, 3, 1, 2)  # channels first, so each channel is a block of columns
    count, channels, height, width = images.shape
    features = images.reshape(count, -1).astype(np.float32)
    features *= 1 / 255
    labels = np.concatenate([np.asarray(train.targets), np.asarray(test.targets)]).astype(np.int64)

    channel_names = IMAGE_SETS[name].channels
    prefix = [""] if channels == 1 else [f"{c}_" for c in channel_names]
    feature_names = [f"{p}pixel_{r}_{c}" for p in prefix
                     for r in range(height) for c in range(width)]
    groups = np.repeat(np.arange(channels), height * width)
    official = split == "official"
    n_train = len(train.targets)
    return RawData(features, labels, "multiclass", feature_names, [str(c) for c in train.classes],
                   feature_groups=groups,
                   splits=(np.arange(n_train), None, np.arange(n_train, count)) if official else None,
                   split_origin="test: the official test set, val carved from the official training set"
                   if official else "official train and test files pooled, split by fractions")

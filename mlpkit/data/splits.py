"""Stratified, seeded train/val/test indices, and standardisation fitted on the training split."""
from __future__ import annotations

import math

import numpy as np
import torch

from mlpkit.errors import ConfigError


def split_indices(targets: np.ndarray, classify: bool, val_fraction: float, test_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/val/test indices, stratified by class for classification."""
    # sklearn.model_selection is imported here: only build_data needs it, and it costs ~0.5 s.
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(targets))
    stratify = targets if classify else None
    try:
        # Counts rounded up like sklearn's, with a tolerance: 0.15 * 400 is 60.000000000000014.
        test_count, val_count = (math.ceil(fraction * len(targets) - 1e-9)
                                 for fraction in (test_fraction, val_fraction))
        rest, test = train_test_split(indices, test_size=test_count, random_state=seed,
                                      stratify=stratify)
        stratify = targets[rest] if classify else None
        train, val = train_test_split(rest, test_size=val_count, random_state=seed,
                                      stratify=stratify)
    except ValueError as error:  # too few samples (per class) for the requested fractions
        counts = f"{len(targets)} samples" + (
            f" in {len(np.unique(targets))} classes (smallest {np.bincount(targets).min()})"
            if classify else "")
        raise ConfigError("data.val_fraction/test_fraction", f"{val_fraction}/{test_fraction}",
                          "fractions that leave every split at least one sample"
                          + (" of each class" if classify else ""),
                          f"{counts} cannot be split that way: {error}") from None
    return train, val, test


def standardization(values: np.ndarray, groups: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column (or shared by each group of columns); a constant gets std 1.

    ``groups`` gives each column a group id: the columns of a group share one mean and std, as the
    pixels of an image channel do (a per-pixel std would blow up pixels that are almost always 0).
    """
    # torch reduces in one multi-threaded pass without a temporary copy of the data (numpy's
    # std would allocate one: 1.2 GB for CIFAR-10's training split).
    var, mean = (t.double().numpy() for t in torch.var_mean(torch.from_numpy(values), dim=0,
                                                                 correction=0))
    if groups is not None:
        # Every column has as many rows, so a group's mean is the mean of its column means and
        # its variance the mean of the column variances plus the spread of the column means.
        for group in np.unique(groups):
            columns = groups == group
            group_mean = mean[columns].mean()
            var[columns] = (var[columns] + (mean[columns] - group_mean) ** 2).mean()
            mean[columns] = group_mean
    std = np.sqrt(var)
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)

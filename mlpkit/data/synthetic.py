"""Generated 2-D toy sets and a 1-D regression: no download, and activations differ visibly."""
from __future__ import annotations

from typing import Any

import numpy as np

from mlpkit.cache import disk_cached
from mlpkit.data.raw import RawData
from mlpkit.errors import ConfigError, is_int, is_number

POINT_NAMES = ["x1", "x2"]


def _check_int(key: str, value: Any, least: int) -> int:
    if not is_int(value) or value < least:
        raise ConfigError(f"data.{key}", value, f"an integer >= {least}")
    return value


def _check_noise(value: Any, key: str = "noise") -> float:
    if not is_number(value) or value < 0:
        raise ConfigError(f"data.{key}", value, "a number >= 0")
    return float(value)


def _classification(points: np.ndarray, labels: np.ndarray, class_names: list[str],
                    feature_names: list[str] = POINT_NAMES) -> RawData:
    task = "binary" if len(class_names) == 2 else "multiclass"
    return RawData(points.astype(np.float64), labels.astype(np.int64), task, list(feature_names),
                   class_names)


@disk_cached
def _generated(maker_name: str, n_samples: int, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Points and labels from ``sklearn.datasets.<maker_name>`` (imported only when the cache misses)."""
    from sklearn import datasets

    return getattr(datasets, maker_name)(n_samples, **options)


def moons(n_samples: int = 1000, noise: float = 0.1, seed: int = 0) -> RawData:
    """Two interleaving half circles."""
    points, labels = _generated("make_moons", _check_int("n_samples", n_samples, 10), noise=_check_noise(noise),
                                random_state=_check_int("seed", seed, 0))
    return _classification(points, labels, ["upper", "lower"])


def circles(n_samples: int = 1000, noise: float = 0.05, factor: float = 0.5,
            seed: int = 0) -> RawData:
    """A small circle inside a large one; ``factor`` is the ratio of their radii."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1:
        raise ConfigError("data.factor", factor, "a number in (0, 1)")
    points, labels = _generated("make_circles", _check_int("n_samples", n_samples, 10), noise=_check_noise(noise),
                                factor=factor, random_state=_check_int("seed", seed, 0))
    return _classification(points, labels, ["outer", "inner"])


def spirals(n_samples: int = 1000, n_arms: int = 3, noise: float = 0.2, turns: float = 1.0,
            seed: int = 0) -> RawData:
    """``n_arms`` interleaved spiral arms, one class each: no straight line separates them."""
    n_samples, n_arms = _check_int("n_samples", n_samples, 10), _check_int("n_arms", n_arms, 2)
    noise = _check_noise(noise)
    turns = _check_noise(turns, "turns")
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    counts = [len(part) for part in np.array_split(np.arange(n_samples), n_arms)]
    labels = np.repeat(np.arange(n_arms), counts)
    radius = np.concatenate([np.linspace(0.05, 1.0, count) for count in counts])
    # Each arm winds `turns` times around the centre, starting 1/n_arms turn after the previous.
    angle = 2 * np.pi * (turns * radius + labels / n_arms) + noise * rng.standard_normal(n_samples)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return _classification(points, labels, [f"arm {arm}" for arm in range(n_arms)])


def xor(n_samples: int = 1000, noise: float = 0.1, seed: int = 0) -> RawData:
    """Points in the square [-1, 1]^2, class 1 where the coordinates have opposite signs."""
    n_samples, noise = _check_int("n_samples", n_samples, 10), _check_noise(noise)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    points = rng.uniform(-1.0, 1.0, size=(n_samples, 2))
    labels = (points[:, 0] * points[:, 1] < 0).astype(np.int64)
    points += noise * rng.standard_normal(points.shape)  # after labelling: noise blurs the axes
    return _classification(points, labels, ["same sign", "opposite sign"])


def blobs(n_samples: int = 1000, n_classes: int = 3, n_features: int = 2, noise: float = 1.0,
          seed: int = 0) -> RawData:
    """Gaussian clusters, one per class; ``noise`` is each cluster's standard deviation."""
    n_classes = _check_int("n_classes", n_classes, 2)
    n_features = _check_int("n_features", n_features, 1)
    points, labels = _generated("make_blobs", _check_int("n_samples", n_samples, 10), n_features=n_features,
                                centers=n_classes, cluster_std=_check_noise(noise),
                                random_state=_check_int("seed", seed, 0))
    names = POINT_NAMES if n_features == 2 else [f"x{i + 1}" for i in range(n_features)]
    return _classification(points, labels, [f"blob {c}" for c in range(n_classes)], names)


def sine(n_samples: int = 1000, noise: float = 0.1, periods: float = 2.0, seed: int = 0) -> RawData:
    """y = sin(x) + noise, x uniform over ``periods`` periods centred on 0 (1-D regression)."""
    n_samples, noise = _check_int("n_samples", n_samples, 10), _check_noise(noise)
    periods = _check_noise(periods, "periods")
    if periods == 0:
        raise ConfigError("data.periods", periods, "a number > 0")
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    x = rng.uniform(-np.pi * periods, np.pi * periods, size=n_samples)
    y = np.sin(x) + noise * rng.standard_normal(n_samples)
    return RawData(x[:, None].astype(np.float64), y.astype(np.float64), "regression", ["x"], [])

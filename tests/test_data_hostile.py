"""Tables an attacker would write: digits float32 would lose, classes only a test file holds, a test
file that is the training file, and Parquet columns that are not one number or word per cell."""
from __future__ import annotations

import datetime
import decimal
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpkit.data import DataError, build_data, save_preprocessing
from mlpkit.data.dataset import SOURCES, RawData

ROOT = Path(__file__).resolve().parent.parent


def config(path: Path, **keys) -> dict:
    return {"source": "csv", "path": str(path), "target": "label", "features": None, "task": "auto",
            "delimiter": ",", "val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0, **keys}


def big_column_table(path: Path, n: int = 400, extra: str = "") -> Path:
    """``big`` is 1e8 plus noise of std 1, and its noise decides the class: float32 holds 1e8 in
    steps of 8, so a cast before centring leaves a constant column."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=n)
    colors = ["red", "blue"]
    lines = [f"big{',color' if extra else ''},label"]
    lines += [f"{float(1e8 + value)!r}{',' + colors[i % 2] if extra else ''},{'yes' if value > 0 else 'no'}"
              for i, value in enumerate(noise)]
    path.write_text("\n".join(lines) + "\n")
    return path


def sign_accuracy(data) -> float:
    """How well the noise recovered from the standardised ``big`` feature and the saved mean and std
    gives the class, over every split."""
    right = total = 0
    for split in (data.train, data.val, data.test):
        noise = split.x[:, 0].double().numpy() * float(data.feature_std[0]) + (float(data.feature_mean[0]) - 1e8)
        right += int(((noise > 0) == split.y.numpy().astype(bool)).sum())
        total += len(split)
    return right / total


@pytest.mark.parametrize("extra", ["", "color"], ids=["streamed", "column-wise"])
def test_a_column_of_1e8_plus_noise_keeps_its_noise(tmp_path, extra):
    path = big_column_table(tmp_path / "big.csv", extra=extra)
    data = build_data(config(path, categorical="auto" if extra else "none"))
    assert sign_accuracy(data) > 0.97  # 0.5 when the column went to float32 before centring
    rows = np.loadtxt(path, delimiter=",", skiprows=1, usecols=0)
    # the saved mean is the training rows' float64 mean, to a small part of the noise's std
    assert abs(data.feature_mean[0] - 1e8) < 0.5
    saved = json.loads(save_preprocessing(data, tmp_path).read_text())
    assert saved["feature_mean"][0] == float(data.feature_mean[0])  # what predict subtracts, in float64
    x = data.train.x[:, 0].numpy().astype(np.float64) * data.feature_std[0] + data.feature_mean[0]
    assert np.isin(np.round(x, 3), np.round(rows, 3)).mean() > 0.95  # the file's values, recovered


def test_a_parquet_column_of_1e8_plus_noise_keeps_its_noise(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    noise = rng.normal(size=300)
    pq.write_table(pa.table({"big": 1e8 + noise, "label": np.where(noise > 0, "yes", "no")}),
                   tmp_path / "big.parquet")
    assert sign_accuracy(build_data(config(tmp_path / "big.parquet"))) > 0.97


def test_a_regression_target_of_1e8_plus_noise_keeps_its_noise(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)
    lines = ["x,label"] + [f"{float(a)!r},{float(1e8 + 3 * a)!r}" for a in x]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    data = build_data(config(tmp_path / "t.csv", task="regression"))
    features, targets = data.train.x[:, 0].numpy(), data.train.y[:, 0].numpy()
    assert np.corrcoef(features, targets)[0, 1] > 0.999  # a float32 target would be steps of 8
    assert abs(data.target_mean - 1e8) < 1


def load_big() -> RawData:
    """A registered source whose features are float64 arrays: 1e8 plus noise that decides the class."""
    noise = np.random.default_rng(3).normal(size=(300, 1))
    return RawData(1e8 + noise, (noise[:, 0] > 0).astype(np.int64), "binary", ["big"], ["no", "yes"])


def test_a_source_of_float64_features_is_centred_before_the_float32_cast(monkeypatch):
    monkeypatch.setitem(SOURCES, "big", f"{__name__}:load_big")
    data = build_data({"source": "big", "val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0})
    assert sign_accuracy(data) > 0.97
    assert data.train.x.dtype == torch.float32


def test_a_column_float32_cannot_hold_is_named_in_one_warning(tmp_path, caplog):
    path = big_column_table(tmp_path / "big.csv")
    with caplog.at_level(logging.WARNING, logger="mlpkit"):
        build_data(config(path, standardize=False))  # the raw values, as float32: steps of 8
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert str(path) in lines[0] and "column 'big'" in lines[0] and "float32" in lines[0]


@pytest.mark.parametrize("source", ["digits", "breast_cancer", "diabetes", "moons", "sine", "blobs"])
def test_no_precision_warning_on_bundled_and_synthetic_sets(source, caplog):
    with caplog.at_level(logging.WARNING, logger="mlpkit"):
        for standardize in (True, False):
            build_data({"source": source, "val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0,
                        "standardize": standardize})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("name,target", [("iris.csv", "species"), ("iris.parquet", "species"),
                                         ("iris_train.csv", "species"), ("iris.csv", "petal_width")])
def test_no_precision_warning_on_the_examples(name, target, caplog):
    keys = {"categorical": "auto"} if target == "petal_width" else {}
    with caplog.at_level(logging.WARNING, logger="mlpkit"):
        for standardize in (True, False):
            build_data(config(ROOT / "examples" / name, target=target, standardize=standardize, **keys))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- classes and files ---------------------------------------------------------------------------
def labelled(path: Path, labels: list[str]) -> Path:
    path.write_text("x,label\n" + "".join(f"{i % 7},{label}\n" for i, label in enumerate(labels)))
    return path


@pytest.mark.parametrize("key", ["test_path", "val_path"])
def test_a_class_only_the_test_or_val_file_holds_is_refused(tmp_path, key):
    train = labelled(tmp_path / "train.csv", ["a", "b"] * 20)
    other = labelled(tmp_path / "other.csv", ["a", "b", "a", "c", "b"])
    with pytest.raises(DataError) as error:
        build_data(config(train, **{key: str(other)}))
    line = str(error.value)
    assert "\n" not in line
    assert f"data.{key}" in line and str(other) in line and "column 'label'" in line
    assert "'c'" in line and "a, b" in line


def test_a_numeric_class_only_the_test_file_holds_is_refused(tmp_path):
    train = labelled(tmp_path / "train.csv", ["0", "1"] * 20)
    test = labelled(tmp_path / "test.csv", ["0", "1", "2", "1"])
    with pytest.raises(DataError, match=r"test.csv.*column 'label'.*'2'.*0, 1"):
        build_data(config(train, test_path=str(test)))


def test_a_test_file_with_every_training_class_or_fewer_is_accepted(tmp_path):
    train = labelled(tmp_path / "train.csv", ["a", "b", "c"] * 10)
    test = labelled(tmp_path / "test.csv", ["a", "b", "a"])
    data = build_data(config(train, test_path=str(test)))
    assert data.class_names == ["a", "b", "c"] and len(data.test) == 3


def test_a_test_file_that_is_the_training_file_is_warned_about(tmp_path, caplog, monkeypatch):
    train = labelled(tmp_path / "train.csv", ["a", "b"] * 20)
    (tmp_path / "link.csv").symlink_to(train)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mlpkit"):
        build_data(config(train, test_path="./link.csv"))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "data.test_path" in lines[0] and "data.path" in lines[0] and "train.csv" in lines[0]


# --- Parquet column types ------------------------------------------------------------------------
def parquet(path: Path, column, label=None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    label = label if label is not None else pa.array(["a", "b"] * (len(column) // 2))
    pq.write_table(pa.table({"v": column, "label": label}), path)
    return path


def nested_columns():
    import pyarrow as pa

    return {
        "list": pa.array([[1, 2], [3]] * 10),
        "large_list": pa.array([[1.0], [2.0, 3.0]] * 10, pa.large_list(pa.float64())),
        "struct": pa.array([{"x": 1, "y": 2.0}] * 20),
        "map": pa.array([[("k", 1)]] * 20, pa.map_(pa.string(), pa.int64())),
    }


@pytest.mark.parametrize("kind", ["list", "large_list", "struct", "map"])
@pytest.mark.parametrize("categorical", ["none", "auto"])
def test_a_parquet_column_of_lists_structs_or_maps_is_one_line(tmp_path, kind, categorical):
    path = parquet(tmp_path / f"{kind}.parquet", nested_columns()[kind])
    with pytest.raises(DataError) as error:
        build_data(config(path, categorical=categorical))
    line = str(error.value)
    assert "\n" not in line and str(path) in line and "column 'v'" in line
    assert "one number or text value per cell" in line


def test_a_parquet_target_of_lists_is_one_line(tmp_path):
    import pyarrow as pa

    path = parquet(tmp_path / "t.parquet", pa.array(range(20)), pa.array([[0], [1]] * 10))
    with pytest.raises(DataError, match=r"t.parquet: column 'label' holds list<"):
        build_data(config(path))


@pytest.mark.parametrize("kind", ["date", "timestamp", "duration", "time"])
@pytest.mark.parametrize("categorical", ["none", "auto"])
def test_a_parquet_column_of_dates_or_times_is_one_line(tmp_path, kind, categorical):
    import pyarrow as pa

    days = [datetime.date(2020, 1, 1) + datetime.timedelta(days=i) for i in range(20)]
    column = {"date": pa.array(days), "timestamp": pa.array([datetime.datetime(d.year, d.month, d.day) for d in days]),
              "duration": pa.array([datetime.timedelta(seconds=i) for i in range(20)]),
              "time": pa.array([datetime.time(i) for i in range(20)])}[kind]
    path = parquet(tmp_path / f"{kind}.parquet", column)
    with pytest.raises(DataError) as error:
        build_data(config(path, categorical=categorical))
    line = str(error.value)
    assert "\n" not in line and str(path) in line and "column 'v'" in line
    assert "dates or times" in line and "convert" in line


def test_a_parquet_date_column_listed_in_categorical_is_one_hot_encoded(tmp_path):
    import pyarrow as pa

    path = parquet(tmp_path / "d.parquet", pa.array([datetime.date(2020, 1, 1 + i % 2) for i in range(20)]))
    data = build_data(config(path, categorical=["v"]))
    assert data.feature_names == ["v=2020-01-01", "v=2020-01-02"]


def test_parquet_dictionary_decimal_float16_columns_are_numbers_and_booleans_one_hot(tmp_path):
    import pyarrow as pa

    numbers = np.arange(20.0)
    for name, column in {"dictionary": pa.array(numbers).dictionary_encode(),
                         "decimal": pa.array([decimal.Decimal(f"{i}.25") for i in range(20)]),
                         "float16": pa.array(numbers.astype(np.float16))}.items():
        data = build_data(config(parquet(tmp_path / f"{name}.parquet", column), standardize=False))
        values = np.concatenate([s.x[:, 0].numpy() for s in (data.train, data.val, data.test)])
        assert sorted(values % 1) == sorted((numbers + (0.25 if name == "decimal" else 0)) % 1), name
    path = parquet(tmp_path / "bool.parquet", pa.array([True, False] * 10))
    assert build_data(config(path, categorical="auto")).feature_names == ["v=false", "v=true"]
    with pytest.raises(DataError, match=r"bool.parquet: row 1, column 'v': 'True' is not a number"):
        build_data(config(path))


def test_an_all_null_parquet_column_is_one_line(tmp_path):
    import pyarrow as pa

    path = parquet(tmp_path / "null.parquet", pa.nulls(20))
    for categorical in ("none", "auto"):
        with pytest.raises(DataError, match=r"null.parquet: row 1, column 'v': empty cell"):
            build_data(config(path, categorical=categorical))


def test_predicting_a_parquet_file_with_a_list_column_is_one_line(tmp_path):
    import pyarrow as pa

    from mlpkit.prediction import read_feature_rows

    path = parquet(tmp_path / "new.parquet", pa.array([[1, 2], [3]] * 10))
    with pytest.raises(DataError, match=r"input=.*new.parquet: column 'v' holds list<"):
        read_feature_rows(path, ["v"])

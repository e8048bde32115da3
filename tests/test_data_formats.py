"""Table files as users have them: compressed CSV, TSV, Parquet, Feather, given test and validation
files, and categorical columns; all read through pyarrow, with one line per bad cell."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from mlpkit.data import DataError, build_data, save_preprocessing
from mlpkit.errors import ConfigError
from mlpkit.prediction import read_feature_rows

COLORS = ["red", "green", "blue"]


def rows(n: int = 30, first: int = 0) -> list[tuple]:
    """x is the row number; color cycles; the class is the color's position."""
    return [(float(i), COLORS[i % 3], ["a", "b", "c"][i % 3]) for i in range(first, first + n)]


def csv_text(table: list[tuple], delimiter: str = ",") -> str:
    return "\n".join([delimiter.join(["x", "color", "species"]),
                      *(delimiter.join(str(cell) for cell in row) for row in table)]) + "\n"


def write(path: Path, table: list[tuple]) -> Path:
    """The table in the format the suffix names."""
    import pyarrow as pa

    name = path.name
    if name.endswith((".parquet", ".feather")):
        arrow = pa.table({"x": [r[0] for r in table], "color": [r[1] for r in table],
                          "species": [r[2] for r in table]})
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pq.write_table(arrow, path)
        else:
            import pyarrow.feather as feather

            feather.write_feather(arrow, path)
        return path
    text = csv_text(table, "\t" if ".tsv" in name else ",").encode()
    opener = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}.get(path.suffix, bytes)
    path.write_bytes(opener(text))
    return path


def load(path: Path, **keys):
    return build_data({"source": "csv", "path": str(path), "target": "species", "features": None,
                       "task": "auto", "delimiter": ",", "val_fraction": 0.2, "test_fraction": 0.2,
                       "split_seed": 0, "categorical": "auto", **keys})


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.csv.bz2", "t.csv.xz", "t.tsv", "t.tsv.gz",
                                  "t.parquet", "t.feather"])
def test_every_format_reads_the_same_table(tmp_path, name):
    data = load(write(tmp_path / name, rows()), standardize=False)
    assert data.feature_names == ["x", "color=blue", "color=green", "color=red"]
    assert data.class_names == ["a", "b", "c"]
    x = np.concatenate([s.x.numpy() for s in (data.train, data.val, data.test)])
    y = np.concatenate([s.y.numpy() for s in (data.train, data.val, data.test)])
    order = np.argsort(x[:, 0])
    assert x[order, 0].tolist() == list(range(30))
    # one-hot: red (class a) -> column color=red, green (b) -> color=green, blue (c) -> color=blue
    assert (x[order, 1:].argmax(axis=1) == np.asarray([2, 1, 0] * 10)).all()
    assert (x[order, 1:].sum(axis=1) == 1).all()
    assert y[order].tolist() == [0, 1, 2] * 10


def test_categorical_none_refuses_text_and_names_the_key(tmp_path):
    with pytest.raises(DataError) as error:
        load(write(tmp_path / "t.csv", rows()), categorical="none")
    assert (f"data.path={tmp_path / 't.csv'}: line 2, column 'color': 'red' is not a number; feature "
            "columns must be numeric") in str(error.value)
    assert "data.categorical=[color]" in str(error.value)


def test_categorical_list_encodes_a_numeric_looking_column(tmp_path):
    data = load(write(tmp_path / "t.csv", [(i % 2, "red", "ab"[i % 2]) for i in range(20)]),
                categorical=["x"], features=["x"])
    assert data.feature_names == ["x=0", "x=1"]


def test_bad_cell_in_parquet_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1.0, None, 3.0, 4.0], "species": ["a", "b", "a", "b"]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet: row 2, column 'x': empty cell"):
        load(tmp_path / "t.parquet")
    pq.write_table(pa.table({"x": [1.0, 2.0, np.nan, 4.0], "species": ["a", "b", "a", "b"]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet: row 3, column 'x': missing value 'nan'"):
        load(tmp_path / "n.parquet")


def test_bad_cell_in_a_compressed_csv_names_the_line(tmp_path):
    table = rows(12)
    table[4] = (1.0, "red", "")
    with pytest.raises(DataError, match=r"t.csv.gz: line 6, column 'species': empty cell"):
        load(write(tmp_path / "t.csv.gz", table))


def test_not_parquet_is_one_line(tmp_path):
    (tmp_path / "t.parquet").write_text("x,species\n1,a\n")
    with pytest.raises(DataError, match=r"t.parquet: cannot be read as Parquet"):
        load(tmp_path / "t.parquet")


def test_given_test_file_is_the_test_split_and_val_is_carved_from_train(tmp_path):
    train = write(tmp_path / "train.csv", rows(30))
    test = write(tmp_path / "test.parquet", rows(9, first=100))
    data = load(train, test_path=str(test), standardize=False)
    assert sorted(data.test.x[:, 0].tolist()) == list(range(100, 109))
    assert (len(data.train), len(data.val)) == (24, 6)
    assert max(data.train.x[:, 0].max(), data.val.x[:, 0].max()) < 30
    assert "(train from train.csv, test from test.parquet, val carved from train.csv)" in data.describe()


def test_given_val_and_test_files_and_training_only_statistics(tmp_path):
    train = write(tmp_path / "train.csv", rows(30))
    val = write(tmp_path / "val.csv", rows(6, first=200))
    test = write(tmp_path / "test.csv", rows(6, first=100))
    data = load(train, val_path=str(val), test_path=str(test))
    assert (len(data.train), len(data.val), len(data.test)) == (30, 6, 6)
    assert data.feature_mean[0] == pytest.approx(14.5)  # the mean of x over train.csv alone
    raw_val = data.val.x[:, 0].numpy() * data.feature_std[0] + data.feature_mean[0]
    assert sorted(np.round(raw_val).tolist()) == list(range(200, 206))


def test_unseen_category_in_the_test_file_is_named(tmp_path):
    train = write(tmp_path / "train.csv", rows(30))
    test = write(tmp_path / "test.csv", [(1.0, "purple", "a"), (2.0, "red", "b")])
    with pytest.raises(DataError, match=r"data.test_path=.*test.csv: line 2, column 'color': category "
                       r"'purple' is not one the training file holds \(blue, green, red\)"):
        load(train, test_path=str(test))


def test_test_file_without_a_column(tmp_path):
    train = write(tmp_path / "train.csv", rows(30))
    (tmp_path / "test.csv").write_text("x,species\n1,a\n")
    with pytest.raises(DataError, match=r"data.test_path=.*test.csv: has no column 'color'"):
        load(train, test_path=str(tmp_path / "test.csv"))


def test_prediction_applies_the_saved_encoding(tmp_path):
    data = load(write(tmp_path / "train.csv", rows(30)))
    record = json.loads(save_preprocessing(data, tmp_path).read_text())
    assert record["input_columns"] == ["x", "color"]
    assert record["categories"] == {"color": ["blue", "green", "red"]}
    new = write(tmp_path / "new.parquet", [(5.0, "green", "?"), (6.0, "blue", "?")])
    values = read_feature_rows(new, record["feature_names"], ",", record)
    assert values.tolist() == [[5, 0, 1, 0], [6, 1, 0, 0]]
    unseen = write(tmp_path / "unseen.csv", [(5.0, "green", "?"), (6.0, "pink", "?")])
    with pytest.raises(DataError, match=r"input=.*unseen.csv: line 3, column 'color': category 'pink'"):
        read_feature_rows(unseen, record["feature_names"], ",", record)


def test_config_rejects_a_bad_categorical_value(tmp_path):
    with pytest.raises(ConfigError, match="data.categorical=some is not valid"):
        load(write(tmp_path / "t.csv", rows()), categorical="some")


@pytest.mark.parametrize("overrides, message", [
    (["data=csv", "data.categorical=some"], "data.categorical=some is not valid: expected auto, none, or a list"),
    (["data=mnist", "data.split=random"], "data.split=random is not valid: expected official"),
    (["data=csv", "data.test_path=''"], "data.test_path= is not valid: expected a table file"),
])
def test_config_checks_the_data_keys_before_loading(overrides, message):
    from mlpkit.config import validate
    from tests.conftest import compose_config

    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*overrides))


@pytest.mark.slow
def test_cli_trains_on_a_train_and_a_test_file(tmp_path):
    from tests.conftest import run_cli

    write(tmp_path / "train.csv", rows(30))
    write(tmp_path / "test.parquet", rows(9, first=100))
    result = run_cli(tmp_path / "run", "data=csv", "data.path=train.csv", "data.test_path=test.parquet",
                     "data.target=species", "data.categorical=auto", "trainer.max_epochs=1",
                     "trainer.progress=false", "trainer.device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("data=csv: multiclass, train 25, val 5, test 9 (train from train.csv, test from test.parquet, "
            "val carved from train.csv), 4 features, 3 classes") in result.stderr
    record = json.loads((tmp_path / "run" / "preprocessing.json").read_text())
    assert record["categories"] == {"color": ["blue", "green", "red"]}


def test_batch_path_gives_the_column_path_values(tmp_path, monkeypatch):
    """Numeric tables are read batch by batch into blocks; tiny blocks here force many of both."""
    from mlpkit.data import batches, formats, table

    generator = np.random.default_rng(0)
    lines = ["a,b,c,label"] + [f"{a:.6g},{b:.6g},{int(c)},{'xy'[i % 2]}" for i, (a, b, c) in
                                enumerate(generator.normal(size=(700, 3)) * 100)]
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    monkeypatch.setattr(formats, "MAX_BLOCK_BYTES", 4096)  # ~150 rows per CSV batch
    monkeypatch.setattr(batches, "BLOCK_ROWS_BYTES", 1000)  # 83 rows per block
    streamed = table.load_csv(str(tmp_path / "t.csv.gz"), target="label")
    monkeypatch.setattr(table, "read_numeric", lambda *args: None)
    column_wise = table.load_csv(str(tmp_path / "t.csv.gz"), target="label")
    assert streamed.features.shape == (700, 3)
    # each path centres a column on the median of the first rows it holds (mlpkit.data.precision)
    np.testing.assert_allclose(streamed.features + streamed.feature_offsets,
                               column_wise.features + column_wise.feature_offsets, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(streamed.targets, column_wise.targets)
    assert streamed.class_names == column_wise.class_names == ["x", "y"]


def test_a_quoted_cell_with_a_line_break_across_a_block_boundary_is_read(tmp_path, monkeypatch):
    """pyarrow cuts text into blocks at line ends; a quoted note holding a line break, cut there,
    makes it read the file again with the cut that allows them (blocks of 256 bytes: many cuts)."""
    from mlpkit.data import formats, table

    lines = ["x,note,label"] + [f'{i}.5,"first line\nsecond line {i}",{"ab"[i % 2]}' for i in range(200)]
    (tmp_path / "notes.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(formats, "MIN_BLOCK_BYTES", 256)
    monkeypatch.setattr(formats, "MAX_BLOCK_BYTES", 256)
    numeric = table.load_csv(str(tmp_path / "notes.csv"), target="label", features=["x"])
    np.testing.assert_array_equal(numeric.features[:, 0] + numeric.feature_offsets[0], np.arange(200) + 0.5)
    assert numeric.targets.tolist() == [0, 1] * 100
    encoded = table.load_csv(str(tmp_path / "notes.csv"), target="label", categorical="auto")
    assert encoded.features.shape == (200, 201)
    assert "note=first line\nsecond line 7" in encoded.feature_names


def test_text_is_read_in_blocks_of_a_thousandth_of_the_file(tmp_path):
    """pyarrow's stream reader keeps about 50 blocks in memory: its default 1 MiB blocks would be as
    large as a 200k-row table's tensors. A 200 MB file is read 200 KB at a time, a small one 64 KiB."""
    from mlpkit.data.formats import TableFile

    big = tmp_path / "big.csv"
    with big.open("wb") as handle:  # sparse: 200 MB on paper, nothing on disk
        handle.write(b"x,label\n1,0\n")
        handle.truncate(200 * 10**6)
    (tmp_path / "small.csv").write_text("x,label\n1,0\n")
    assert 190_000 <= TableFile(big).block_bytes() <= 200_000
    assert TableFile(tmp_path / "small.csv").block_bytes() == 64 << 10
    # and the reader takes them so: 1 MB of rows comes in 64 KiB batches (pyarrow's default: one 1 MiB block)
    medium = tmp_path / "medium.csv"
    medium.write_text("x,label\n" + "".join(f"{i},{i % 2}\n" for i in range(100_000)))
    reader = TableFile(medium).batches(["x", "label"], {})
    batches = list(reader)
    reader.close()
    assert sum(batch.num_rows for batch in batches) == 100_000
    assert len(batches) >= medium.stat().st_size // (64 << 10)


@pytest.mark.slow
def test_the_api_predicts_a_dataframe_with_categorical_columns_as_predict_does_the_file(tmp_path):
    import pandas as pd

    import mlpkit
    from mlpkit.prediction import predict_csv

    run = mlpkit.train(["data=csv", f"data.path={write(tmp_path / 'train.csv', rows(60))}", "data.target=species",
                        "data.categorical=auto", "trainer.max_epochs=1", "model.hidden_sizes=[8]"],
                       run_dir=tmp_path / "run")
    new_rows = rows(6, first=100)
    predict_csv(tmp_path / "run", write(tmp_path / "new.csv", new_rows), tmp_path / "predicted.csv")
    from_file = pd.read_csv(tmp_path / "predicted.csv").filter(like="probability_").to_numpy()
    frame = pd.DataFrame(new_rows, columns=["x", "color", "species"]).drop(columns="species")
    assert np.allclose(run.predict_proba(frame), from_file, atol=1e-5)
    frame.loc[2, "color"] = "purple"
    with pytest.raises(DataError, match=r"row 2, column 'color': category 'purple' is not one the training file holds"):
        run.predict(frame)


@pytest.mark.parametrize("name", ["spaced.csv", "spaced.csv.gz"])
def test_spaces_around_header_names_and_cells_are_ignored(tmp_path, name):
    numeric = tmp_path / f"numeric_{name}"
    text = " x , y ,species\n" + "".join(f"{i}, {i * 2} ,{'abc'[i % 3]}\n" for i in range(30))
    numeric.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    assert load(numeric, standardize=False).feature_names == ["x", "y"]  # the numeric (streaming) path
    text = "x , color, species\n" + "".join(f"{i}, {COLORS[i % 3]} ,{'abc'[i % 3]} \n" for i in range(30))
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    data = load(path, standardize=False)
    assert data.feature_names == ["x", "color=blue", "color=green", "color=red"]
    assert data.class_names == ["a", "b", "c"]


def test_a_test_file_value_standardisation_would_carry_beyond_float32_is_named_by_its_line(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("a,label\n" + "".join(f"{0 if i % 2 else 1e-20},{'pq'[i % 2]}\n" for i in range(40)))
    test = tmp_path / "test.csv"
    test.write_text("a,label\n" + "".join(f"{1e25 if line == 4 else 0},{'pq'[line % 2]}\n" for line in range(2, 12)))
    config = {"source": "csv", "path": str(train), "test_path": str(test), "target": "label", "features": None,
              "task": "auto", "delimiter": ",", "val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0}
    with pytest.raises(DataError, match=r"test.csv: line 4, column 'a': 1e\+25 standardised with the training "
                                        r"split's mean and std is beyond float32"):
        build_data(config)


def test_splitting_a_loaded_table_allocates_no_second_copy_of_it():
    import tracemalloc

    from mlpkit.data.dataset import RawData
    from mlpkit.data.splits import prepare_features, split_indices

    rng = np.random.default_rng(0)
    features = rng.normal(size=(50_000, 40)).astype(np.float32)
    targets = rng.integers(0, 3, size=50_000)
    original = features.copy()
    raw = RawData(features, targets, "multiclass", [f"f{i}" for i in range(40)], ["a", "b", "c"])
    splits = list(split_indices(targets, True, 0.2, 0.2, 0))
    tracemalloc.start()
    parts, mean, std = prepare_features(raw, splits, True)
    extra = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert extra < 0.3 * features.nbytes  # a copy of the splits would be 1.0x
    for part, rows in zip(parts, splits):  # the same rows, standardised with the training split's statistics
        assert np.allclose(part, (original[rows] - mean) / std, atol=1e-5)
    assert np.allclose(mean, original[splits[0]].mean(axis=0), atol=1e-4)

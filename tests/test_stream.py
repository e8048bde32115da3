"""data.stream=true: a directory (or glob) of Parquet files read a record batch at a time: the splits, the
statistics of one pass, the shuffle, the ranks' row groups, a resume, and every refusal in one line."""
import json
import os
import signal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import mlpkit
from mlpkit.callbacks import Callback
from mlpkit.checkpoint import load_checkpoint
from mlpkit.config import validate
from mlpkit.data import build_data
from mlpkit.data.stream_stats import split_of
from mlpkit.errors import ConfigError, DataError
from tests.conftest import compose_config, run_cli

FEATURES = [f"f{index}" for index in range(6)]
STREAM = ["data=csv", "data.target=label", "data.stream=true", "data.shuffle_buffer=300", "model.hidden_sizes=[16]",
          "optimizer.lr=0.02",
          "trainer.device=cpu", "trainer.progress=false", "trainer.checkpoint_min_seconds=0"]


def write_table(directory, rows=3000, files=3, row_group_size=250, seed=0, holes=0.0):
    """``files`` Parquet files of a 3-class table (an ``id`` column counts the rows), several row
    groups each; ``holes``: the share of f0's cells left null."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))) * [1, 2, 3, 4, 5, 1e3] + [0, 1, 2, 3, 4, 1e8]
    label = (x[:, 0] + x[:, 1] / 4 > 0).astype(int) + (x[:, 0] > 1)
    frame = pd.DataFrame(x, columns=FEATURES).assign(id=np.arange(rows, dtype=float), label=label)
    if holes:
        frame.loc[rng.random(rows) < holes, "f0"] = None
    directory.mkdir(parents=True, exist_ok=True)
    for index, part in enumerate(np.array_split(np.arange(rows), files)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False),
                       directory / f"part{index}.parquet", row_group_size=row_group_size)
    return frame


def stream_config(directory, *overrides):
    config = compose_config(*STREAM, f"data.path={directory}", *overrides)
    validate(config)
    return {key: value for key, value in config.data.items()}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stream") / "table"
    return directory, write_table(directory)


def train_ids(frame, seed=0, fractions=(0.15, 0.15)):
    return frame.id[split_of(np.arange(len(frame)), seed, *fractions) == 0].to_numpy()


def test_one_pass_gives_the_training_rows_statistics_and_every_row_one_split(table):
    directory, frame = table
    data = build_data(stream_config(directory), "cpu")
    parts = split_of(np.arange(len(frame)), 0, 0.15, 0.15)
    assert [len(data.train), len(data.val), len(data.test)] == [int((parts == p).sum()) for p in range(3)]
    assert 0.12 < len(data.val) / len(frame) < 0.18 and 0.12 < len(data.test) / len(frame) < 0.18
    train = frame[parts == 0]
    names = [*FEATURES, "id"]
    np.testing.assert_allclose(data.feature_mean, train[names].mean(), rtol=1e-12)
    np.testing.assert_allclose(data.feature_std, train[names].std(ddof=0), rtol=1e-9)
    assert data.class_names == ["0", "1", "2"] and data.task == "multiclass"
    np.testing.assert_array_equal(torch.bincount(data.train.y), np.bincount(train.label))  # balanced weights count these
    assert "streamed from 3 Parquet file(s), 12 row groups" in data.describe()


def test_an_epoch_reads_every_training_row_once_in_a_seeded_shuffled_order(table):
    directory, frame = table
    data = build_data(stream_config(directory, "data.standardize=false"), "cpu")
    id_column = data.feature_names.index("id")

    def epoch_ids(seed, first=0, batch=64):
        order = data.train.epoch_order(torch.Generator().manual_seed(seed))
        count = -(-len(data.train) // batch)
        return torch.cat([x[:, id_column] for x, _y in data.train.batches(order, batch, first, count, "cpu")]).numpy()

    ids = epoch_ids(1)
    assert sorted(ids) == sorted(train_ids(frame))  # each training row once, no val or test row
    assert not (np.diff(ids) > 0).all()  # shuffled: not in file order
    np.testing.assert_array_equal(ids, epoch_ids(1))
    assert not np.array_equal(ids, epoch_ids(2))
    np.testing.assert_array_equal(epoch_ids(1, first=5), ids[5 * 64:])  # a resumed epoch goes on where it stopped
    labels = torch.cat([y for _x, y in data.train.chunks(1000, "cpu")]).numpy()
    np.testing.assert_array_equal(labels, frame.label[split_of(np.arange(len(frame)), 0, 0.15, 0.15) == 0])


def test_each_rank_reads_only_the_row_groups_dealt_to_it(table, monkeypatch):
    directory, frame = table
    data = build_data(stream_config(directory, "data.standardize=false"), "cpu")
    id_column, batch = data.feature_names.index("id"), 64
    count = -(-len(data.train) // batch)
    order = data.train.epoch_order(torch.Generator().manual_seed(3))
    seen = {}
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        batches = list(data.train.batches(order, batch, 0, count, "cpu"))
        assert [len(x) for x, _y in batches] == [batch] * (count - 1) + [len(data.train) - (count - 1) * batch]
        share = slice(0, 32) if rank == 0 else slice(32, 64)
        seen[rank] = np.concatenate([x[share, id_column].numpy() for x, _y in batches[:-1]])
        groups = {int(row) // 250 for row in seen[rank]}  # the row groups this rank read (250 rows each)
        seen[rank, "groups"] = groups
    assert not seen[0, "groups"] & seen[1, "groups"]  # disjoint row groups
    assert len(set(seen[0]) | set(seen[1])) > 0.9 * len(data.train)


class SignalAt(Callback):
    """SIGTERM to this process after step 20 (of 3 epochs of 33 steps): a kill mid-epoch."""

    def on_train_batch_end(self, trainer, loss):
        if trainer.step == 20 and not os.environ.get("MLPKIT_NO_SIGNAL"):
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_stream_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(table, tmp_path):
    directory, frame = table
    run = [*STREAM, f"data.path={directory}", "trainer.max_epochs=3"]
    whole = run_cli(tmp_path / "whole", *run)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run_cli(tmp_path / "killed", *run, "trainer.callbacks=[tests.test_stream.SignalAt]")
    assert killed.returncode == 143, killed.stderr[-2000:]
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["step"] == 20
    resumed = run_cli(tmp_path / "killed", f"resume={tmp_path / 'killed'}", env={"MLPKIT_NO_SIGNAL": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights = [load_checkpoint(path / "checkpoints" / "last.pt")["model"] for path in (tmp_path / "whole",
                                                                                        tmp_path / "killed")]
    assert all(torch.equal(value, weights[1][name]) for name, value in weights[0].items())
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "whole.parquet")
    in_memory = mlpkit.train([*STREAM[:2], "data.path=" + str(tmp_path / "whole.parquet"), *STREAM[4:],
                              "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'in_memory'}"])
    assert metrics["test"]["accuracy"] > 0.85  # as well as the same table held in memory
    assert metrics["test"]["accuracy"] == pytest.approx(in_memory.metrics["test"]["accuracy"], abs=0.04)
    assert "streamed from 3 Parquet file(s)" in (tmp_path / "whole" / "train.log").read_text()
    finished = mlpkit.load_run(tmp_path / "whole")  # the run predicts and evaluates like any other
    assert finished.evaluate()["metrics"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    predicted = finished.predict(frame[[*FEATURES, "id"]].head(200))
    assert (predicted == frame.label.head(200)).mean() > 0.8


def test_an_evaluation_reads_the_seeded_sample_of_eval_rows_whole(table):
    from mlpkit.data.stream_stats import EVAL_SALT, uniform

    directory, frame = table
    data = build_data(stream_config(directory, "data.standardize=false", "data.eval_rows=100"), "cpu")
    rows = np.arange(len(frame))
    sampled = (split_of(rows, 0, 0.15, 0.15) == 1) & (uniform(rows, 0, EVAL_SALT) < 100 / len(data.val))
    id_column = data.feature_names.index("id")
    read = torch.cat([x[:, id_column] for x, _y in data.val.chunks(64, "cpu")]).numpy()
    np.testing.assert_array_equal(read, frame.id[sampled])  # every sampled row, the last partial chunk too
    assert 50 < len(read) < 150


def test_missing_cells_are_filled_from_the_training_rows(tmp_path):
    frame = write_table(tmp_path / "holes", holes=0.1)
    data = build_data(stream_config(tmp_path / "holes", "data.missing=mean", "data.missing_indicator=true"), "cpu")
    train = frame[split_of(np.arange(len(frame)), 0, 0.15, 0.15) == 0]
    record = data.extra["missing"]
    assert record["fill_values"]["f0"] == pytest.approx(train.f0.mean(), rel=1e-12)
    assert record["indicators"] == ["f0"] and data.feature_names[-1] == "f0__missing"
    filled = train.f0.fillna(train.f0.mean())
    assert data.feature_mean[0] == pytest.approx(filled.mean()) and data.feature_std[0] == pytest.approx(
        filled.std(ddof=0))
    assert data.feature_mean[-1] == pytest.approx(train.f0.isna().mean())
    assert record["filled"]["train"] == int(train.f0.isna().sum())
    median = build_data(stream_config(tmp_path / "holes", "data.missing=median"), "cpu")  # 3000 rows: all sampled
    assert median.extra["missing"]["fill_values"]["f0"] == pytest.approx(train.f0.median())
    dropped = build_data(stream_config(tmp_path / "holes", "data.missing=drop"), "cpu")
    assert len(dropped.train) == int(train.f0.notna().sum())
    with pytest.raises(DataError, match=r"part0.parquet.*row \d+ .*column 'f0': a missing cell"):
        build_data(stream_config(tmp_path / "holes"), "cpu")


def test_a_value_float32_cannot_hold_is_named_by_its_file_row_and_column(tmp_path):
    frame = write_table(tmp_path / "huge", rows=600, files=2, row_group_size=100)
    frame.loc[450, "f3"] = 1e39  # the second file's row 150
    pq.write_table(pa.Table.from_pandas(frame.iloc[300:], preserve_index=False), tmp_path / "huge" / "part1.parquet",
                   row_group_size=100)
    with pytest.raises(DataError, match=r"part1.parquet: row 150 .*column 'f3': 1e\+39 is beyond what float32"):
        build_data(stream_config(tmp_path / "huge"), "cpu")


def test_files_of_another_schema_are_named_in_one_line(table, tmp_path):
    directory, frame = table
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for file in directory.iterdir():
        (mixed / file.name).write_bytes(file.read_bytes())
    pq.write_table(pa.Table.from_pandas(frame.head(10).astype({"f2": "float32"}), preserve_index=False),
                   mixed / "part9.parquet")
    with pytest.raises(DataError, match=r"part9.parquet.*column 'f2' is float, not double"):
        build_data(stream_config(mixed), "cpu")
    pq.write_table(pa.Table.from_pandas(frame.head(10).drop(columns="f3"), preserve_index=False),
                   mixed / "part9.parquet")
    with pytest.raises(DataError, match=r"part9.parquet.*no column 'f3'"):
        build_data(stream_config(mixed), "cpu")
    (mixed / "part9.parquet").write_bytes(b"PAR1 cut short by a crash")
    with pytest.raises(DataError, match=r"part9.parquet: not a readable Parquet file"):
        build_data(stream_config(mixed), "cpu")


@pytest.mark.parametrize("overrides, words", [
    (["data.path=nowhere/*.parquet"], "data.path=nowhere/\\*.parquet .*glob matching"),
    (["data.categorical=[f0]"], "data.categorical=\\[f0\\] .*none with data.stream=true"),
    (["data.cv_folds=3"], "data.cv_folds=3 .*0 with data.stream=true"),
    (["data.shuffle_buffer=0"], "data.shuffle_buffer=0 .*integer >= 1"),
    (["trainer.overfit_batches=2"], "trainer.overfit_batches=2 .*data.stream=true"),
    (["optimizer.lr=auto"], "optimizer.lr=auto .*data.stream=true"),
])
def test_what_a_stream_cannot_do_is_refused_in_one_line(table, overrides, words):
    directory, _frame = table
    with pytest.raises(ConfigError, match=words):
        build_data(stream_config(directory, *overrides), "cpu")


def test_a_directory_without_stream_names_the_key_that_reads_it(table):
    directory, _frame = table
    config = compose_config("data=csv", "data.target=label", f"data.path={directory}")
    with pytest.raises(DataError, match="is a directory.*data.stream=true"):
        build_data({key: value for key, value in config.data.items()}, "cpu")


def test_a_ddp_stream_with_fewer_row_groups_than_ranks_is_refused(tmp_path):
    from mlpkit.data.stream import check_stream_ranks

    write_table(tmp_path / "small", rows=300, files=1, row_group_size=300)
    data = build_data(stream_config(tmp_path / "small"), "cpu")
    with pytest.raises(DataError, match="1 row groups for 2 ranks.*row_group_size"):
        check_stream_ranks(data.train, 2)
    check_stream_ranks(data.train, 1)

"""data.missing: a table's missing cells stopped, dropped or filled with the training rows' statistics,
saved with the run, and filled the same way in the rows a trained run predicts."""
from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlpkit
from mlpkit.data import build_data, save_preprocessing
from mlpkit.data.dataset import SPLIT_KEYS
from mlpkit.data.splits import split_rows
from mlpkit.data.table import load_csv
from mlpkit.errors import ConfigError, DataError
from mlpkit.model_inputs import features
from mlpkit.prediction import predict_csv, read_feature_rows

TINY = ["trainer.max_epochs=1", "model.hidden_sizes=[8]", "trainer.device=cpu", "trainer.progress=false"]
PENGUINS = Path(str(importlib.resources.files("palmerpenguins") / "data" / "penguins.csv"))


def holey_table(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    """Two numeric columns, a text column and a class; about one cell in six of each feature missing."""
    generator = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": generator.normal(5, 2, rows).round(3), "b": generator.integers(0, 4, rows) * 1.5,
                          "color": generator.choice(["red", "blue", "green"], rows),
                          "species": np.array(["x", "y", "z"])[np.arange(rows) % 3]})
    for column in ("a", "b", "color"):
        frame.loc[generator.random(rows) < 0.17, column] = None
    return frame


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, na_rep="NA")
    return path


def config(path: Path, **keys) -> dict:
    return {"source": "csv", "path": str(path), "target": "species", "val_fraction": 0.2, "test_fraction": 0.2,
            "split_seed": 0, **keys}


def build(path: Path, **keys):
    return build_data(config(path, **keys))


def splits_of(cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The file's rows each split holds, in the order of data.train, val, test (as build_data splits them)."""
    params = {key: value for key, value in cfg.items() if key not in SPLIT_KEYS}
    return split_rows(load_csv(**params), cfg)


def train_rows(path: Path, **keys) -> np.ndarray:
    return splits_of(config(path, **keys))[0]


def raw_column(data, split, name: str) -> np.ndarray:
    """A feature of a split as the file holds it (the standardisation undone)."""
    column = data.feature_names.index(name)
    return split.x[:, column].numpy().astype(np.float64) * data.feature_std[column] + data.feature_mean[column]


# --- data.missing=error, the default -------------------------------------------------------------
def test_the_default_refuses_the_first_missing_cell_in_one_line_naming_data_missing(tmp_path):
    path = write(holey_table(), tmp_path / "t.csv")
    with pytest.raises(DataError) as error:
        build(path, features=["a"])
    message = str(error.value)
    first = int(holey_table()["a"].isna().to_numpy().argmax())
    assert "\n" not in message
    assert message.startswith(f"data.path={path}: line {first + 2}, column 'a': missing value 'NA'")
    assert "data.missing=drop" in message and "median" in message


# --- fill strategies: statistics of the training rows only ----------------------------------------
@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
def test_fill_values_are_the_training_rows_statistics(tmp_path, strategy):
    frame = holey_table(90)
    path = write(frame, tmp_path / "t.csv")
    data = build(path, features=["a", "b"], missing=strategy, fill_value=-7)
    train = frame.iloc[train_rows(path, features=["a", "b"], missing=strategy)]
    fitted = data.extra["missing"]["fill_values"]
    for name in ("a", "b"):
        present = train[name].dropna()
        expected = {"mean": present.mean(), "median": present.median(), "constant": -7.0,
                    "most_frequent": present.value_counts().sort_index().idxmax()}[strategy]
        assert fitted[name] == pytest.approx(expected, rel=1e-6), name
        # the training rows' cells that were missing hold the fill value; the others are as in the file
        holes = train[name].isna().to_numpy()
        values = raw_column(data, data.train, name)
        assert values[holes] == pytest.approx(np.full(holes.sum(), expected), rel=1e-5)
        assert values[~holes] == pytest.approx(train[name].to_numpy()[~holes], rel=1e-5, abs=1e-5)
    if strategy in ("mean", "median"):  # all rows would give another value: only the training rows count
        assert fitted["a"] != pytest.approx(getattr(frame["a"].dropna(), strategy)(), rel=1e-6)


def test_the_start_line_counts_the_cells_filled_per_split(tmp_path):
    frame = holey_table()
    path = write(frame, tmp_path / "t.csv")
    data = build(path, categorical="auto", missing="median")
    holes = frame[["a", "b", "color"]].isna().sum(axis=1).to_numpy()
    split = splits_of(config(path, categorical="auto", missing="median"))
    counts = [int(holes[rows].sum()) for rows in split]
    assert data.extra["missing"]["filled"] == dict(zip(("train", "val", "test"), counts))
    assert data.describe().endswith(f"; data.missing=median: {sum(counts)} missing cells filled "
                                    f"(train {counts[0]}, val {counts[1]}, test {counts[2]})")


def test_a_parquet_file_null_and_nan_cells_are_filled(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = holey_table()
    a = frame["a"].to_numpy()  # NaN values (pyarrow keeps them as NaN, not null) ...
    b = pa.array(frame["b"].to_numpy(), mask=frame["b"].isna().to_numpy())  # ... and nulls: both missing
    pq.write_table(pa.table({"a": pa.array(a, from_pandas=False), "b": b, "species": frame["species"]}),
                   tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").column("a").null_count == 0
    data = build(tmp_path / "t.parquet", missing="median")
    train = frame.iloc[train_rows(tmp_path / "t.parquet", missing="median")]
    fitted = data.extra["missing"]["fill_values"]
    assert (fitted["a"], fitted["b"]) == pytest.approx((train["a"].median(), train["b"].median()), rel=1e-6)
    assert sum(data.extra["missing"]["filled"].values()) == int(frame[["a", "b"]].isna().sum().sum())
    assert all(np.isfinite(split.x.numpy()).all() for split in (data.train, data.val, data.test))


def test_indicators_mark_the_columns_with_holes_in_the_training_rows(tmp_path):
    frame = holey_table()
    train, test = frame.iloc[:45].copy(), frame.iloc[45:].copy()
    train["b"] = train["b"].fillna(1.5)  # b is missing in the test file only: filled, no indicator
    test.loc[test.index[0], "b"] = None
    data = build(write(train, tmp_path / "train.csv"), test_path=str(write(test, tmp_path / "test.csv")),
                 features=["a", "b"], missing="mean", missing_indicator=True)
    assert data.feature_names == ["a", "b", "a__missing"]
    assert data.extra["missing"]["indicators"] == ["a"]
    indicator = np.round(raw_column(data, data.test, "a__missing"))
    assert indicator.tolist() == test["a"].isna().astype(float).tolist()
    assert np.isfinite(data.test.x.numpy()).all()


def test_the_run_saves_strategy_fill_values_and_indicators(tmp_path):
    data = build(write(holey_table(), tmp_path / "t.csv"), categorical="auto", missing="most_frequent",
                 missing_indicator=True)
    saved = json.loads(save_preprocessing(data, tmp_path).read_text())
    assert saved["missing"]["strategy"] == "most_frequent"
    assert set(saved["missing"]["fill_values"]) == {"a", "b"}
    assert saved["missing"]["indicators"] == ["a", "b"]
    assert saved["categories"]["color"] == ["blue", "green", "red", "<missing>"]
    assert saved["feature_names"][-2:] == ["a__missing", "b__missing"]
    assert "?" in saved["missing"]["missing_values"]


# --- text columns -----------------------------------------------------------------------------------
def test_a_missing_category_is_a_category_of_its_own(tmp_path):
    frame = holey_table()
    data = build(write(frame, tmp_path / "t.csv"), categorical=["color"], missing="constant")
    assert data.feature_names[2:] == ["color=blue", "color=green", "color=red", "color=<missing>"]
    rows = train_rows(tmp_path / "t.csv", categorical=["color"], missing="constant")
    marked = np.round(raw_column(data, data.train, "color=<missing>"))
    assert marked.tolist() == frame["color"].iloc[rows].isna().astype(float).tolist()


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_a_statistic_on_a_text_column_is_refused_in_one_line_naming_it(tmp_path, strategy):
    path = write(holey_table(), tmp_path / "t.csv")
    with pytest.raises(DataError) as error:
        build(path, missing=strategy)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "column 'color': " in message and f"data.missing={strategy} fills numeric columns only" in message
    assert "data.categorical=[color]" in message


# --- data.missing=drop --------------------------------------------------------------------------------
def test_drop_drops_the_rows_with_a_hole_and_says_how_many(tmp_path):
    frame = holey_table()
    frame.loc[7, "species"] = None  # a missing target: dropped too
    path = write(frame, tmp_path / "t.csv")
    data = build(path, categorical="auto", missing="drop")
    dropped = int(frame.isna().any(axis=1).sum())
    assert len(data.train) + len(data.val) + len(data.test) == len(frame) - dropped
    assert data.describe().endswith(f"; data.missing=drop: {dropped} of {len(frame)} rows with a missing cell "
                                    f"dropped (t.csv {dropped})")
    assert data.feature_names[-3:] == ["color=blue", "color=green", "color=red"]  # no <missing>: none is left


def test_drop_keeps_naming_the_file_line_of_a_later_problem(tmp_path):
    frame = holey_table()[["a", "species"]]
    frame["a"] = frame["a"].astype(object)
    frame.loc[40, "a"] = "oops"
    with pytest.raises(DataError, match=r"t.csv: line 42, column 'a': 'oops' is not a number"):
        build(write(frame, tmp_path / "t.csv"), missing="drop")


# --- targets, empty columns, tokens, keys ---------------------------------------------------------
@pytest.mark.parametrize("strategy", ["error", "median"])
def test_a_missing_target_is_refused_naming_file_line_and_column(tmp_path, strategy):
    frame = holey_table()[["a", "species"]].fillna(1.0)
    frame.loc[5, "species"] = None
    path = write(frame, tmp_path / "t.csv")
    with pytest.raises(DataError) as error:
        build(path, missing=strategy)
    assert str(error.value) == (f"data.path={path}: line 7, column 'species': missing value 'NA': a row needs its "
                                "target value; fill it in or remove the row, or set data.missing=drop to drop such rows")


def test_a_column_missing_in_every_training_row_is_one_line(tmp_path):
    frame = holey_table()[["a", "species"]].assign(empty=None)
    path = write(frame, tmp_path / "t.csv")
    with pytest.raises(DataError) as error:
        build(path, missing="median")
    assert str(error.value) == (f"data.path={path}: column 'empty' is missing in all 36 training rows: nothing to "
                                "fill it from; leave it out with data.features=[...]")
    with pytest.raises(DataError, match=r"data.missing=drop drops all 60 rows: column 'empty' is missing in every row"):
        build(path, missing="drop")
    with pytest.raises(DataError, match=r"column 'empty' is missing in all 60 rows: nothing to encode"):
        build(path, missing="median", categorical=["empty"])


def test_missing_values_says_which_cells_are_missing(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,species\n" + "".join(f"{value},{'xy'[i % 2]}\n" for i, value in
                                            enumerate(["1", "?", "3", "-", *map(str, range(5, 21))])))
    with pytest.raises(DataError, match=r"line 5, column 'a': '-' is not a number"):
        build(path, missing="mean")  # "?" is missing by default, "-" is not
    data = build(path, missing="mean", missing_values=["?", "-"])
    assert data.extra["missing"]["filled"]["train"] + data.extra["missing"]["filled"]["val"] \
        + data.extra["missing"]["filled"]["test"] == 2
    with pytest.raises(DataError, match=r"line 3, column 'a': '\?' is not a number"):
        build(path, missing="mean", missing_values=["-"])


@pytest.mark.parametrize("keys, expected", [
    ({"missing": "zero"}, "data.missing=zero is not valid: expected one of error, drop, mean, median, most_frequent, constant"),
    ({"missing": "constant", "fill_value": "x"}, "data.fill_value=x is not valid: expected a finite number"),
    ({"missing_indicator": True}, "data.missing_indicator=true is not valid: expected false with data.missing=error"),
    ({"missing_values": "NA"}, "data.missing_values=NA is not valid: expected a list of the cells"),
])
def test_a_bad_missing_key_is_one_line_naming_it(tmp_path, keys, expected):
    with pytest.raises(ConfigError) as error:
        build(write(holey_table(), tmp_path / "t.csv"), **keys)
    assert "\n" not in str(error.value) and str(error.value).startswith(expected), str(error.value)


def test_other_sources_have_no_missing_record():
    data = build_data({"source": "moons", "n_samples": 100, "val_fraction": 0.2, "test_fraction": 0.2})
    assert "missing" not in data.extra and "data.missing" not in data.describe()


# --- predictions: the run's fill values ---------------------------------------------------------------
RUN = {  # a run trained with data.missing=median on x (an indicator) and color (one-hot, a <missing> category)
    "feature_names": ["x", "color=blue", "color=<missing>", "x__missing"], "input_columns": ["x", "color"],
    "categories": {"color": ["blue", "<missing>"]}, "feature_mean": [10.0, 0.5, 0.5, 0.5],
    "feature_std": [2.0, 0.5, 0.5, 0.5],
    "missing": {"strategy": "median", "fill_value": 0.0, "indicator": True, "missing_values": ["", "NA", "?"],
                "fill_values": {"x": 14.0}, "indicators": ["x"]},
}
FILLED = [[1.0, 1, -1, -1], [2.0, -1, 1, 1], [2.0, 1, -1, 1]]  # x=12 blue; x and color missing; x "?" blue


def test_a_frame_an_array_and_a_file_are_filled_as_the_run_filled_its_rows(tmp_path):
    frame = pd.DataFrame({"x": [12.0, None, "?"], "color": ["blue", None, "blue"]})
    assert features(frame, RUN).tolist() == FILLED
    array = np.array([[12.0, 1, 0], [np.nan, 0, 1], [np.nan, 1, 0]])
    assert features(array, RUN).tolist() == FILLED
    path = tmp_path / "new.csv"
    path.write_text("x,color\n12,blue\nNA,\n?,blue\n")
    assert read_feature_rows(path, RUN["feature_names"], ",", RUN, standardize=True).tolist() == FILLED


def test_a_run_that_fills_nothing_refuses_new_rows_with_holes(tmp_path):
    run = {**RUN, "missing": {**RUN["missing"], "strategy": "error"}}
    with pytest.raises(DataError, match=r"row 1, feature 'x' is nan; .*data.missing=error"):
        features(np.array([[12.0, 1, 0], [np.nan, 0, 1]]), {**run, "feature_names": run["feature_names"][:3]})
    path = tmp_path / "new.csv"
    path.write_text("x,color\n12,blue\nNA,blue\n")
    with pytest.raises(DataError) as error:
        read_feature_rows(path, run["feature_names"], ",", run, standardize=True)
    assert str(error.value) == (f"input={path}: line 3, column 'x': missing value 'NA'; fill it in or remove the "
                                "row (the run was trained with data.missing=error: it fills no cell in)")


@pytest.mark.slow
def test_a_trained_run_predicts_rows_with_holes_as_it_filled_its_own(tmp_path):
    from omegaconf import OmegaConf

    frame = holey_table(90)
    path = write(frame, tmp_path / "t.csv")
    run = mlpkit.train(["data=csv", f"data.path={path}", "data.target=species", "data.categorical=auto",
                        "data.missing=mean", "data.missing_indicator=true", *TINY], run_dir=tmp_path / "run")
    cfg = OmegaConf.to_container(OmegaConf.load(run.dir / ".hydra" / "config.yaml").data)
    data = build_data(cfg)  # the run's test split, filled with its training rows' means
    test = frame.iloc[splits_of(cfg)[2]].drop(columns="species")
    assert test.isna().any().all() and run.preprocessing["missing"]["indicators"] == ["a", "b"]
    assert features(test, run.preprocessing) == pytest.approx(data.test.x.numpy(), abs=1e-5)
    test.to_csv(tmp_path / "new.csv", index=False)
    predict_csv(run.dir, tmp_path / "new.csv", tmp_path / "pred.csv")
    assert pd.read_csv(tmp_path / "pred.csv")["prediction"].tolist() == run.predict(test).tolist()
    trained, logits = run.outputs(data.test.x.numpy())
    assert run.predict_proba(test) == pytest.approx(trained.objective.predict(logits).numpy(), abs=1e-6)


@pytest.mark.slow
def test_a_run_trained_with_missing_error_refuses_holes_in_new_rows(tmp_path):
    frame = holey_table(60).dropna()
    run = mlpkit.train(["data=csv", f"data.path={write(frame, tmp_path / 't.csv')}", "data.target=species",
                        "data.features=[a,b]", *TINY], run_dir=tmp_path / "run")
    with pytest.raises(DataError, match=r"row 0, feature 'a' is nan; .*trained with data.missing=error"):
        run.predict(pd.DataFrame({"a": [None], "b": [1.5]}))


@pytest.mark.slow
def test_the_penguins_table_trains_with_its_holes_filled(tmp_path):
    run = mlpkit.train(["data=csv", f"data.path={PENGUINS}", "data.target=species", "data.categorical=auto",
                        "data.missing=median", *TINY], run_dir=tmp_path / "run")
    start = next(line for line in (run.dir / "train.log").read_text().splitlines() if "data=csv:" in line)
    counts = re.search(r"data.missing=median: 19 missing cells filled \(train (\d+), val (\d+), test (\d+)\)", start)
    assert counts and sum(map(int, counts.groups())) == 19, start  # 2 rows of 4 measurements, 11 sexes
    assert run.preprocessing["categories"]["sex"] == ["female", "male", "<missing>"]
    penguins = pd.read_csv(PENGUINS)
    assert len(run.predict(penguins.drop(columns="species"))) == 344  # its NA rows predicted too


def test_drop_drops_a_parquet_row_whose_target_is_nan(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = np.arange(40) % 2 * 1.0
    target[5] = np.nan
    pq.write_table(pa.table({"a": np.arange(40.0), "y": pa.array(target, from_pandas=False)}), tmp_path / "t.parquet")
    data = build(tmp_path / "t.parquet", target="y", task="binary", missing="drop")
    assert len(data.train) + len(data.val) + len(data.test) == 39
    assert data.describe().endswith("data.missing=drop: 1 of 40 rows with a missing cell dropped (t.parquet 1)")

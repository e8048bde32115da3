"""Bad values and bad numbers stop a run with one line naming the key (or file, line and column),
the value given and what is allowed: config values before any data loads, cells as the table is read."""
import pickle
from pathlib import Path

import pytest

from mlpkit.config import report_config_errors, validate
from mlpkit.data import build_data
from mlpkit.errors import ConfigError, DataError
from mlpkit.model import check_fits_memory
from mlpkit.prediction import read_feature_rows
from tests.conftest import compose_config, hydra_error

CONFIG_CASES = [
    (["trainer.seed=-1"], "trainer.seed=-1 is not valid: expected an integer in [0, 4294967295]"),
    (["trainer.seed=4294967296"], "trainer.seed=4294967296 is not valid: expected an integer in [0, 4294967295]"),
    (["data.split_seed=-1"], "data.split_seed=-1 is not valid: expected an integer in [0, 4294967295]"),
    (["optimizer.betas=[2,3]"], "optimizer.betas=[2,3] is not valid: expected two numbers in [0, 1)"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1 is not valid: expected a number >= 0"),
    (["optimizer=sgd", "optimizer.momentum=-1"], "optimizer.momentum=-1 is not valid: expected a number >= 0"),
    (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"],
     "optimizer.nesterov=true is not valid: expected false with optimizer.momentum=0: Nesterov momentum "
     "needs momentum > 0 and dampening 0"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not valid: expected a finite positive number"),
    (["loss=ce", "loss.label_smoothing=2"], "loss.label_smoothing=2 is not valid: expected a number in [0, 1]"),
    (["loss=bce", "loss.pos_weight=abc"], "loss.pos_weight=abc is not valid: expected a positive number or null"),
    (["activation=leaky", "activation.negative_slope=abc"],
     "activation.negative_slope=abc is not valid: expected a number"),
    (["activation=gelu", "activation.approximate=fast"],
     "activation.approximate=fast is not valid: expected none or tanh"),
    (["activation=prelu", "activation.num_parameters=1.5"],
     "activation.num_parameters=1.5 is not valid: expected 1 (one slope per layer) or an integer > 1"),
    (["activation=hardtanh", "activation.min_val=2"],
     "activation.min_val=2 is not valid: expected a number below activation.max_val=1.0"),
    (["activation=celu", "activation.alpha=0"], "activation.alpha=0 is not valid: expected a non-zero number"),
    (["trainer.seed=???"], "trainer.seed is missing: expected an integer in [0, 4294967295]"),
    (["model.bias=false_"], "model.bias=false_ is not valid: expected true or false"),
    (["model.bias=1"], "model.bias=1 is not valid: expected true or false"),
    (["data.standardize=yes"], "data.standardize=yes is not valid: expected true or false"),
    (["data=diabetes", "data.standardize_target=0"],
     "data.standardize_target=0 is not valid: expected true or false"),
    (["trainer.callbacks=mlpkit.callbacks.Callback"],
     "trainer.callbacks=mlpkit.callbacks.Callback is not valid: expected a list of Callback classes as dotted "
     "import paths, e.g. [my_pkg.callbacks.PrintLoss]"),
    (["trainer.callbacks=[PrintLoss]"], "trainer.callbacks=[PrintLoss] is not valid: expected a list of Callback"),
    (["data=csv", "data.path=${nope}"],
     "data.path=${nope} is not valid: expected a value or an interpolation that resolves. "
     "Interpolation key 'nope' not found"),
    (["trainer.device=cudafoo"], "trainer.device=cudafoo is not valid: expected auto, cpu, cuda, cuda:N or mps"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_config_value_is_refused_before_data_loads(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("overrides", [["trainer.seed=4294967295"], ["trainer.device=cuda:1"],
                                       ["optimizer=sgd", "optimizer.nesterov=true"],
                                       ["loss=ce", "loss.label_smoothing=1.0"], ["loss=bce", "loss.pos_weight=null"],
                                       ["model.bias=false", "data.standardize=false"],
                                       ["trainer.callbacks=[my_pkg.callbacks.PrintLoss,mlpkit.callbacks.Callback]"]])
def test_edge_values_that_work_are_accepted(overrides):
    validate(compose_config(*overrides))


def test_missing_key_error_survives_a_launcher():
    with pytest.raises(ConfigError) as error:
        validate(compose_config("trainer.seed=???"))
    assert str(pickle.loads(pickle.dumps(error.value))) == str(error.value)


def test_deleting_a_key_of_a_schema_says_what_it_expects():
    # the schema keeps every key of its group, so Hydra refuses the deletion as it composes; the line
    # is the one a missing key gets
    assert hydra_error("~trainer.seed") == "trainer.seed is missing: expected an integer in [0, 4294967295]"


# The command line prints that one line alone and exits 2: test_config.py (the "value" case).


def test_failed_multirun_job_ends_the_sweep_with_exit_1_and_no_traceback(capsys):
    # Hydra's sweeper raises a failed job's exception again once its batch is done; the job logged
    # its own line already.
    def sweep():
        raise ConfigError("optimizer.lr", -1, "a finite positive number")

    with pytest.raises(SystemExit) as stop:
        report_config_errors(sweep, "train")
    assert stop.value.code == 1  # Hydra's code for a sweep with a failed job, as before
    assert "Traceback" not in capsys.readouterr().err


# --- bad numbers in the user's table ------------------------------------------------------------------
def write_table(folder: Path, cells: dict[int, str] | None = None, target: str | None = None,
                rows: int = 40) -> Path:
    """A CSV file: features a, b and target y; ``cells`` puts a text into column a of some lines."""
    lines = ["a,b,y"]
    for index in range(rows):
        line = index + 2
        a = (cells or {}).get(line, str(index % 7))
        lines.append(f"{a},{index * 0.5},{target if target is not None else index % 2}")
    path = folder / "table.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def load(path: Path | str, **settings):
    return build_data({"source": "csv", "path": str(path), "target": "y", "val_fraction": 0.15,
                       "test_fraction": 0.15, "split_seed": 0, **settings})


@pytest.mark.parametrize("cell", ["1e39", "1e308", "-1e39"])
def test_cell_beyond_float32_is_refused_with_its_line_and_column(tmp_path, cell):
    path = write_table(tmp_path, {7: cell})
    with pytest.raises(DataError) as error:
        load(path)
    assert str(error.value) == (f"data.path={path}: line 7, column 'a': '{cell}' is beyond float32's range "
                                "(magnitude at most 3.403e+38); rescale the column")


def test_prediction_refuses_a_cell_beyond_float32(tmp_path):
    path = tmp_path / "new.csv"
    path.write_text("a,b\n1,2\n1e39,3\n")
    with pytest.raises(DataError, match=r"line 3, column 'a': '1e39' is beyond float32's range"):
        read_feature_rows(path, ["a", "b"])


@pytest.mark.slow
def test_value_whose_variance_overflows_float32_is_refused(tmp_path):
    # 1e25 fits float32, its square does not: the training split's std would be infinite
    path = write_table(tmp_path, {line: "1e25" for line in range(5, 42, 10)})
    with pytest.raises(DataError) as error:
        load(path)
    message = str(error.value)
    assert message.startswith(f"data.path={path}: line ") and "column 'a': 1e+25 makes the column's " \
        "variance overflow float32 (its standard deviation is not finite); rescale the column" in message
    assert int(message.split("line ")[1].split(",")[0]) in range(5, 42, 10)  # a line that holds 1e25


def test_large_values_whose_statistics_fit_float32_still_load(tmp_path):
    data = load(write_table(tmp_path, {line: "1e18" for line in range(5, 42, 10)}))
    assert all(split.x.isfinite().all() for split in (data.train, data.val, data.test))


def test_constant_regression_target_has_nothing_to_learn(tmp_path):
    path = write_table(tmp_path, target="2.5")
    with pytest.raises(DataError) as error:
        load(path)
    assert str(error.value) == f"data.target=y: column 'y' of {path}: all 40 values are 2.5: nothing to learn"


def test_path_that_is_not_a_regular_file_says_so():
    with pytest.raises(DataError) as error:
        load("/dev/zero")
    assert str(error.value) == ("data.path=/dev/zero: /dev/zero is not a regular file (a device, pipe or socket): "
                                "expected a table file")


# --- a model too large for memory ---------------------------------------------------------------------
def test_model_too_large_for_memory_is_refused_before_allocating():
    # 10^12 parameters: 16 TB to train, more than any machine this runs on
    with pytest.raises(ConfigError) as error:
        check_fits_memory(64, 10, [1_000_000, 1_000_000], "cpu")
    message = str(error.value)
    assert message.startswith("model.hidden_sizes=[1000000,1000000] is not valid: expected a model that fits "
                              "in memory: 1,000,076,000,010 parameters need about 14,902.3 GiB to train "
                              "(float32 weights, gradients and Adam's two moments), more than the "), message


def test_model_that_fits_passes_the_memory_check():
    check_fits_memory(64, 10, [128, 64], "cpu")

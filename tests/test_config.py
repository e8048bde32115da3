"""Config mistakes stop before any data is loaded: one line naming key, value and what is allowed.

The messages are checked in-process, where each is made: Hydra's composition errors (unknown key,
unknown choice, bad override syntax) by describe_hydra_error, the values by validate. Runs of
train.py, one per family (in one fresh interpreter), show the command line turning each into one line
and exit 2, the same line that mlpkit.train raises; a process of its own shows HYDRA_FULL_ERROR's traceback."""
import subprocess
from pathlib import Path

import pytest

import mlpkit
from mlpkit.config import validate
from mlpkit.errors import EXIT_CONFIG, ConfigError
from tests.conftest import compose_config, hydra_error, run_cli, run_cli_in_one_interpreter

COMPOSITION_CASES = [
    (["trainer.max_epoch=3"],
     "trainer.max_epoch=3 is not valid: 'max_epoch' is not a config key; expected a key of trainer: "
     "max_epochs, batch_size"),
    (["activation=swish"], "activation=swish is not valid: expected one of celu, elu, gelu"),
    (["data=imagenet"], "data=imagenet is not valid: expected one of"),
    (["activation=leaky", "activation.slope=0.3"],
     "activation.slope=0.3 is not valid: 'slope' is not a config key; expected a key of activation: "
     "name, negative_slope"),
    (["model.hidden_sizes=[64,"], "cannot parse the command-line override"),
]

VALUE_CASES = [
    (["trainer.max_epochs=ten"], "trainer.max_epochs=ten is not valid: expected an integer >= 0"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 is not valid: expected an integer >= 1"),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"],
     "data.val_fraction + data.test_fraction=1.0 is not valid: expected a sum below 1"),
    (["model.dropout=1.5"], "model.dropout=1.5 is not valid: expected a number in [0, 1)"),
    (["model.init=he"], "model.init=he is not valid: expected one of default, xavier_uniform"),
    (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite=ignore is not valid: expected stop or skip"),
    (["trainer.device=tpu"], "trainer.device=tpu is not valid"),
    (["diagnostics.figure_every_n_steps=-1"],
     "diagnostics.figure_every_n_steps=-1 is not valid: expected an integer >= 0 (0 = off)"),
    (["diagnostics.statistics_every=0"],
     "diagnostics.statistics_every=0 is not valid: expected auto or an integer >= 1"),
    (["trainer.checkpoint_min_seconds=-1"],
     "trainer.checkpoint_min_seconds=-1 is not valid: expected a number of seconds >= 0"),
    (["trainer.batch_size=abc"], "trainer.batch_size=abc is not valid: expected an integer >= 1"),
    (["trainer.log_every_n_steps=often"], "trainer.log_every_n_steps=often is not valid: expected auto or an integer >= 1"),
    (["model.bias=no"], "model.bias=no is not valid: expected true or false"),  # nn.Linear would take it as true
    (["data.standardize=no"], "data.standardize=no is not valid: expected true or false"),
]


@pytest.mark.parametrize("overrides, message", COMPOSITION_CASES, ids=[c[0][-1] for c in COMPOSITION_CASES])
def test_composition_mistake_is_one_line_naming_key_value_and_choices(overrides, message):
    line = hydra_error(*overrides)
    assert message in line and "\n" not in line, line


@pytest.mark.parametrize("overrides, message", VALUE_CASES, ids=[c[0][-1] for c in VALUE_CASES])
def test_bad_value_is_one_line_naming_key_value_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert error.value.exit_code == EXIT_CONFIG


REFUSED_ON_THE_COMMAND_LINE = {"composition": COMPOSITION_CASES[0], "value": (["trainer.seed=-1"], "trainer.seed=-1"),
                               "flag": (["model.bias=no"], "model.bias=no is not valid")}


@pytest.fixture(scope="module")
def refused_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Each mistake through train.py, one after another in one fresh interpreter: its run directory, its output."""
    base = tmp_path_factory.mktemp("refused")
    commands = [(base / name / "run", tuple(overrides)) for name, (overrides, _) in REFUSED_ON_THE_COMMAND_LINE.items()]
    results = run_cli_in_one_interpreter(commands)
    return {name: (run_dir, result) for name, (run_dir, _), result in zip(REFUSED_ON_THE_COMMAND_LINE, commands, results)}


@pytest.mark.slow
@pytest.mark.parametrize("case", REFUSED_ON_THE_COMMAND_LINE)
def test_config_mistake_is_one_line_with_exit_code_2(refused_runs, tmp_path, case):
    overrides, message = REFUSED_ON_THE_COMMAND_LINE[case]
    run_dir, result = refused_runs[case]
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Config error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "checkpoints").exists()
    # mlpkit.train raises the line the command line says
    with pytest.raises(ConfigError) as error:
        mlpkit.train(overrides, run_dir=tmp_path / "api")
    assert f"Config error: {error.value}" in result.stderr.splitlines()
    if overrides == ["trainer.seed=-1"]:  # a value mistake: that line and nothing else
        assert lines == ["Config error: trainer.seed=-1 is not valid: expected an integer in [0, 4294967295]"]


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(run_dir):
    result = run_cli(run_dir, "trainer.max_epoch=3", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr

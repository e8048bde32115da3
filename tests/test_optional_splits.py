"""data.val_fraction=0 and data.test_fraction=0: a run without a validation or a test split (train on
every row, as a paper trains on a data set's whole training file); what watches validation is
refused in one line naming data.val_fraction."""
from __future__ import annotations

import json

import pytest

from mlpkit.config import validate
from mlpkit.errors import ConfigError
from tests.conftest import IRIS, assembled, compose_config, run_cli


def test_no_validation_split_trains_on_every_row_and_watches_the_training_loss(tmp_path):
    parts = assembled("data.val_fraction=0", "data.test_fraction=0", "trainer.max_epochs=2",
                      checkpoint_dir=tmp_path)
    assert (len(parts.data.train), len(parts.data.val), len(parts.data.test)) == (1797, 0, 0)
    result = parts.trainer.fit()
    assert set(result) >= {"train"} and not {"val", "test", "test_best"} & set(result)
    assert all("loss/val" not in entry and "loss/train_epoch" in entry for entry in result["history"])
    assert result["best"]["epoch"] is None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.pt"]  # no best.pt without validation


def test_no_test_split_keeps_validation_and_the_best_checkpoint(tmp_path):
    parts = assembled("data.test_fraction=0", "trainer.max_epochs=2", checkpoint_dir=tmp_path)
    assert len(parts.data.test) == 0 and len(parts.data.val) == 270
    result = parts.trainer.fit()
    assert "val" in result and "test" not in result and "test_best" not in result
    assert result["best"]["epoch"] in (1, 2) and (tmp_path / "best.pt").is_file()


@pytest.mark.parametrize("setting, named", [
    ("trainer.early_stopping.patience=3", "trainer.early_stopping.patience=3"),
    ("scheduler=plateau", "scheduler=plateau"),
    ("objective.metric=accuracy", "objective.metric=accuracy"),
])
def test_what_watches_validation_is_refused_without_it(setting, named):
    with pytest.raises(ConfigError, match=f"data.val_fraction=0 is not valid: expected a fraction in \\(0, 1\\) "
                                          f"with {named}") as refused:
        validate(compose_config("data.val_fraction=0", setting))
    assert "\n" not in str(refused.value)


def test_a_validation_file_needs_no_fraction():
    validate(compose_config("data=csv", f"data.path={IRIS}", "data.target=species", "data.val_fraction=0",
                            f"data.val_path={IRIS}", "trainer.early_stopping.patience=3"))


@pytest.mark.parametrize("fraction", ["1", "-0.1", "1.5"])
def test_fractions_outside_zero_to_one_are_refused(fraction):
    with pytest.raises(ConfigError, match=rf"data.test_fraction={fraction} is not valid: expected a fraction "
                                          r"\(0 = no test split\) in \[0, 1\)"):
        validate(compose_config(f"data.test_fraction={fraction}"))


@pytest.mark.slow
def test_command_line_run_without_validation_or_test(tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli(run_dir, "data.val_fraction=0", "data.test_fraction=0", "trainer.max_epochs=2",
                   "trainer.progress=false")
    assert done.returncode == 0, done.stderr
    assert "train 1797, val 0, test 0" in done.stderr
    assert "  train loss" in done.stderr and "  val " not in done.stderr and "  test " not in done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "val" not in metrics and "test" not in metrics

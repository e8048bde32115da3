"""Runs you can trust: a resume continues the same run, a run directory holds one run, nothing is
spoiled by a refused command, and evaluation notices changed data."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import mlpkit
from mlpkit.errors import ConfigError
from mlpkit.evaluation import evaluate_run
from mlpkit.new_dirs import unique_dir
from tests.conftest import IRIS, ROOT, assembled, read_scalars, run_cli, script

TWO_EPOCHS = ("activation=tanh", "data.split_seed=3", "trainer.max_epochs=2", "trainer.progress=false")


def fingerprints(run_dir: Path) -> dict[str, str]:
    """Every file of a run directory (but the console log) and a digest of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "train.log"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tanh run of 2 epochs with its own data split, trained once; tests copy it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli(run_dir, *TWO_EPOCHS)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


# The command line's refusals (exit code 2, one line) are tested on the real command in test_resume.py
# and test_cli.py; here the run directory is what is under test, so the run function is called in-process.
@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (("activation=relu",), "activation=relu is not valid: expected the run's own activation={name:tanh}"),
    (("optimizer.lr=0.5",), "optimizer.lr=0.5 is not valid: expected the run's own optimizer.lr=0.001"),
    (("trainer.max_epochs=1",), "trainer.max_epochs=1 is not valid: expected an integer >= 2 on this resume"),
])
def test_a_refused_resume_changes_nothing_in_the_run(run_dir, overrides, message):
    before = fingerprints(run_dir)
    with pytest.raises(ConfigError) as refused:
        mlpkit.train([f"resume={run_dir}", *overrides])
    assert refused.value.exit_code == 2
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert fingerprints(run_dir) == before


@pytest.mark.slow
def test_a_resume_continues_with_the_saved_config_and_records_what_it_changed(run_dir):
    mlpkit.train([f"resume={run_dir}", "trainer.max_epochs=3"])  # no other override given
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["activation"] == "tanh" and metrics["epochs"] == 3 and len(metrics["history"]) == 3
    assert metrics["resumes"][0]["changes"] == {"trainer.max_epochs": 3} and metrics["resumes"][0]["epoch"] == 2
    assert json.loads((run_dir / "resumes.json").read_text()) == metrics["resumes"]
    from mlpkit.checkpoint import load_checkpoint

    config = load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]
    assert config["data"]["split_seed"] == 3 and config["trainer"]["max_epochs"] == 3
    # TensorBoard keeps the step-40 point that the end-of-epoch checkpoint came after
    assert [step for step, _ in read_scalars(run_dir)["loss/val"]] == [20, 40, 60]


@pytest.mark.slow
def test_a_resume_may_change_how_often_checkpoints_are_written(run_dir):
    mlpkit.train([f"resume={run_dir}", "trainer.max_epochs=3", "trainer.checkpoint_min_seconds=0"])
    changes = json.loads((run_dir / "resumes.json").read_text())[0]["changes"]
    assert changes == {"trainer.max_epochs": 3, "trainer.checkpoint_min_seconds": 0}
    from mlpkit.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]["trainer"]["checkpoint_min_seconds"] == 0


@pytest.mark.slow
def test_the_same_command_again_with_resume_is_accepted(run_dir):
    mlpkit.train([*TWO_EPOCHS, f"resume={run_dir}"])
    assert json.loads((run_dir / "resumes.json").read_text())[0]["changes"] == {}


@pytest.mark.slow
def test_a_new_run_refuses_a_directory_that_holds_a_run(run_dir):
    before = fingerprints(run_dir)
    with pytest.raises(ConfigError) as refused:
        mlpkit.train(["trainer.max_epochs=1"], run_dir=run_dir)
    assert refused.value.exit_code == 2
    assert "expected a directory that holds no other run" in str(refused.value)
    assert f"resume={run_dir}" in str(refused.value)
    assert fingerprints(run_dir) == before


def test_directories_asked_for_in_the_same_second_are_told_apart(tmp_path):
    wanted = str(tmp_path / "outputs" / "2026-01-01" / "12-00-00")
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: unique_dir(wanted), range(8)))
    assert len(set(made)) == 8 and made.count(wanted) == 1
    assert sorted(made)[1:] == sorted(f"{wanted}_{n}" for n in range(2, 9))


@pytest.mark.slow
def test_two_runs_started_at_once_get_a_directory_each(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "trainer.max_epochs=1", "trainer.progress=false",
               "model.hidden_sizes=[16]"]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                                                         timeout=300), range(2)))
    assert [r.returncode for r in results] == [0, 0], results[0].stderr + results[1].stderr
    runs = [p.parent for p in tmp_path.glob("outputs/*/*/metrics.json")]
    assert len(runs) == 2
    for run in runs:  # each directory holds one whole run: its config and its checkpoints
        assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
        assert not list(run.glob("checkpoints/.*.tmp"))


@pytest.mark.slow
def test_evaluate_refuses_changed_data_unless_told_to_go_on(tmp_path):
    table = tmp_path / "iris.csv"
    shutil.copy(IRIS, table)
    run_dir = tmp_path / "run"
    mlpkit.train(["data=csv", f"data.path={table}", "data.target=species", "trainer.max_epochs=1",
                  "trainer.progress=false", "model.hidden_sizes=[8]"], run_dir=run_dir)
    evaluate_run(run_dir)  # the same data: no complaint
    header, *rows = table.read_text().splitlines()
    table.write_text("\n".join([header, *reversed(rows)]) + "\n")  # the same rows, in another order
    refused = script("evaluate", f"run={run_dir}", cwd=tmp_path)
    assert refused.returncode == 2
    assert "allow_changed_data=False is not valid" in refused.stderr
    assert "differs from the data" in refused.stderr and "Traceback" not in refused.stderr
    allowed = script("evaluate", f"run={run_dir}", "allow_changed_data=true", cwd=tmp_path)
    assert allowed.returncode == 0 and "warning: the data loaded now differs" in allowed.stderr + allowed.stdout


def test_predict_refuses_to_write_over_its_input(runs, tmp_path):
    from mlpkit.prediction import predict_csv

    table = tmp_path / "rows.csv"
    shutil.copy(IRIS, table)
    before = table.read_bytes()
    with pytest.raises(ConfigError, match=r"output=.*rows.csv is not valid: expected a file other than input="):
        predict_csv(runs["iris"], table, table)
    assert table.read_bytes() == before


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_good_file(tmp_path, monkeypatch):
    import errno

    from mlpkit import checkpointing
    from mlpkit.checkpoint import load_checkpoint
    from mlpkit.data import build_data
    from mlpkit.errors import TrainingStopped

    data = build_data({"source": "digits", "val_fraction": 0.15, "test_fraction": 0.15})
    trainer = assembled("model.hidden_sizes=[16]", "optimizer.fused=null", "trainer.max_epochs=1",
                        "trainer.batch_size=64", data=data, checkpoint_dir=tmp_path).trainer
    trainer.fit()
    good = (tmp_path / "last.pt").read_bytes()

    def disk_full(state, path, *also):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpointing, "atomic_save", disk_full)
    trainer.max_epochs = 2
    with pytest.raises(TrainingStopped, match=r"could not write checkpoint last.pt \(the last good one is kept\): "
                                              r".*last.pt: No space left on device") as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 4
    assert (tmp_path / "last.pt").read_bytes() == good and load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


@pytest.mark.slow
def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_cli(blocker / "run", "trainer.max_epochs=1", cwd=tmp_path)
    assert result.returncode == 4
    assert result.stderr.strip().splitlines() == [
        f"Error: could not write the run directory: {blocker / 'run'}: Not a directory"]


def test_predict_refuses_a_directory_as_output(runs, tmp_path):
    from mlpkit.prediction import predict_csv

    with pytest.raises(ConfigError, match=r"output=.* is not valid: expected a file to write the predictions to\. "
                                          r".* is a directory"):
        predict_csv(runs["iris"], IRIS, tmp_path)

"""Shared searches: two `python train.py -m hparams_search=optuna` workers on one study's storage run
n_trials in all, each trial once; a storage that cannot hold a study is refused in one line."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mlpkit.errors import ConfigError
from tests.conftest import ROOT

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]'")

SWEEPER = "hydra_plugins.mlpkit_optuna_sweeper.OptunaPruningSweeper"
N_TRIALS = 6


def worker(sweep_dir, storage: str) -> subprocess.Popen:
    """One worker of the study: the command a user starts in a second terminal (or on a second machine)."""
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=optuna", "data=moons",
               "model.hidden_sizes=[8]", "trainer.max_epochs=1", "trainer.progress=false", "trainer.device=cpu",
               f"hydra.sweeper.n_trials={N_TRIALS}", f"hydra.sweep.dir={sweep_dir}",
               "hydra.sweeper.study_name=shared", f"hydra.sweeper.storage={storage}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_workers_share_one_study_each_trial_once(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep_dir = tmp_path / "sweep"
    workers = [worker(sweep_dir, storage) for _ in range(2)]  # started at once, on a study not yet created
    outputs = [process.communicate(timeout=300)[0] for process in workers]
    for process, output in zip(workers, outputs):
        assert process.returncode == 0, output[-3000:]

    study = optuna.load_study(study_name="shared", storage=storage)
    assert sorted(trial.number for trial in study.trials) == list(range(N_TRIALS))
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials)
    # each worker says which trials it ran: both ran some, none ran one twice
    ran = [[int(n) for line in output.splitlines() if "this worker runs them" in line
            for n in line.split("trials ")[1].split(" of study")[0].split(", ")] for output in outputs]
    assert all(ran), ran
    assert sorted(ran[0] + ran[1]) == list(range(N_TRIALS)), ran
    # two seeded workers proposed different trials (the seed moves on with each trial's number)
    proposed = {(t.params["activation"], round(t.params["optimizer.lr"], 9)) for t in study.trials}
    assert len(proposed) == N_TRIALS
    # one job directory per trial, named by its number
    jobs = sorted(path.name for path in sweep_dir.iterdir() if (path / ".hydra").is_dir())
    assert sorted(int(name.split("_")[0]) for name in jobs) == list(range(N_TRIALS)), jobs
    # the report (whichever worker wrote it last) lists every trial of the study, whole
    with open(sweep_dir / "sweep_report.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == N_TRIALS and {row["status"] for row in rows} == {"completed"}
    assert not list(sweep_dir.glob(".*.tmp"))  # no temporary report file left behind


@pytest.mark.parametrize("storage, reason", [
    ("redis://localhost:6379", "redis:// is not a database the workers can share"),
    ("not a url", "expected null"),
    ("sqlite:///:memory:", "seen by one process only"),
])
def test_a_storage_workers_cannot_share_is_refused(storage, reason):
    from mlpkit.study_storage import check_storage

    with pytest.raises(ConfigError) as refused:
        check_storage(storage)
    message = str(refused.value)
    assert message.startswith(f"hydra.sweeper.storage={storage} is not valid: expected null") and reason in message
    assert "postgresql://" in message and "\n" not in message


def test_an_unwritable_sqlite_path_is_refused_in_one_line_with_exit_2(tmp_path, capsys):
    from mlpkit.sweeps import continue_optuna_study

    (tmp_path / "a_file").write_text("not a folder")
    storage = f"sqlite:///{tmp_path / 'a_file' / 'study.db'}"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}, "sweeper": {
        "_target_": SWEEPER, "storage": storage, "study_name": "s", "n_trials": 2}}})
    with pytest.raises(SystemExit) as stopped:
        continue_optuna_study(config)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Config error: hydra.sweeper.storage={storage} is not valid")
    assert f"{tmp_path / 'a_file'} is a file" in lines[0]


def test_a_job_the_other_worker_finished_meanwhile_is_not_this_workers_failure(tmp_path):
    """The race CI met: this worker read the other worker's job before its status was written, and the
    other worker told its trial COMPLETE before this worker asked the study."""
    import json

    import optuna

    from mlpkit.sweeps import running_in_another_worker

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="shared", storage=storage)
    study.tell(study.ask(), 0.5)  # trial 0, COMPLETE
    job = tmp_path / "sweep" / "0_job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: 0\n")
    (job / ".hydra" / "overrides.yaml").write_text("[]\n")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}, "sweeper": {
        "_target_": SWEEPER, "storage": storage, "study_name": "shared", "n_trials": 2}}})
    assert not running_in_another_worker(config, job)  # told, yet no status: killed, a failure
    (job / "job_status.json").write_text(json.dumps({"status": "completed", "error": None, "job_num": 0}))
    assert running_in_another_worker(config, job)  # finished by the other worker since this one read it

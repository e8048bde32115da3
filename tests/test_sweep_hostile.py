"""Multiruns against hostile input: two sweeps started in the same second, swept values that would
name a directory outside the sweep (or one too long to create), and an Optuna study with failed trials."""
from __future__ import annotations

import datetime
import importlib.util
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import hydra.core.utils
import pytest
from hydra import compose, initialize_config_dir

from mlpkit.new_dirs import NAME_MAX_BYTES, job_dirname, register_resolvers
from tests.conftest import CONFIG_DIR, IRIS
from tests.test_sweep import (
    RAY_ENV,
    group_override,
    job_dirs,
    multirun_command,
    multiruns_in_one_interpreter,
    needs,
    read_report,
)

SMALL = ["data=moons", "data.n_samples=200", "model.hidden_sizes=[8]"]


# --- two sweeps in the same second ---------------------------------------------------------------
def sweep_dir_of(*overrides: str) -> str:
    """hydra.sweep.dir as `python train.py -m <overrides>` resolves it."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    return str(cfg.hydra.sweep.dir)


@pytest.mark.parametrize("experiment", [None, "vanishing_gradients", "remedies"])
def test_sweeps_started_in_the_same_second_get_directories_of_their_own(tmp_path, monkeypatch, experiment):
    monkeypatch.chdir(tmp_path)
    register_resolvers()

    class SameSecond(datetime.datetime):  # Hydra's ${now:...}: both sweeps start in the same second
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 5, 1, 12, 0, 0)

    monkeypatch.setattr(hydra.core.utils, "datetime", SameSecond)
    overrides = [group_override("experiment", experiment)] if experiment else []
    first, second = sweep_dir_of(*overrides), sweep_dir_of(*overrides)
    wanted = f"multirun/{experiment}/2024-05-01_12-00-00" if experiment else "multirun/2024-05-01/12-00-00"
    assert (first, second) == (wanted, f"{wanted}_2")
    assert (tmp_path / first).is_dir() and (tmp_path / second).is_dir()  # taken at once: a third gets _3


@pytest.mark.slow
@needs["joblib"]
def test_two_sweeps_at_once_each_run_all_their_jobs_into_their_own_directory(tmp_path):
    # The same sweep directory asked for by both (as `multirun/<date>/<time>` is in the same second):
    # the resolver of configs/hydra/default.yaml, given the same value.
    wanted = tmp_path / "multirun" / "same-second"
    template = "hydra.sweep.dir=${mlpkit_sweep_dir:" + str(wanted) + "}"
    launchers = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **RAY_ENV}
    env.pop("HYDRA_FULL_ERROR", None)
    started = {}
    for name, launcher in launchers.items():
        command = [part for part in multirun_command(wanted, *SMALL, *launcher, "activation=relu,tanh")
                   if not part.startswith("hydra.sweep.dir=")] + [template]
        started[name] = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, env=env)
    outputs = {name: process.communicate(timeout=240)[0] for name, process in started.items()}
    for name, process in started.items():
        assert process.returncode == 0, f"{name}:\n{outputs[name][-3000:]}"
    sweep_dirs = sorted((tmp_path / "multirun").iterdir())
    assert [path.name for path in sweep_dirs] == ["same-second", "same-second_2"]
    for sweep_dir in sweep_dirs:
        names = job_dirs(sweep_dir)
        assert sorted(name.split("_", 1)[0] for name in names) == ["0", "1"], names
        rows = read_report(sweep_dir)
        assert sorted(row["overrides"] for row in rows) == ["activation=relu", "activation=tanh"]
        assert all(row["status"] == "completed" for row in rows)
    # each sweep printed the directory it ran in, with its own report
    reported = {name: next(str(d) for d in sweep_dirs if f"# Sweep {d}\n" in outputs[name]) for name in outputs}
    assert sorted(reported.values()) == [str(d) for d in sweep_dirs]


# --- job directories stay inside their sweep --------------------------------------------------------
def test_a_job_directory_name_is_one_name_inside_the_sweep_whatever_the_values():
    for hostile in ["0_data.path=../../etc/x.csv", "1_data.path=/abs/x.csv", "2_a=b\\c", "3_a=\n\t\x7f",
                    "..", ".", "-rf", ".hidden", "4_p=100%", "5_ü=ß/"]:
        name = job_dirname(hostile)
        assert "/" not in name and "\\" not in name and name not in (".", "..")
        assert not name.startswith((".", "-")) and name.isprintable()
        assert urllib.parse.unquote(name) == hostile  # nothing lost: %-quoting, reversed by unquote
    assert job_dirname("3_activation=tanh,model.hidden_sizes=[64,64]") == "3_activation=tanh,model.hidden_sizes=[64,64]"

    long_names = [f"0_data.path={'x' * 300}.csv", f"0_data.path={'x' * 300}.tsv", f"0_p={'ü' * 200}"]
    cut = [job_dirname(name) for name in long_names]
    assert len(set(cut)) == 3  # the hash of the whole name keeps apart names that share a long start
    assert all(len(name.encode()) <= NAME_MAX_BYTES for name in cut)
    assert all(name.startswith("0_data.path=xxxx") for name in cut[:2])
    cut[2].encode().decode()  # cut on a character boundary
    assert job_dirname("0_p=" + "%" * 300)[-20:-17] == "%25"  # and on an escape's boundary


LONG_PATH = "../../../data/" + "./" * 140 + "iris.csv"  # a valid path of over 300 characters


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The two multiruns below (each in a folder of its own), one after the other in one fresh interpreter:
    the folder and the command's output."""
    folders = {"paths": tmp_path_factory.mktemp("paths"), "study": tmp_path_factory.mktemp("study")}
    data_dir, work = folders["paths"] / "data", folders["paths"] / "a" / "b" / "c"
    (data_dir / "sub").mkdir(parents=True)
    work.mkdir(parents=True)
    shutil.copy(IRIS, data_dir / "iris.csv")
    shutil.copy(IRIS, data_dir / "sub" / "iris.csv")
    # three levels up: the first `..` of a job name `0_data.path=../../../data` is part of its first
    # component, the other two would have left the sweep
    commands = {"paths": (work / "sweep", ("data=csv", "data.target=species", "model.hidden_sizes=[8]",
                                           f"data.path=../../../data/iris.csv,../../../data/sub/iris.csv,{LONG_PATH}"))}
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
        # [8,0] is a config error: the trials that draw it fail, the study goes on (max_failure_rate 1.0)
        commands["study"] = (folders["study"] / "study", (
            group_override("hparams_search", "optuna"), "hydra.sweeper.n_trials=4", *SMALL[:2],
            "model.hidden_sizes=choice([8],[8,0])", "activation=relu", "model.dropout=0"))
    results = multiruns_in_one_interpreter(*commands.values())
    return {name: (folders[name], result) for name, result in zip(commands, results)}


@pytest.mark.slow
def test_swept_paths_with_dot_dot_and_over_255_bytes_stay_inside_the_sweep(sweeps):
    tmp_path, result = sweeps["paths"]
    data_dir, sweep_dir = tmp_path / "data", tmp_path / "a" / "b" / "c" / "sweep"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")
                     if data_dir not in path.parents and sweep_dir not in path.parents)
    assert written == ["a", "a/b", "a/b/c", "a/b/c/sweep", "data"]  # nothing outside the sweep
    assert sorted(path.name for path in data_dir.rglob("*")) == ["iris.csv", "iris.csv", "sub"]
    names = job_dirs(sweep_dir)
    assert len(names) == 3 and all(len(name.encode()) <= NAME_MAX_BYTES for name in names)
    assert names[0] == "0_data.path=..%2F..%2F..%2Fdata%2Firis.csv,data.target=species,data=csv," \
                       "model.hidden_sizes=[8],trainer.max_epochs=1"
    assert names[2].startswith("2_data.path=..%2F..%2F..%2Fdata%2F.%2F.%2F") and names[2][-17] == "~"
    rows = read_report(sweep_dir)
    assert len(rows) == 3 and all(row["status"] == "completed" for row in rows), rows
    assert "3 jobs, 0 not completed" in (sweep_dir / "sweep_report.md").read_text()


# --- an Optuna study with failed trials -----------------------------------------------------------
@pytest.mark.slow
@needs["optuna"]
def test_optuna_study_with_failed_trials_exits_1_after_writing_its_report(sweeps):
    folder, result = sweeps["study"]
    sweep_dir = folder / "study"
    output = result.stdout + result.stderr
    rows = read_report(sweep_dir)
    failed = [row for row in rows if row["status"].startswith("failed: ConfigError: model.hidden_sizes=[8,0]")]
    completed = [row for row in rows if row["status"] == "completed"]
    assert len(rows) == 4 and failed and completed, rows
    assert result.returncode == 1, output[-3000:]
    assert f"{len(failed)} of 4 jobs of this sweep did not complete" in output
    assert "| rank | overrides | val_loss |" in result.stdout  # the report was printed first

"""Multiruns for real: launchers, a failed job, an Optuna study interrupted and resumed, the report."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mlpkit.acceleration import parallel_jobs, torch_threads
from mlpkit.sweeps import write_report
from mlpkit.tensorboard import TensorBoardLogger
from tests.conftest import CONFIG_DIR, ROOT, ctrl_c_reaches_it, run_in_one_interpreter

TINY = ["trainer.progress=false", "trainer.device=cpu"]  # and trainer.max_epochs: see multirun_command
# Ray 2.5x turns on token authentication; a driver given an explicit address finds no token.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
CALLBACK = "++hydra.callbacks.sweep_report._target_=mlpkit.sweeps.SweepCallback"
needs = {name: pytest.mark.skipif(importlib.util.find_spec(module) is None,
                                  reason=f"{name} is not installed (pip install -e '.[{extra}]')")
         for name, module, extra in [("optuna", "hydra_plugins.hydra_optuna_sweeper", "sweep"),
                                     ("joblib", "hydra_plugins.hydra_joblib_launcher", "sweep"),
                                     ("submitit", "hydra_plugins.hydra_submitit_launcher", "slurm"),
                                     ("ray", "hydra_plugins.hydra_ray_launcher", "ray")]}


def group_override(group: str, choice: str) -> str:
    """``group=choice`` when train.yaml's defaults list has the group, else ``+group=choice``."""
    defaults = yaml.safe_load((CONFIG_DIR / "train.yaml").read_text())["defaults"]
    listed = any(isinstance(entry, dict) and group in entry for entry in defaults)
    return f"{group}={choice}" if listed else f"+{group}={choice}"


def multirun_command(sweep_dir: Path, *overrides: str, epochs: int = 1) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "-m", f"hydra.sweep.dir={sweep_dir}", CALLBACK,
            f"trainer.max_epochs={epochs}", *TINY, *overrides]


def multirun(sweep_dir: Path, *overrides: str, timeout: int = 240, epochs: int = 1) -> subprocess.CompletedProcess:
    """``python train.py -m ...`` in a temporary directory, its sweep directory pinned."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **RAY_ENV}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(multirun_command(sweep_dir, *overrides, epochs=epochs), cwd=sweep_dir.parent,
                          check=False, capture_output=True, text=True, timeout=timeout, env=env)


def multiruns_in_one_interpreter(*sweeps: tuple[Path, tuple[str, ...]], epochs: int = 1
                                 ) -> list[subprocess.CompletedProcess]:
    """``python train.py -m ...`` per (sweep directory, overrides), as ``multirun`` runs it, one after another
    in one fresh interpreter (``run_in_one_interpreter``): its start-up is paid once. Real processes
    of their own: test_sweep.py's multiruns, two sweeps at once, an interrupted study."""
    return run_in_one_interpreter([(multirun_command(sweep_dir, *overrides, epochs=epochs)[1:], sweep_dir.parent)
                                   for sweep_dir, overrides in sweeps], env=RAY_ENV)


def read_report(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "sweep_report.csv", newline="") as file:
        return list(csv.DictReader(file))


def job_dirs(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


def assert_completed_sweep(sweep_dir: Path, result: subprocess.CompletedProcess, n_jobs: int) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_report(sweep_dir)
    assert len(rows) == n_jobs and all(row["status"] == "completed" for row in rows)
    assert all((sweep_dir / name / "metrics.json").exists() for name in job_dirs(sweep_dir))
    assert "| rank | overrides | val_loss |" in result.stdout  # the table went to the terminal


# --- basic launcher: names, failed jobs, the report --------------------------------------------
@pytest.mark.slow
def test_multirun_names_jobs_by_overrides_reports_failures_and_runs_the_rest(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, "activation=relu,sigmoid", "model.hidden_sizes=[8,8,8],[8,0]",
                      "trainer.seed=3")
    # Hydra's basic sweeper runs the whole batch, then exits 1 because a job failed.
    assert result.returncode == 1
    names = job_dirs(sweep_dir)
    # <job number>_<overrides>: what ran, told apart by the number
    assert sorted(name.split("_", 1)[0] for name in names) == ["0", "1", "2", "3"]
    assert any(name.endswith("_activation=sigmoid,model.hidden_sizes=[8,8,8],trainer.max_epochs=1,trainer.seed=3")
               for name in names)
    statuses = {name: json.loads((sweep_dir / name / "job_status.json").read_text())["status"]
                for name in names}
    assert sorted(statuses.values()) == ["completed", "completed", "failed", "failed"]

    rows = read_report(sweep_dir)
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    completed, failed = rows[:2], rows[2:]
    assert {row["overrides"] for row in completed} == {"activation=relu,model.hidden_sizes=[8,8,8]",
                                                       "activation=sigmoid,model.hidden_sizes=[8,8,8]"}
    assert float(completed[0]["val_loss"]) <= float(completed[1]["val_loss"])
    assert all(row["gradients"] and float(row["wall_s"]) > 0 for row in completed)
    assert all(row["status"].startswith("failed: ConfigError: model.hidden_sizes=[8,0]") and
               row["val_loss"] == "" for row in failed)
    markdown = (sweep_dir / "sweep_report.md").read_text()
    assert markdown.count("| failed: ConfigError") == 2
    assert (sweep_dir / "sweep_report_grad_norms.png").stat().st_size > 0

    # On demand, from the directory alone: the same table.
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep_report.py"), str(sweep_dir)],
                           check=False, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert read_report(sweep_dir) == rows
    assert "| rank | overrides |" in again.stdout


def sweep_report_script():
    """scripts/sweep_report.py as a module: its main() in-process (the real command runs above)."""
    spec = importlib.util.spec_from_file_location("sweep_report", ROOT / "scripts" / "sweep_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_script_names_a_directory_that_is_not_a_sweep(tmp_path, capsys):
    assert sweep_report_script().main([str(tmp_path)]) == 2
    assert "is not valid: expected a multirun directory" in capsys.readouterr().err


def write_job(sweep_dir: Path, name: str, overrides: list[str], metrics: dict | None) -> None:
    """A job directory as a run leaves it: its overrides and (unless None) its metrics.json."""
    job = sweep_dir / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def gradient_health(verdicts: dict, grad_norms: list[float], judged: bool = True) -> dict:
    """metrics.json's ``gradient_health``: the run's verdicts, made once, and its last measurement."""
    health = {"judged": judged, "healthy": (not verdicts) if judged else None, "measurements": 57,
              "verdicts": {kind: {"step": 40, "message": f"gradients are {kind}: ..."} for kind in verdicts},
              "last": {"step": 380, "layers": {f"linear{i + 1}": {"grad_norm": norm, "grad_ratio": norm / grad_norms[-1]}
                                               for i, norm in enumerate(grad_norms)}}}
    return health if judged else {**health, "reason": "too few measurements"}


def test_report_shows_the_runs_own_gradient_verdicts(tmp_path):
    for name, loss, health in [
            ("0_activation=relu", 0.3, gradient_health([], [0.5, 0.4, 0.3])),
            ("1_activation=sigmoid", 0.1, gradient_health(["vanishing", "dead"], [1e-6, 1e-3, 0.2])),
            ("2_activation=tanh", 0.2, gradient_health([], [0.5, 0.4, 0.3], judged=False))]:
        write_job(tmp_path, name, [name.split("_", 1)[1]],
                  {"val": {"loss": loss}, "test": {"loss": 1.0}, "wall_seconds": 1.5, "gradient_health": health})
    write_job(tmp_path, "3_activation=elu", ["activation=elu"], None)  # killed before it wrote anything
    text = write_report(tmp_path, "loss", "min")
    rows = read_report(tmp_path)
    assert [row["overrides"] for row in rows] == ["activation=sigmoid", "activation=tanh", "activation=relu",
                                                  "activation=elu"]
    assert [row["gradients"] for row in rows] == ["vanishing, dead", "not judged", "healthy", ""]
    assert "| vanishing, dead |" in text
    # drawn from metrics.json alone: these jobs have no event files to fall back on
    assert (tmp_path / "sweep_report_grad_norms.png").stat().st_size > 0


# --- HParams (every job of a real multirun has its row: test_sweep_repeats.py) ---------------------
def test_log_hparams_writes_into_the_runs_own_event_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    logger = TensorBoardLogger(tmp_path)
    logger.log_hparams({"activation": "tanh", "hidden_sizes": "[64,64]", "lr": 0.01, "depth": 2},
                       {"final/val_loss": 0.25, "final/val_accuracy": 0.9}, step=7)
    logger.close()
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []  # no sub-run as add_hparams makes

    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    plugin_data = {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}
    session = next(d.session_start_info for d in plugin_data.values() if d.HasField("session_start_info"))
    assert session.hparams["activation"].string_value == "tanh"
    assert session.hparams["hidden_sizes"].string_value == "[64,64]"
    assert session.hparams["lr"].number_value == pytest.approx(0.01)
    experiment = next(d.experiment for d in plugin_data.values() if d.HasField("experiment"))
    assert {m.name.tag for m in experiment.metric_infos} == {"final/val_loss", "final/val_accuracy"}
    assert accumulator.Scalars("final/val_loss")[-1].step == 7
    assert accumulator.Scalars("final/val_loss")[-1].value == pytest.approx(0.25)


# --- threads per job ---------------------------------------------------------------------------
def test_jobs_times_threads_do_not_exceed_the_cores():
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    assert parallel_jobs({**joblib, "n_jobs": 4}, cores=16) == 4
    assert parallel_jobs({**joblib, "n_jobs": -1}, cores=16) == 16
    assert torch_threads("auto", {**joblib, "n_jobs": 4}, cores=16) == 4
    assert torch_threads("auto", {**joblib, "n_jobs": 3}, cores=16) == 5
    assert torch_threads("auto", {**joblib, "n_jobs": 32}, cores=16) == 1
    assert torch_threads("auto", {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
                         cores=16) is None
    submitit = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                "cpus_per_task": 6}
    assert torch_threads("auto", submitit, cores=64) == 6
    assert torch_threads(3, {**joblib, "n_jobs": 4}, cores=16) == 3


# --- launchers ---------------------------------------------------------------------------------
@needs["joblib"]
def assert_bad_jobs_failed_alone(sweep_dir: Path, result: subprocess.CompletedProcess, bad: str,
                                 n_jobs: int) -> None:
    """Jobs whose overrides hold ``bad`` failed with their one-line error; every other job completed."""
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_report(sweep_dir)
    assert len(rows) == n_jobs
    for row in rows:
        expected = f"failed: ConfigError: {bad}" if bad in row["overrides"] else "completed"
        assert row["status"].startswith(expected), row


@pytest.mark.slow
@needs["joblib"]
def test_joblib_runs_jobs_in_parallel_and_reports_a_failed_one(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      "activation=relu,sigmoid", "model.hidden_sizes=[8],[8,0]")
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    # the failed job's error came back from its worker process whole
    assert_bad_jobs_failed_alone(sweep_dir, result, "model.hidden_sizes=[8,0]", 4)


@pytest.mark.slow
@needs["submitit"]
def test_submitit_local_runs_the_slurm_path_on_this_machine(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
                      "hydra.launcher.timeout_min=5", "activation=relu,tanh", "model.hidden_sizes=[8]")
    assert_completed_sweep(sweep_dir, result, 2)
    assert (sweep_dir / ".submitit").is_dir()


# --- Optuna ------------------------------------------------------------------------------------
@pytest.mark.slow
@needs["optuna"]
def test_optuna_study_is_interrupted_and_resumed_from_its_sqlite_storage(tmp_path):
    import optuna

    sweep_dir = tmp_path / "study"
    overrides = [group_override("hparams_search", "optuna"), "hydra.sweeper.n_trials=4",
                 "model.hidden_sizes=choice([8],[8,8])", "activation=choice(relu,tanh,sigmoid)"]
    # Trials of 20 epochs, about a second each: with one-epoch trials (0.2 s) the rest of the study
    # once finished, on CI's loaded machine, between this test seeing the second trial start and its
    # Ctrl-C landing.
    epochs = 20
    command = multirun_command(sweep_dir, *overrides, epochs=epochs)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env, preexec_fn=ctrl_c_reaches_it)
    deadline = time.monotonic() + 120
    while first.poll() is None and time.monotonic() < deadline:
        if len(list(sweep_dir.glob("*/.hydra"))) >= 2:  # the second trial has started
            first.send_signal(signal.SIGINT)  # Ctrl-C
            break
        time.sleep(0.05)
    output, _ = first.communicate(timeout=60)
    assert first.returncode != 0, "the study finished before it could be interrupted:\n" + output[-3000:]

    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    interrupted = optuna.load_study(study_name="mlp_digits", storage=storage)
    finished_before = sum(t.state.is_finished() for t in interrupted.trials)
    assert 1 <= finished_before < 4

    second = multirun(sweep_dir, *overrides, epochs=epochs)  # the very same command
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"has {finished_before} finished trials of 4: running {4 - finished_before} more" in (
        second.stdout + second.stderr)
    study = optuna.load_study(study_name="mlp_digits", storage=storage)
    states = [(t.number, t.state.name, t.params.get("activation")) for t in study.trials]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 4, states
    assert {"optimizer.lr", "model.dropout", "model.hidden_sizes", "activation"} <= set(study.best_params)
    assert 1e-4 <= study.best_params["optimizer.lr"] <= 1e-1
    rows = read_report(sweep_dir)
    # four completed job directories: a trial proposed twice would have overwritten another's
    assert sum(row["status"] == "completed" for row in rows) == 4
    best = min(float(row["val_loss"]) for row in rows if row["val_loss"])
    assert best == pytest.approx(study.best_value, rel=1e-3)
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").best_value == pytest.approx(
        study.best_value)

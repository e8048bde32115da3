"""Seeds and fair comparisons: every job its own directory and TensorBoard run, repeats pooled per
configuration (mean ± std, n) and the difference to the best one put to Welch's t-test."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
import statistics
import subprocess
from pathlib import Path

import pytest
from scipy.stats import ttest_ind

import mlpkit
from mlpkit.sweeps import write_report
from tests.test_sweep import (
    gradient_health,
    group_override,
    job_dirs,
    multiruns_in_one_interpreter,
    needs,
    read_report,
    write_job,
)

SMALL = ["model.hidden_sizes=[8]"]
COMPARISON = re.compile(r"activation=(\w+) vs activation=(\w+): val_loss (\S+) vs (\S+), Welch t-test "
                        r"p=(\S+): (a real difference|not distinguishable from seed noise) at the 5% level")


def read_grouped(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with open(sweep_dir / "sweep_report_grouped.csv", newline="") as file:
        return {row["configuration"]: row for row in csv.DictReader(file)}


def assert_one_directory_and_one_tensorboard_run_per_job(sweep_dir: Path, n_jobs: int) -> list[Path]:
    """No two jobs share a directory, and TensorBoard lists exactly one run per job (none for the root)."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    names = job_dirs(sweep_dir)
    assert len(names) == n_jobs, names
    assert all((sweep_dir / name / "metrics.json").exists() for name in names)
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep_dir)).Runs()
    assert sorted(runs) == names
    return [sweep_dir / name for name in names]


def hparams_of(job_dir: Path) -> dict:
    """The HParams row a job logged, as TensorBoard's HParams tab reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulator = EventAccumulator(str(job_dir))
    accumulator.Reload()
    for raw in accumulator.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            return dict(data.session_start_info.hparams)
    raise AssertionError(f"no HParams in {job_dir}")


def scalar_tags(job_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(job_dir))
    accumulator.Reload()
    return accumulator.Tags()["scalars"]


def val_losses(jobs: list[Path], activation: str) -> list[float]:
    return [json.loads((job / "metrics.json").read_text())["val"]["loss"] for job in jobs
            if f"activation={activation}" in job.name]


# --- real multiruns ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The multiruns below, one after the other in one fresh interpreter: each one's sweep directory and output."""
    base = tmp_path_factory.mktemp("sweeps")
    commands = {"seeds": (base / "sweep", ("trainer.seed=0,1,2", *SMALL))}
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
        # three trials over two choices: at least two trials share every override
        commands["twice"] = (base / "study", (group_override("hparams_search", "optuna"), "hydra.sweeper.n_trials=3",
                                              "activation=choice(relu,tanh)", "optimizer.lr=0.01", "model.dropout=0.0",
                                              *SMALL))
    results = multiruns_in_one_interpreter(*commands.values())
    return {name: (sweep_dir, result) for (name, (sweep_dir, _)), result in zip(commands.items(), results)}


@pytest.mark.slow
def test_a_sweep_over_seeds_alone_gives_each_seed_its_own_run_and_pools_them(sweeps):
    sweep_dir, result = sweeps["seeds"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = assert_one_directory_and_one_tensorboard_run_per_job(sweep_dir, 3)
    assert sorted(job.name.split("trainer.seed=")[1] for job in jobs) == ["0", "1", "2"]
    # every job has its HParams row, the seed a column of TensorBoard's HParams table, and its final scalars
    assert sorted(hparams_of(job)["seed"].number_value for job in jobs) == [0, 1, 2]
    assert all("final/val_loss" in scalar_tags(job) for job in jobs)
    assert "| rank | overrides | val_loss |" in result.stdout  # the table went to the terminal
    assert all(row["status"] == "completed" for row in read_report(sweep_dir))

    assert len(read_report(sweep_dir)) == 3  # the per-job table keeps one row per job
    (pooled,) = read_grouped(sweep_dir).values()
    assert pooled["n"] == "3" and pooled["seeds"] == "0,1,2" and pooled["status"] == "completed 3/3"
    losses = [json.loads((job / "metrics.json").read_text())["val"]["loss"] for job in jobs]
    assert float(pooled["val_loss"]) == pytest.approx(statistics.mean(losses), rel=1e-3)
    assert float(pooled["val_loss_std"]) == pytest.approx(statistics.stdev(losses), rel=1e-2)
    assert re.search(r"\| 1 \| \(none\) \| 3 \| 0,1,2 \| \S+ ± \S+ \|", result.stdout)
    assert (sweep_dir / "sweep_report_val_curves.png").stat().st_size > 0


@pytest.mark.slow
def test_seeds_crossed_with_another_key_are_compared_with_welchs_t_test(tmp_path):
    # mlpkit.sweep: the same jobs and report as `python train.py -m activation=relu,tanh trainer.seed=0,1`
    # (the real multiruns above and in test_sweep.py), in this process
    sweep_dir = tmp_path / "sweep"
    tiny = ["trainer.max_epochs=1", "model.hidden_sizes=[16]", "trainer.device=cpu", "trainer.progress=false"]
    result = mlpkit.sweep({"activation": ["relu", "tanh"], "trainer.seed": [0, 1]}, overrides=tiny,
                          sweep_dir=sweep_dir)
    jobs = assert_one_directory_and_one_tensorboard_run_per_job(sweep_dir, 4)
    # the Python API's sweep: its runs named as `python train.py -m` names its jobs, its table and report
    assert [run.dir.name for run in result.runs] == [
        f"{number}_activation={activation},model.hidden_sizes=[16],trainer.max_epochs=1,trainer.seed={seed}"
        for number, (activation, seed) in enumerate([("relu", 0), ("relu", 1), ("tanh", 0), ("tanh", 1)])]
    assert all(run.metrics["status"] == "completed" for run in result.runs) and not result.failed
    assert result.runs[2].config.activation.name == "tanh" and result.runs[1].config.trainer.seed == 1
    table = result.table
    assert len(table) == 4 and list(table["rank"]) == [1, 2, 3, 4]
    assert set(table["overrides"]) == {f"activation={a},trainer.seed={s}" for a in ("relu", "tanh") for s in (0, 1)}
    assert (sweep_dir / "sweep_report.md").read_text() == result.report
    assert "Per configuration: mean ± std over its seeds" in result.report  # the seeds pooled
    assert json.loads((result.runs[0].dir / "job_status.json").read_text())["status"] == "completed"

    grouped = read_grouped(sweep_dir)
    assert set(grouped) == {"activation=relu", "activation=tanh"}
    assert all(row["n"] == "2" and row["seeds"] == "0,1" for row in grouped.values())
    best, other = sorted(grouped.values(), key=lambda row: float(row["val_loss"]))
    expected = ttest_ind(val_losses(jobs, best["configuration"].split("=")[1]),
                         val_losses(jobs, other["configuration"].split("=")[1]), equal_var=False).pvalue
    assert best["welch_p_vs_best"] == "" and float(other["welch_p_vs_best"]) == pytest.approx(expected, rel=0.05)
    (sentence,) = COMPARISON.findall((sweep_dir / "sweep_report.md").read_text())
    assert f"activation={sentence[0]}" == best["configuration"]
    assert float(sentence[4]) == pytest.approx(expected, rel=0.05)
    assert sentence[5] == ("a real difference" if expected < 0.05 else "not distinguishable from seed noise")


@pytest.mark.slow
@needs["optuna"]
def test_optuna_trials_proposed_twice_still_get_their_own_directories(sweeps):
    sweep_dir, result = sweeps["twice"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_one_directory_and_one_tensorboard_run_per_job(sweep_dir, 3)
    assert len(read_report(sweep_dir)) == 3


# --- the report from job directories alone ------------------------------------------------------
VAL_LOSSES = {"relu": [0.20, 0.21, 0.22, 0.19, 0.23], "sigmoid": [0.21, 0.24, 0.19, 0.20, 0.25],
              "tanh": [0.35, 0.36, 0.34, 0.37, 0.33]}


def write_seed_sweep(sweep_dir: Path) -> None:
    """Three activations x five seeds; sigmoid's gradients vanish in every run, die in two."""
    for number, (activation, seed) in enumerate((a, s) for a in VAL_LOSSES for s in range(5)):
        loss = VAL_LOSSES[activation][seed]
        verdicts = (["vanishing"] + (["dead"] if seed < 2 else [])) if activation == "sigmoid" else []
        history = [{"epoch": 1, "step": 20, "loss/train_epoch": 1.0, "loss/val": loss + 0.3, "accuracy/val": 0.5},
                   {"epoch": 2, "step": 40, "loss/train_epoch": 0.5, "loss/val": loss, "accuracy/val": 0.8}]
        write_job(sweep_dir, f"{number}_activation={activation},trainer.seed={seed}",
                  [f"activation={activation}", f"trainer.seed={seed}", "trainer.max_epochs=2"],
                  {"status": "completed", "val": {"loss": loss}, "test": {"loss": loss + 0.01},
                   "wall_seconds": 2.0, "history": history,
                   "gradient_health": gradient_health(verdicts, [1e-3, 0.1])})


def test_report_pools_each_configurations_seeds_and_says_which_differences_are_real(tmp_path):
    write_seed_sweep(tmp_path)
    text = write_report(tmp_path, "loss", "min")

    assert len(read_report(tmp_path)) == 15
    grouped = read_grouped(tmp_path)
    assert list(grouped) == ["activation=relu", "activation=sigmoid", "activation=tanh"]  # best mean first
    for activation, losses in VAL_LOSSES.items():
        row = grouped[f"activation={activation}"]
        assert (row["n"], row["seeds"]) == ("5", "0,1,2,3,4")
        assert float(row["val_loss"]) == pytest.approx(statistics.mean(losses), rel=1e-3)
        assert float(row["val_loss_std"]) == pytest.approx(statistics.stdev(losses), rel=1e-2)
    assert grouped["activation=sigmoid"]["gradients"] == "vanishing 5/5, dead 2/5"
    assert grouped["activation=relu"]["gradients"] == "healthy 5/5"

    assert "| activation=relu | 5 | 0,1,2,3,4 | 0.21 ± 0.016 |" in text
    comparisons = {(best, other): (p_value, verdict)
                   for best, other, _, _, p_value, verdict in COMPARISON.findall(text)}
    assert set(comparisons) == {("relu", "sigmoid"), ("relu", "tanh")}
    for other, verdict in [("sigmoid", "not distinguishable from seed noise"), ("tanh", "a real difference")]:
        expected = ttest_ind(VAL_LOSSES["relu"], VAL_LOSSES[other], equal_var=False).pvalue
        assert float(comparisons["relu", other][0]) == pytest.approx(expected, rel=0.05)
        assert comparisons["relu", other][1] == verdict
    assert "relu vs activation=tanh: val_loss 0.21±0.016 vs 0.35±0.016, Welch t-test p=" in text
    assert (tmp_path / "sweep_report_val_curves.png").stat().st_size > 0
    assert "![val_loss per configuration, mean over seeds ± std](sweep_report_val_curves.png)" in text


@pytest.mark.slow
def test_without_repeats_the_report_makes_no_claim_about_noise(tmp_path):
    for number, (activation, loss) in enumerate([("relu", 0.2), ("tanh", 0.3)]):
        write_job(tmp_path, f"{number}_activation={activation}", [f"activation={activation}"],
                  {"val": {"loss": loss}, "gradient_health": gradient_health([], [0.1, 0.1])})
    text = write_report(tmp_path, "loss", "min")
    assert "Welch" not in text and "Per configuration" not in text
    assert [row["n"] for row in read_grouped(tmp_path).values()] == ["1", "1"]

"""The benchmark runs and reports every way against the plain loop (no timing is asserted)."""
import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCHMARK = [sys.executable, str(ROOT / "scripts" / "benchmark.py")]


@pytest.mark.slow
def test_benchmark_reports_ratios_to_the_plain_loop_and_start_up_times(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run([*BENCHMARK, "--workloads", "digits", "--rounds", "1", "--epochs", "2", "--startup",
                             "--trackers", "--output", str(output)], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    ways = report["results"][0]["ways"]
    assert {"plain", "plain_logged", "mlpkit", "mlpkit_unfused", "mlpkit_nodiag"} <= set(ways)
    assert "mlpkit_cuda_graphs" not in ways  # CUDA only
    assert ways["plain"]["ratio_to_plain"] == 1.0
    assert report["results"][0]["epochs_per_round"] == 2  # --epochs overrides the workload's 50
    assert all(low <= way["ratio_to_plain"] <= high for way in ways.values() for low, high in [way["ratio_range"]])
    assert all(way["samples_per_second"] > 0 for way in ways.values())
    assert "diagnostics_cost" in ways["mlpkit_unfused"]
    assert -1 < ways["mlpkit_trackers"]["trackers_cost"] < 1  # tensorboard+csv+mlflow against mlpkit, paired
    assert "tensorboard+csv+mlflow cost" in result.stdout
    assert "mlpkit_unfused" in result.stdout and "ratio" in result.stdout
    startup = report["startup_seconds"]
    assert startup["train_zero_epochs"] > startup["import_torch"] > 0
    assert "start-up, median seconds" in result.stdout


BAD_ARGUMENTS = [
    (["--rounds", "0"], "--rounds 0: must be at least 1"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--workloads", "wide"], "--workloads wide runs on CUDA only (--device cuda); this run asked for cpu"),
]


@pytest.mark.parametrize("arguments, message", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_in_one_line_before_any_timing(monkeypatch, capsys, arguments, message):
    benchmark = load_benchmark_module()
    monkeypatch.setattr(benchmark, "benchmark", lambda *args, **kwargs: pytest.fail("timed a workload"))
    monkeypatch.setattr(sys, "argv", ["benchmark.py", *arguments])
    with pytest.raises(SystemExit) as stop:
        benchmark.main()  # what the script runs, in-process
    assert stop.value.code == 2
    assert f"error: {message}\n" in capsys.readouterr().err


@pytest.mark.slow
def test_the_wide_workload_asks_for_cuda():
    result = subprocess.run([*BENCHMARK, "--workloads", "wide"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--workloads wide runs on CUDA only (--device cuda); this run asked for cpu" in result.stderr


def load_benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ratios_pair_each_round_with_the_same_rounds_plain_loop():
    benchmark = load_benchmark_module()
    # The machine ran at half speed in round 2; each way kept its share of the plain loop's speed.
    per_second = {"plain": [100, 50, 100], "mlpkit_unfused": [96, 48, 94], "mlpkit_nodiag": [100, 50, 97]}
    summary = benchmark.summarize({way: [{"samples_per_second": s} for s in values]
                                   for way, values in per_second.items()})
    assert summary["mlpkit_unfused"]["ratio_to_plain"] == pytest.approx(0.96)  # not 94/100 of the medians
    assert summary["mlpkit_unfused"]["ratio_range"] == pytest.approx([0.94, 0.96])
    assert summary["mlpkit_nodiag"]["samples_per_second"] == 97
    assert summary["mlpkit_unfused"]["diagnostics_cost"] == pytest.approx(1 - 96 / 100)  # median of 4%, 4%, 3.1%


def test_step_cost_is_what_the_monitor_adds_to_a_logged_step_over_the_run_without_it():
    benchmark = load_benchmark_module()
    # 100 steps, 25 logged: without the monitor a step takes 10 ms and a logged step 1 ms more; the
    # monitor's run was slower as a whole (a busy machine) but its logged steps cost 3 ms over its others.
    without = {"logged_step_extra_seconds": 0.001, "other_step_seconds": 0.010, "logged_steps": 25, "steps": 100}
    with_monitor = {**without, "logged_step_extra_seconds": 0.003, "other_step_seconds": 0.012}
    assert benchmark.step_cost((with_monitor, without)) == pytest.approx(25 * 0.002 / (100 * 0.010 + 25 * 0.001))


def test_trimmed_mean_drops_the_tails():
    benchmark = load_benchmark_module()
    assert benchmark.trimmed_mean([1.0] * 4 + [2.0] * 4 + [100.0, -100.0]) == pytest.approx(1.5)


def test_end_to_end_pairs_each_command_with_its_baseline_of_the_same_round():
    benchmark = load_benchmark_module()
    # Round 2 ran on a machine twice as slow: every command took twice as long.
    times = {"train": [6.0, 12.0, 6.6], "plain_script": [5.0, 10.0, 6.0],
             "train_first_run": [7.0, 14.0, 7.0], "plain_script_again": [5.0, 10.0, 5.0],
             "train_zero_epochs": [3.0, 6.0, 3.2], "torch_model_optimizer": [2.5, 5.0, 2.5],
             "train_help": [1.0, 2.0, 1.1], "hydra_app_help": [0.8, 1.6, 0.8],
             "train_cfg_job": [1.0, 2.0, 1.0], "hydra_app_cfg_job": [0.9, 1.8, 0.9]}
    comparisons = benchmark.compare_end_to_end(times)
    train = comparisons["train_vs_plain_script"]
    assert train["kind"] == "ratio" and train["median"] == pytest.approx(1.2)  # 1.2, 1.2, 1.1
    assert train["range"] == pytest.approx([1.1, 1.2])
    zero = comparisons["train_zero_epochs_vs_torch_model_optimizer"]
    assert zero["kind"] == "seconds_over" and zero["median"] == pytest.approx(0.7)  # 0.5, 1.0, 0.7
    assert zero["median_ratio"] == pytest.approx(1.2)
    assert comparisons["train_first_run_vs_plain_script_again"]["median"] == pytest.approx(1.4)
    assert set(comparisons) == {"train_vs_plain_script", "train_first_run_vs_plain_script_again",
                                "train_zero_epochs_vs_torch_model_optimizer",
                                "train_help_vs_hydra_app_help", "train_cfg_job_vs_hydra_app_cfg_job"}


def test_end_to_end_mode_times_whole_commands_and_no_workload(monkeypatch, capsys, tmp_path):
    benchmark = load_benchmark_module()
    monkeypatch.setattr(benchmark, "benchmark", lambda *args, **kwargs: pytest.fail("timed a workload"))
    times = {name: [1.0] for name in ("train", "plain_script", "train_first_run", "plain_script_again",
                                      "train_zero_epochs", "torch_model_optimizer",
                                      "train_help", "hydra_app_help", "train_cfg_job", "hydra_app_cfg_job")}
    monkeypatch.setattr(benchmark, "end_to_end", lambda rounds: {
        "rounds": rounds, "median_seconds": {k: v[0] for k, v in times.items()}, "seconds": times,
        "comparisons": benchmark.compare_end_to_end(times)})
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--end-to-end", "--rounds", "2",
                                      "--output", str(tmp_path / "e2e.json")])
    benchmark.main()
    out = capsys.readouterr().out
    assert "end to end, whole commands, median wall seconds of 2 paired rounds" in out
    assert "train_vs_plain_script" in out and "1.000x" in out
    report = json.loads((tmp_path / "e2e.json").read_text())
    assert report["end_to_end"]["comparisons"]["train_help_vs_hydra_app_help"]["median"] == 0.0


@pytest.mark.slow
def test_the_plain_script_does_the_default_runs_job(tmp_path):
    """The end-to-end baseline trains 20 epochs and writes what the comparison says it writes."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    benchmark = load_benchmark_module()
    commands = benchmark.end_to_end_commands(tmp_path)
    result = subprocess.run(commands["plain_script"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "epoch 20/20" in result.stdout
    events = EventAccumulator(str(tmp_path / "plain_events"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/train")] == [0, 50, 100, 150, 200, 250, 300, 350]  # 400 steps
    assert {"grad_norm/0.weight", "grad_norm/2.weight", "grad_norm/4.weight"} <= set(events.Tags()["scalars"])
    accuracy = events.Scalars("accuracy/val")
    assert len(accuracy) == 20 and accuracy[-1].value > 0.9


@pytest.mark.slow
def test_end_to_end_times_every_command_once_a_round_after_a_warm_up_round(monkeypatch, tmp_path):
    benchmark = load_benchmark_module()
    names = ["train", "plain_script", "train_first_run", "plain_script_again", "train_zero_epochs",
             "torch_model_optimizer", "train_help", "hydra_app_help", "train_cfg_job", "hydra_app_cfg_job", "python",
             "import_hydra"]
    log = tmp_path / "ran.txt"
    monkeypatch.setattr(benchmark, "end_to_end_commands", lambda directory: {
        name: [sys.executable, "-c", f"import os; open({str(log)!r}, 'a').write({name!r} + ' ' + "
                                     f"os.environ['MLPKIT_CACHE_DIR'] + ' ')"] for name in names})
    report = benchmark.end_to_end(rounds=2)
    words = log.read_text().split()
    ran, caches = words[::2], dict(zip(words[::2], words[1::2]))
    assert len(ran) == 3 * len(names) and set(ran) == set(names)  # the warm-up round is run, not counted
    assert ran.index("plain_script") == ran.index("train") + 1  # a command right next to its baseline
    assert all(len(seconds) == 2 for seconds in report["seconds"].values())
    # the default run reads a data cache an earlier round filled; the first run starts with an empty one
    assert caches["train"] == caches["train_zero_epochs"] and caches["train_first_run"] != caches["train"]
    assert set(report["comparisons"]) == {f"{t}_vs_{b}" for t, b, _ in benchmark.END_TO_END_PAIRS}

"""The benchmark runs and reports every way against the plain loop (no timing is asserted)."""
import json
import subprocess
import sys

from tests.conftest import ROOT

BENCHMARK = [sys.executable, str(ROOT / "scripts" / "benchmark.py")]


def test_benchmark_reports_ratios_to_the_plain_loop_and_start_up_times(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run([*BENCHMARK, "--workloads", "digits", "--rounds", "1", "--startup",
                             "--output", str(output)], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    ways = report["results"][0]["ways"]
    assert {"plain", "mlpkit", "mlpkit_unfused", "mlpkit_nodiag"} <= set(ways)
    assert "mlpkit_cuda_graphs" not in ways  # CUDA only
    assert ways["plain"]["ratio_to_plain"] == 1.0
    assert all(way["samples_per_second"] > 0 for way in ways.values())
    assert "diagnostics_cost" in ways["mlpkit_unfused"]
    assert "mlpkit_unfused" in result.stdout and "ratio" in result.stdout
    startup = report["startup_seconds"]
    assert startup["train_zero_epochs"] > startup["import_torch"] > 0
    assert "start-up, median seconds" in result.stdout


def test_the_wide_workload_asks_for_cuda():
    result = subprocess.run([*BENCHMARK, "--workloads", "wide"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--workloads wide runs on CUDA only (--device cuda); this run asked for cpu" in result.stderr

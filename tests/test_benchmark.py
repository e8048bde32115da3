"""The benchmark runs and reports every way against the plain loop (no timing is asserted)."""
import json
import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_reports_ratios_to_the_plain_loop(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--workloads", "digits",
                             "--rounds", "1", "--output", str(output)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    ways = report["results"][0]["ways"]
    assert {"plain", "mlpkit", "mlpkit_nodiag"} <= set(ways)
    assert ways["plain"]["ratio_to_plain"] == 1.0
    assert all(way["samples_per_second"] > 0 for way in ways.values())
    assert "diagnostics_cost" in ways["mlpkit"]
    assert "mlpkit" in result.stdout and "ratio" in result.stdout

"""scripts/benchmark_sklearn.py fits both estimators on each data set and reports them (no timing is asserted)."""
import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCHMARK = [sys.executable, str(ROOT / "scripts" / "benchmark_sklearn.py")]


@pytest.mark.slow
def test_both_estimators_are_reported_for_each_data_set_in_json_and_markdown(tmp_path):
    output = tmp_path / "numbers.json"
    result = subprocess.run([*BENCHMARK, "--epochs", "2", "--seeds", "1", "--rows", "600", "--datasets", "digits",
                             "synthetic", "--markdown", "--json", str(output)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    assert list(report["datasets"]) == ["digits", "synthetic"]
    assert report["datasets"]["synthetic"]["rows"] == 600
    assert "not real data" in report["datasets"]["synthetic"]["source"]
    for result_of_set in report["datasets"].values():
        estimators = result_of_set["estimators"]
        assert set(estimators) == {"mlpkit", "sklearn"}
        for summary in estimators.values():
            assert 0.0 <= summary["accuracy_mean"] <= 1.0
            assert summary["fit_seconds_median"] > 0
            assert [run["epochs_run"] for run in summary["runs"]] == [2]  # neither stopped early
        assert estimators["mlpkit"]["runs"][0]["healthy"] in (True, False)
        assert result_of_set["time_ratio_mlpkit_to_sklearn"] > 0
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch_threads"] >= 1
    markdown = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert markdown[0].startswith("| data set |")
    assert [line.split(" | ")[0] for line in markdown[1:]] == ["| digits", "| synthetic (make_classification)"]
    assert "synthetic" in result.stdout and "generated, not real data" in result.stdout
    assert "torch" in result.stdout and "threads" in result.stdout


def load_benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_sklearn", ROOT / "scripts" / "benchmark_sklearn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arguments, message", [(["--seeds", "0"], "--seeds 0: must be at least 1"),
                                                (["--epochs", "0"], "--epochs 0: must be at least 1"),
                                                (["--rows", "10"], "--rows 10: must be at least 100")])
def test_a_bad_setting_is_refused_in_one_line_before_any_fit(monkeypatch, capsys, arguments, message):
    benchmark = load_benchmark_module()
    monkeypatch.setattr(benchmark, "measure", lambda args: pytest.fail("fitted an estimator"))
    with pytest.raises(SystemExit) as stop:
        benchmark.main(arguments)
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: {message}\n")

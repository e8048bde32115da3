"""The gradient verdicts at the default settings, from the real command line, on short runs.

No diagnostics or logging override anywhere: 3 epochs on digits, batch 32 to 128, seeds 0 to 4.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import python_c, run_cli_in_one_interpreter

DEEP = "model.hidden_sizes=[64,64,64,64,64,64,64,64]"
CASES = {  # name: (overrides, the verdicts the run must get, exactly)
    "deep sigmoid": ((DEEP, "activation=sigmoid", "trainer.batch_size=32", "trainer.seed=1"), ["vanishing"]),
    "deep relu kaiming": ((DEEP, "model.init=kaiming_normal", "trainer.seed=2"), []),
    "one-layer relu": (("model.hidden_sizes=[64]", "trainer.batch_size=128", "trainer.seed=3"), []),
    "relu adam lr 0.1": ((DEEP, "optimizer.lr=0.1", "trainer.batch_size=128", "trainer.seed=4"), ["dead"]),
    "tanh adam lr 0.1": ((DEEP, "activation=tanh", "optimizer.lr=0.1", "trainer.batch_size=64"), ["saturated"]),
    "tanh adam lr 1e-3": ((DEEP, "activation=tanh", "trainer.batch_size=32", "trainer.seed=4"), []),
    "sgd lr 1000": (("optimizer=sgd", "optimizer.lr=1000", "trainer.seed=0"), ["exploding"]),
}


TOO_SHORT = ("trainer.max_epochs=1", "trainer.batch_size=512", "trainer.progress=false")  # 3 steps: patience is 5


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, dict]]:
    """Every case, and the run too short to judge, trained once through train.py, one after another in one
    fresh interpreter (its start-up costs more than a case's run)."""
    base = tmp_path_factory.mktemp("verdicts")
    commands = {name: (base / name.replace(" ", "_"), ("trainer.max_epochs=3", "trainer.progress=false",
                                                       "trainer.num_threads=1", *CASES[name][0]))
                for name in CASES}
    commands["too short"] = (base / "too_short", TOO_SHORT)
    results = run_cli_in_one_interpreter(list(commands.values()))
    return {name: (result, json.loads((run_dir / "metrics.json").read_text()))
            for (name, (run_dir, _)), result in zip(commands.items(), results)}


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_verdict_at_the_default_settings(finished, name):
    result, metrics = finished[name]
    expected = CASES[name][1]
    health = metrics["gradient_health"]
    assert health["judged"] is True
    assert sorted(health["verdicts"]) == expected, result.stderr[-2000:]
    assert health["healthy"] is (not expected)
    printed = [line for line in result.stderr.splitlines() if line.startswith(("gradients are", "dead ", "saturated "))]
    assert len(printed) == len(expected)  # one line per verdict, printed once
    last_line = [line for line in result.stderr.splitlines() if line.startswith("gradients: ")]
    if expected == ["exploding"]:  # stops cleanly: exit 3, the last good checkpoint kept, no traceback
        assert result.returncode == 3 and metrics["status"] == "failed"
        assert "Traceback" not in result.stderr and "try a lower optimizer.lr" in printed[0]
        assert "loss/train became non-finite at step" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        summary = ", ".join(expected) if expected else "healthy"
        assert last_line and last_line[-1].startswith(f"gradients: {summary}")


@pytest.mark.slow
def test_a_run_too_short_to_judge_says_so(finished):
    result, metrics = finished["too short"]
    assert result.returncode == 0, result.stderr
    health = metrics["gradient_health"]
    assert health["judged"] is False and health["healthy"] is None and health["measurements"] == 3
    assert "train for more steps" in health["reason"]
    assert "gradients: not judged: only 3 measured steps" in result.stderr


@pytest.mark.slow
def test_the_verdicts_and_the_activation_table_import_no_torch():
    """The judge is pure Python on host numbers (the sweep report and the run's last line read it), and
    the activation table it reads builds torch modules only when asked: neither loads torch."""
    result = python_c("import sys\n"
                      "import mlpkit.verdicts\n"
                      "from mlpkit.activations import ACTIVATIONS, SATURATED_BELOW\n"
                      "print('torch loaded:', 'torch' in sys.modules, len(ACTIVATIONS), SATURATED_BELOW)\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch loaded: False 14 0.05"

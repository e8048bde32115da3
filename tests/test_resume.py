"""Checkpoints that survive kills: SIGKILL + resume is bit-exact, SIGINT saves, NaN stops cleanly."""
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

import mlpkit
from mlpkit.checkpoint import load_checkpoint
from mlpkit.errors import ConfigError, TrainingStopped
from tests.conftest import (
    ROOT,
    assembled,
    ctrl_c_reaches_it,
    read_scalars,
    run_cli,
    run_cli_in_one_interpreter,
    stop_after_saving_step,
)

# digits, batch 16: 79 steps an epoch; a mid-epoch checkpoint every 30 steps.
LONG_RUN = ["trainer.max_epochs=6", "trainer.batch_size=16", "trainer.checkpoint_every_n_steps=30",
            "trainer.progress=false", "model.dropout=0.2", "trainer.device=cpu"]


def start_cli(run_dir, *overrides):
    command = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen(command, cwd=run_dir.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_it)


def wait_for_checkpoint(process, run_dir, steps_at_least, timeout=120):
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last.exists() and load_checkpoint(last)["step"] >= steps_at_least:
            return
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def final_weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    process = start_cli(killed, *LONG_RUN)
    wait_for_checkpoint(process, killed, steps_at_least=100)  # inside the second epoch or later
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()

    # the resume, then the uninterrupted run, through train.py one after the other in one fresh interpreter
    reference = tmp_path / "reference"
    resumed, uninterrupted = run_cli_in_one_interpreter([(killed, (*LONG_RUN, f"resume={killed}")),
                                                         (reference, LONG_RUN)])
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    expected, actual = final_weights(reference), final_weights(killed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert json.loads((killed / "metrics.json").read_text())["history"] == \
        json.loads((reference / "metrics.json").read_text())["history"]

    # TensorBoard: one point per step, continuing where the checkpoint left off.
    steps = [step for step, _ in read_scalars(killed)["loss/train"]]
    assert steps == sorted(set(steps))
    assert steps == [step for step, _ in read_scalars(reference)["loss/train"]]


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    process = start_cli(run_dir, *LONG_RUN)
    wait_for_checkpoint(process, run_dir, steps_at_least=30)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT
    assert f"resume with: python train.py resume={run_dir}" in stderr
    assert "Traceback" not in stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "stopped"
    saved_step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    assert saved_step == metrics["steps"]
    finished = run_cli(run_dir, f"resume={run_dir}")  # the printed hint, as it is: the saved config goes on
    assert finished.returncode == 0, finished.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 6 and len(metrics["history"]) == 6


@pytest.mark.slow
def test_resume_into_another_architecture_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    mlpkit.train(["trainer.max_epochs=1", "trainer.progress=false"], run_dir=run_dir)  # only the resume is under test
    other = run_cli(tmp_path / "other", "trainer.max_epochs=2", "model.hidden_sizes=[32]",
                    f"resume={run_dir}")
    assert other.returncode == 2
    assert "model.hidden_sizes=[32] is not valid: expected the run's own model.hidden_sizes=[128,64]" in other.stderr
    assert "Traceback" not in other.stderr


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "mlpkit-checkpoint", "payload": Exploit()}, evil)
    with pytest.raises(ConfigError) as refused:  # the run function in-process: the command line's exit 2 is above
        mlpkit.train(["trainer.max_epochs=1", f"resume={evil}"], run_dir=tmp_path / "run")
    assert refused.value.exit_code == 2
    assert f"checkpoint {evil} was refused" in str(refused.value)
    assert not marker.exists()


@pytest.mark.slow
def test_missing_resume_target_names_it(tmp_path):
    with pytest.raises(ConfigError) as refused:
        mlpkit.train([f"resume={tmp_path}/nowhere"], run_dir=tmp_path / "run")
    assert refused.value.exit_code == 2
    assert f"resume={tmp_path}/nowhere is not valid" in str(refused.value)


def _trainer(tmp_path, *overrides):
    from mlpkit.data import build_data

    data = build_data({"source": "digits", "val_fraction": 0.15, "test_fraction": 0.15})
    return assembled("model.hidden_sizes=[16]", "optimizer.lr=1e-3", "optimizer.fused=null", "trainer.batch_size=64",
                     "trainer.seed=0", "trainer.log_every_n_steps=5", *overrides, data=data,
                     checkpoint_dir=tmp_path).trainer


@pytest.mark.slow
def test_planted_nan_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from mlpkit.errors import TrainingStopped

    trainer = _trainer(tmp_path, "trainer.max_epochs=2")
    trainer.fit()
    good = load_checkpoint(tmp_path / "last.pt")
    trainer.max_epochs = 4
    trainer.data.train.x[100, 3] = float("nan")  # poisons the first batch that holds row 100
    with pytest.raises(TrainingStopped, match=r"non-finite at step \d+ \(epoch 3\)") as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 3
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["step"] == good["step"]
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])


@pytest.mark.slow
def test_on_nonfinite_skip_skips_the_poisoned_steps_and_fails_a_run_that_ends_non_finite(tmp_path):
    from mlpkit.errors import TrainingStopped

    trainer = _trainer(tmp_path, "trainer.max_epochs=2", "trainer.on_nonfinite=skip")
    trainer.data.train.x[100, 3] = float("nan")
    with pytest.raises(TrainingStopped, match=r"non-finite metrics \(loss/train nan.*after skipping 2 of 40 steps"):
        trainer.fit()  # one batch in each epoch holds the row; the final train loss includes it
    assert trainer.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@contextmanager
def sigint_handled_by(handler):
    """SIGINT set as the parent process would have set it, then put back."""
    outside = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, outside)


def test_a_ctrl_c_after_the_last_step_is_passed_on_not_swallowed():
    from mlpkit.runtime import stop_on_signals

    with sigint_handled_by(signal.default_int_handler):  # as in a terminal
        trainer = SimpleNamespace(stop_signal=None)
        with pytest.raises(TrainingStopped) as stopped, stop_on_signals(trainer):
            signal.raise_signal(signal.SIGINT)  # arrives while the final evaluation runs
            assert trainer.stop_signal == signal.SIGINT  # the trainer was asked to stop, nothing raised yet
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
        assert stopped.value.exit_code == 128 + signal.SIGINT and stopped.value.completed  # exit 130, one line


def test_a_signal_the_parent_ignored_stays_ignored():
    from mlpkit.runtime import stop_on_signals

    with sigint_handled_by(signal.SIG_IGN):  # a job started in the background with `&`
        trainer = SimpleNamespace(stop_signal=None)
        with stop_on_signals(trainer):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            assert trainer.stop_signal is None  # the run goes on
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # SIGTERM still saves and stops
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.slow
def test_a_resumed_run_measures_the_same_dead_units_and_verdict_as_an_uninterrupted_one(tmp_path, monkeypatch):
    from mlpkit.errors import TrainingStopped

    # relu at a high lr kills units of linear2 from step 5 on and the dead verdict fires at step 23;
    # every step measures the statistics, so at the checkpoint of step 21 the dead-unit window
    # (diagnostics.patience measured batches) and the verdict's streak hold steps before it
    overrides = ["trainer.max_epochs=4", "trainer.progress=false", "trainer.device=cpu", "model.hidden_sizes=[32,32]",
                 "optimizer.lr=0.15", "trainer.log_every_n_steps=1", "diagnostics.statistics_every=1",
                 "trainer.checkpoint_every_n_steps=21"]
    mlpkit.train(overrides, run_dir=tmp_path / "reference")
    with monkeypatch.context() as patch:
        stop_after_saving_step(patch, 21)
        with pytest.raises(TrainingStopped):
            mlpkit.train(overrides, run_dir=tmp_path / "resumed")
    mlpkit.train([*overrides, f"resume={tmp_path / 'resumed'}"])

    expected, actual = (read_scalars(tmp_path / name) for name in ("reference", "resumed"))
    dead_tags = sorted(tag for tag in expected if tag.startswith("dead_frac/"))
    assert dead_tags == ["dead_frac/linear1", "dead_frac/linear2"]
    assert any(value > 0 for tag in dead_tags for _, value in expected[tag])  # some units did die
    for tag in dead_tags:
        assert dict(actual[tag]) == dict(expected[tag]), tag
    health = {name: json.loads((tmp_path / name / "metrics.json").read_text())["gradient_health"]
              for name in ("reference", "resumed")}
    assert list(health["reference"]["verdicts"]) == ["dead"]
    assert health["resumed"] == health["reference"]

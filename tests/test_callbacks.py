"""A user's own callback: from Python, named in a config, kept in checkpoints, never imported on a
checkpoint's word; and the protocol's dispatch."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mlpkit
from mlpkit.callbacks import Callback, Callbacks, import_callbacks
from mlpkit.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["trainer.max_epochs=2", "data=moons", "data.n_samples=200", "model.hidden_sizes=[8]",
         "trainer.progress=false", "trainer.device=cpu"]

# A module a user would write: imported by its dotted name from trainer.callbacks=[...]
USER_MODULE = textwrap.dedent('''
    import json
    from pathlib import Path

    from mlpkit import Callback


    class CountSteps(Callback):
        """Counts the steps it saw (kept in checkpoints) and writes them next to the run's files."""

        state_key = "count_steps"

        def __init__(self):
            self.steps = 0

        def on_train_batch_end(self, trainer, loss):
            self.steps += 1

        def on_fit_end(self, trainer, final):
            (trainer.run_dir / "count_steps.json").write_text(json.dumps({"steps": self.steps, "trainer": trainer.step}))

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = state["steps"]


    class NeedsArguments(Callback):
        def __init__(self, path):
            self.path = path


    class NotACallback:
        pass
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "callbacks.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name.startswith("userpkg")]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path


class Recorder(Callback):
    """Every hook call, in order, with what it was given."""

    def __init__(self):
        self.calls: list[str] = []
        self.validation: list[dict] = []
        self.final: dict = {}

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_train_batch_end(self, trainer, loss):
        self.calls.append("batch_end")

    def on_validation_end(self, trainer, metrics, improved):
        self.calls.append("validation_end")
        self.validation.append({"epoch": trainer.epoch, "improved": improved, **metrics})

    def on_fit_end(self, trainer, final):
        self.calls.append("fit_end")
        self.final = {split: dict(values) for split, values in final.items()}


@pytest.mark.slow
def test_a_callback_passed_to_mlpkit_train_sees_every_step_epoch_and_the_final_metrics(tmp_path):
    recorder = Recorder()
    run = mlpkit.train(SHORT, run_dir=tmp_path / "run", callbacks=[recorder])
    metrics = run.metrics
    assert recorder.calls[0] == "fit_start" and recorder.calls[-1] == "fit_end"
    assert recorder.calls.count("batch_end") == metrics["steps"] > 0
    assert recorder.calls.count("validation_end") == metrics["epochs"] == 2
    assert [entry["loss"] for entry in recorder.validation] == [entry["loss/val"] for entry in metrics["history"]]
    assert recorder.validation[0]["improved"] is True  # the first epoch always improves on nothing
    assert recorder.final["test"] == metrics["test"]


@pytest.mark.slow
def test_a_callback_can_stop_the_run_after_an_epoch(tmp_path):
    class StopAfterOne(Callback):
        def on_validation_end(self, trainer, metrics, improved):
            trainer.should_stop = True

    metrics = mlpkit.train(SHORT[1:] + ["trainer.max_epochs=5"], run_dir=tmp_path / "run",
                           callbacks=[StopAfterOne()]).metrics
    assert metrics["epochs"] == 1 and metrics["status"] == "completed"


@pytest.mark.slow
def test_a_callback_named_in_the_config_is_imported_built_and_kept_in_checkpoints(tmp_path, user_module):
    import torch

    run = mlpkit.train([*SHORT, "trainer.callbacks=[userpkg.callbacks.CountSteps]"], run_dir=tmp_path / "run")
    seen = json.loads((run.dir / "count_steps.json").read_text())
    assert seen == {"steps": run.metrics["steps"], "trainer": run.metrics["steps"]}
    state = torch.load(run.dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["extra"]["callbacks"]["count_steps"] == {"steps": run.metrics["steps"]}


@pytest.mark.slow
def test_a_killed_run_resumes_its_callbacks_state(tmp_path, user_module, monkeypatch):
    from mlpkit.errors import TrainingStopped
    from tests.conftest import stop_after_saving_step

    named = "trainer.callbacks=[userpkg.callbacks.CountSteps]"
    reference = mlpkit.train([*SHORT, named], run_dir=tmp_path / "reference")
    with monkeypatch.context() as patch:
        stop_after_saving_step(patch, 5)
        with pytest.raises(TrainingStopped):
            mlpkit.train([*SHORT, named, "trainer.checkpoint_every_n_steps=5"], run_dir=tmp_path / "killed")
    mlpkit.train([f"resume={tmp_path / 'killed'}", named], run_dir=tmp_path / "killed")
    resumed = json.loads((tmp_path / "killed" / "count_steps.json").read_text())
    assert resumed["steps"] == reference.metrics["steps"]  # 5 before the kill, counted on from there


@pytest.mark.slow
def test_a_resume_imports_no_callback_its_checkpoint_names(tmp_path, user_module, caplog):
    run = mlpkit.train([*SHORT, "trainer.callbacks=[userpkg.callbacks.CountSteps]"], run_dir=tmp_path / "run")
    steps_per_epoch = run.metrics["steps"] // 2
    (run.dir / "count_steps.json").unlink()
    mlpkit.train([f"resume={run.dir}", "trainer.max_epochs=3"], run_dir=run.dir)
    assert not (run.dir / "count_steps.json").exists()  # the checkpoint's callbacks were not imported
    assert "a resume imports no code its checkpoint names" in caplog.text
    mlpkit.train([f"resume={run.dir}", "trainer.max_epochs=4", "trainer.callbacks=[userpkg.callbacks.CountSteps]"],
                 run_dir=run.dir)
    assert json.loads((run.dir / "count_steps.json").read_text())["trainer"] == 4 * steps_per_epoch


@pytest.mark.parametrize(("path", "says"), [
    ("userpkg.nowhere.CountSteps", "importing userpkg.nowhere failed"),
    ("userpkg.callbacks.Missing", "userpkg.callbacks has no Missing"),
    ("userpkg.callbacks.NotACallback", "is not a subclass of mlpkit.Callback"),
    ("userpkg.callbacks.NeedsArguments", "takes no arguments"),
    ("CountSteps", "has no CountSteps"),
])
def test_a_callback_that_cannot_be_built_is_one_line_naming_the_key(user_module, path, says):
    with pytest.raises(ConfigError) as refused:
        import_callbacks([path])
    message = str(refused.value)
    assert message.startswith(f"trainer.callbacks={path} is not valid: expected a list of Callback classes")
    assert says in message and "\n" not in message


def train_py(run_dir: Path, user_module: Path, callback: str) -> subprocess.CompletedProcess:
    """``python train.py`` with ``trainer.callbacks=[<callback>]``, the user's module on PYTHONPATH."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *SHORT, f"hydra.run.dir={run_dir}",
                           f"trainer.callbacks=[{callback}]"], capture_output=True, text=True, cwd=user_module,
                          env={**os.environ, "PYTHONPATH": str(user_module)})


@pytest.mark.slow
def test_a_bad_callback_on_the_command_line_exits_2_before_the_run_writes_anything(tmp_path, user_module):
    run_dir = tmp_path / "run"
    result = train_py(run_dir, user_module, "userpkg.callbacks.NotACallback")
    assert result.returncode == 2
    assert "trainer.callbacks=userpkg.callbacks.NotACallback is not valid" in result.stderr
    assert not (run_dir / "labels.json").exists() and not list(run_dir.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_callback_named_on_the_command_line_runs(tmp_path, user_module):
    run_dir = tmp_path / "run"
    result = train_py(run_dir, user_module, "userpkg.callbacks.CountSteps")
    assert result.returncode == 0, result.stderr[-2000:]
    steps = json.loads((run_dir / "metrics.json").read_text())["steps"]
    assert json.loads((run_dir / "count_steps.json").read_text()) == {"steps": steps, "trainer": steps}


def test_hooks_call_only_the_callbacks_that_override_them_in_order():
    calls = []

    class First(Callback):
        def on_fit_start(self, trainer):
            calls.append("first")

    class Second(Callback):
        def on_fit_start(self, trainer):
            calls.append("second")

    callbacks = Callbacks([First(), Callback(), Second()])
    callbacks.call("on_fit_start", None)
    assert calls == ["first", "second"]
    assert callbacks.hooks["on_train_batch_end"] == []  # a step pays for no empty call


def test_two_callbacks_with_one_state_key_are_refused():
    class Keeps(Callback):
        state_key = "same"

    with pytest.raises(ConfigError, match="different state_key"):
        Callbacks([Keeps(), Keeps()])


def test_a_callback_must_be_a_callback_instance():
    with pytest.raises(ConfigError, match="instances of mlpkit.Callback"):
        Callbacks([object()])


@pytest.mark.slow
def test_the_readmes_callback_example_runs_and_stops_the_run_early(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Your own callbacks"):]
    example = section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]
    monkeypatch.chdir(tmp_path)  # the run goes to outputs/ under the current directory
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    run = namespace["run"]
    assert 1 <= run.metrics["epochs"] < 20 and run.metrics["history"][-1]["loss/val"] < 0.5
    assert all(entry["loss/val"] >= 0.5 for entry in run.metrics["history"][:-1])

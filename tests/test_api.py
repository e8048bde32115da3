"""The Python API: mlpkit.train, load_run and sweep make and read the same runs as the command line."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mlpkit
from mlpkit.prediction import predict_csv
from tests.conftest import IRIS, ROOT, run_cli

TINY = ["trainer.max_epochs=1", "model.hidden_sizes=[16]", "trainer.device=cpu", "trainer.progress=false"]
TIMINGS = ("wall_seconds", "train_seconds", "samples_per_second")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> mlpkit.Run:
    """One tiny digits run made through the API, shared by the tests that only read it."""
    return mlpkit.train(TINY, run_dir=tmp_path_factory.mktemp("api") / "digits")


def digits_frame(rows: int = 5) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    return load_digits(as_frame=True).frame.head(rows)


@pytest.mark.slow
def test_the_api_and_the_command_line_write_the_same_run(tmp_path):
    overrides = [*TINY, "activation=tanh", "data.split_seed=3"]
    assert run_cli(tmp_path / "cli", *overrides).returncode == 0
    run = mlpkit.train(overrides, run_dir=tmp_path / "api")

    def without_timings(directory: Path) -> dict:
        metrics = json.loads((directory / "metrics.json").read_text())
        return {key: value for key, value in metrics.items() if key not in TIMINGS}

    assert run.dir == tmp_path / "api"
    assert without_timings(run.dir) == without_timings(tmp_path / "cli")
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "preprocessing.json", "labels.json"):
        assert (run.dir / name).read_text() == (tmp_path / "cli" / name).read_text(), name
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "gradient_flow.png", "train.log", ".hydra/hydra.yaml"):
        assert (run.dir / name).is_file(), name
    assert list(run.dir.glob("events.out.tfevents.*"))
    assert "view it: tensorboard --logdir" in (run.dir / "train.log").read_text()


@pytest.mark.slow
def test_train_returns_the_run_it_wrote(digits_run):
    run = digits_run
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert run.metrics == metrics and metrics["status"] == "completed"
    assert run.config.model.hidden_sizes == [16] and run.config.trainer.max_epochs == 1
    assert [row["epoch"] for row in run.history] == [1]
    frame = run.history_frame()
    assert list(frame["epoch"]) == [1] and {"loss/train_epoch", "loss/val", "accuracy/val"} <= set(frame.columns)
    assert {"judged", "healthy", "verdicts"} <= set(run.gradient_health)
    assert isinstance(run.model, torch.nn.Module) and not run.model.training
    assert run.evaluate("test")["metrics"] == pytest.approx(metrics["test"], rel=1e-5)  # one epoch: best is last
    assert run.evaluate("val")["samples"] == 270


@pytest.mark.slow
def test_predict_takes_arrays_tensors_and_data_frames_and_answers_in_class_names(digits_run):
    frame = digits_frame()
    names = [c for c in frame.columns if c.startswith("pixel_")]
    by_name = digits_run.predict(frame[list(reversed(names))])  # columns found by name, not position
    assert list(by_name) == list(digits_run.predict(frame[names].to_numpy()))
    assert list(by_name) == list(digits_run.predict(torch.tensor(frame[names].to_numpy())))
    assert set(by_name) <= set(range(10)) and by_name.dtype == np.int64  # digits' targets are integers
    probabilities = digits_run.predict_proba(frame)
    assert probabilities.shape == (5, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert list(by_name) == list(probabilities.argmax(axis=1))
    assert digits_run.predict(frame[names].to_numpy()[0]).shape == (1,)  # one row
    with pytest.raises(mlpkit.ConfigError, match="no column pixel_0_0; the run was trained on 64 feature columns"):
        digits_run.predict(frame.drop(columns="pixel_0_0"))
    with pytest.raises(mlpkit.ConfigError, match=r"expected rows of the run's 64 features, shape \(n, 64\)"):
        digits_run.predict(np.zeros((2, 3)))


def test_load_run_reads_command_line_runs_and_predicts_like_the_predict_command(runs, tmp_path):
    from sklearn.datasets import load_breast_cancer

    cancer = mlpkit.load_run(runs["cancer"])
    rows = load_breast_cancer(as_frame=True).frame.head(8)
    assert set(cancer.predict(rows)) <= {"malignant", "benign"}
    assert cancer.predict_proba(rows).shape == (8, 2)

    iris = mlpkit.load_run(runs["iris"])
    predicted = iris.predict(pd.read_csv(IRIS))
    predict_csv(runs["iris"], IRIS, tmp_path / "pred.csv")
    assert predicted == pytest.approx(pd.read_csv(tmp_path / "pred.csv")["prediction"].to_numpy(), rel=1e-5)
    with pytest.raises(TypeError, match="predict_proba is for classifiers"):
        iris.predict_proba(pd.read_csv(IRIS))
    with pytest.raises(mlpkit.ConfigError, match="no .hydra/config.yaml"):
        mlpkit.load_run(tmp_path)


@pytest.mark.slow
def test_default_run_directory_is_new_and_the_working_directory_stays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = mlpkit.train(TINY), mlpkit.train(TINY)
    assert os.getcwd() == str(tmp_path)
    assert first.dir != second.dir
    for run in (first, second):
        assert run.dir.relative_to(tmp_path / "outputs")  # outputs/<date>/<time>, a _2 when taken
        assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d(_\d+)?", str(run.dir.relative_to(tmp_path / "outputs")))


def test_config_mistakes_raise_config_error_with_the_command_line_message(tmp_path):
    with pytest.raises(mlpkit.ConfigError, match="^activation=nope is not valid: expected one of .*relu"):
        mlpkit.train(["activation=nope"], run_dir=tmp_path / "a")
    with pytest.raises(mlpkit.ConfigError, match="'max_epoch' is not a config key; expected a key of trainer"):
        mlpkit.train(["trainer.max_epoch=3"], run_dir=tmp_path / "b")
    with pytest.raises(mlpkit.ConfigError, match=r"^trainer.batch_size=0 is not valid: expected an integer >= 1$"):
        mlpkit.train([*TINY, "trainer.batch_size=0"], run_dir=tmp_path / "c")
    with pytest.raises(mlpkit.ConfigError, match="a list of strings"):
        mlpkit.train("activation=tanh")  # type: ignore[arg-type]
    assert not (tmp_path / "c" / "metrics.json").exists()


# The command line says the same line as mlpkit.train raises: test_config.py's exit-code tests.


@pytest.mark.slow
def test_train_twice_and_in_a_thread_adds_no_handler_and_logs_each_line_once(tmp_path):
    logger = logging.getLogger("mlpkit")
    mlpkit.train(TINY, run_dir=tmp_path / "first")
    handlers = list(logger.handlers)
    results = {}
    worker = threading.Thread(target=lambda: results.update(run=mlpkit.train(TINY, run_dir=tmp_path / "thread")))
    worker.start()
    worker.join()
    second = mlpkit.train(TINY, run_dir=tmp_path / "second")
    assert logger.handlers == handlers
    assert results["run"].metrics["status"] == "completed"
    for run_dir in (tmp_path / "thread", second.dir):
        log = (run_dir / "train.log").read_text()
        assert log.count("run directory:") == 1 and f"run directory: {run_dir}\n" in log


@pytest.mark.slow
def test_the_console_shows_the_lines_when_logging_is_not_configured(tmp_path):
    code = ("import mlpkit\n"
            f"for name in ('a', 'b'): mlpkit.train({TINY!r}, run_dir={str(tmp_path)!r} + '/' + name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("run directory:")] == \
        [f"run directory: {tmp_path}/a", f"run directory: {tmp_path}/b"]


@pytest.mark.slow
def test_resume_follows_the_command_line_rule(tmp_path):
    run = mlpkit.train(TINY, run_dir=tmp_path / "run")
    config = (run.dir / ".hydra" / "config.yaml").read_text()
    resumed = mlpkit.train([*TINY, f"resume={run.dir}", "trainer.max_epochs=2"])  # no run_dir: the run's own
    assert resumed.dir == run.dir
    assert resumed.metrics["epochs"] == 2 and [row["epoch"] for row in resumed.history] == [1, 2]
    assert json.loads((run.dir / "resumes.json").read_text())[0]["changes"] == {"trainer.max_epochs": 2}
    assert (run.dir / ".hydra" / "config.yaml").read_text() == config  # nothing rewritten
    with pytest.raises(mlpkit.ConfigError, match="activation=tanh is not valid: expected the run's own activation"):
        mlpkit.train([*TINY, f"resume={run.dir}", "activation=tanh", "trainer.max_epochs=2"])
    with pytest.raises(mlpkit.ConfigError, match="holds a run already"):
        mlpkit.train(TINY, run_dir=run.dir)


# mlpkit.sweep over a grid, its runs, table and report: test_sweep_repeats.py (seeds crossed with a key)
@pytest.mark.slow
def test_sweep_of_override_lists_reports_a_failed_job_and_goes_on(tmp_path):
    result = mlpkit.sweep([["activation=tanh"], ["trainer.batch_size=0"]], overrides=TINY,
                          sweep_dir=tmp_path / "sweep")
    assert len(result.runs) == 1 and len(result.failed) == 1
    failed_dir, error = next(iter(result.failed.items()))
    assert error == "ConfigError: trainer.batch_size=0 is not valid: expected an integer >= 1"
    assert json.loads((Path(failed_dir) / "job_status.json").read_text())["status"] == "failed"
    statuses = list(result.table["status"])
    assert statuses[0] == "completed" and statuses[1].startswith("failed: ConfigError: trainer.batch_size=0")
    with pytest.raises(mlpkit.ConfigError, match="'nope' is not a config key"):  # before any job trains
        mlpkit.sweep({"trainer.nope": [1, 2]}, sweep_dir=tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_progress_auto_shows_a_bar_in_a_notebook_and_not_in_a_pipe(monkeypatch):
    from mlpkit.runtime import show_progress

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert show_progress("auto") is False and show_progress(True) is True

    class Kernel:
        config = {"IPKernelApp": {}}

    fake = type(sys)("IPython")
    fake.get_ipython = lambda: Kernel()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert show_progress("auto") is True and show_progress(False) is False


def test_stop_on_signals_is_a_no_op_off_the_main_thread():
    from mlpkit.runtime import stop_on_signals

    class Trainer:
        stop_signal = None

    errors = []

    def body():
        try:
            with stop_on_signals(Trainer()):
                pass
        except Exception as error:  # signal.signal raises ValueError off the main thread
            errors.append(error)

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert errors == []


@pytest.mark.slow
def test_the_notebook_summary_says_data_model_metrics_verdicts_and_where(digits_run, monkeypatch):
    summary = digits_run._repr_html_()
    for text in ("digits (multiclass)", "hidden_sizes=[16]", "accuracy", "judged=True", "healthy=True",
                 f"tensorboard --logdir {digits_run.dir}"):
        assert text in summary, text
    metrics = dict(digits_run.metrics)
    metrics["gradient_health"] = {**metrics["gradient_health"], "healthy": False, "verdicts": {
        "vanishing": {"step": 3, "message": "vanishing gradients: linear1 ...", "layers": ["linear1"]}}}
    monkeypatch.setattr(type(digits_run), "metrics", property(lambda self: metrics))
    assert "vanishing gradients: linear1" in digits_run._repr_html_()


@pytest.mark.slow
def test_history_frame_without_pandas_says_what_to_install(digits_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"Run.history_frame\(\) needs pandas: pip install pandas"):
        digits_run.history_frame()


@pytest.mark.slow
def test_import_mlpkit_loads_no_torch_and_the_sweep_callback_stays_hydras():
    code = ("import sys, mlpkit\n"
            "assert 'torch' not in sys.modules\n"
            "from hydra._internal.utils import _locate\n"
            "assert _locate('mlpkit.sweeps.SweepCallback').__name__ == 'SweepCallback'\n"
            "assert callable(mlpkit.sweep) and mlpkit.sweep.__module__ == 'mlpkit.api'\n"
            "print(sorted(mlpkit.__all__))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "'ConfigError', 'Diagnosis', 'MLPClassifier', 'MLPRegressor', 'Run', 'SweepResult', 'diagnose', " \
        "'load_run', 'lr_find', 'sweep', 'train'" in result.stdout


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):text.index("## Using a trained run")]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    assert len(list((tmp_path / "outputs").glob("*/*/metrics.json"))) == 1


@pytest.mark.slow
def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from omegaconf import OmegaConf

    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    # the two gradient-flow figures and a pandas plot drawn after the runs (inline plots still work)
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 3
    assert len(list((tmp_path / "outputs").glob("*/*/gradient_flow.png"))) == 2
    assert not list((ROOT / "examples").glob("outputs"))
    assert OmegaConf.load(next((tmp_path / "outputs").glob("*/*/.hydra/config.yaml"))).trainer.max_epochs == 3

"""logger=[tensorboard,csv,mlflow,wandb]: each logger holds what TensorBoard holds, read back through the
real clients (pandas, MlflowClient against its local store and a real `mlflow server`, wandb's offline
run file); a tracker that fails warns once and the run goes on; bad names and missing packages are one line."""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import mlpkit
from mlpkit.errors import ConfigError
from tests.conftest import (
    TINY,
    compose_config,
    python_c,
    read_scalars,
    run_cli,
    stop_after_saving_step,
)

MLFLOW_WARNING = "logger mlflow failed"


def train(run_dir: Path, *loggers: str, extra: tuple[str, ...] = (), callbacks=()) -> Path:
    mlpkit.train([*TINY, "trainer.device=cpu", f"logger=[{','.join(loggers)}]", *extra], run_dir=run_dir,
                 callbacks=callbacks)
    return run_dir


def as_float32(value: float) -> float:
    """TensorBoard keeps scalars as float32."""
    return struct.unpack("f", struct.pack("f", value))[0]


def same_points(actual: dict[str, list[tuple[int, float]]], expected: dict[str, list[tuple[int, float]]]) -> None:
    assert sorted(actual) == sorted(expected)
    for tag, points in expected.items():
        assert [step for step, _ in actual[tag]] == [step for step, _ in points], tag
        for (_, got), (_, want) in zip(actual[tag], points):
            assert as_float32(got) == pytest.approx(want, rel=1e-6, nan_ok=True), tag


# --- choosing loggers -------------------------------------------------------------------------------
def test_an_unknown_logger_name_is_refused_naming_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        mlpkit.train(["logger=[tensorboard,comet]", *TINY], run_dir=tmp_path / "run")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("logger=[tensorboard,comet] is not valid")
    assert all(name in message for name in ("tensorboard", "csv", "mlflow", "wandb", "'comet'"))
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_an_unknown_logger_name_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    result = run_cli(tmp_path / "run", "logger=[csv,tensorbored]", *TINY)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "logger=" in line]
    assert len(errors) == 1, result.stderr
    assert all(name in errors[0] for name in ("[csv,tensorbored]", "tensorboard", "mlflow", "wandb"))
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.parametrize("override, key", [
    ("+tracking.mlflow.typo=1", "tracking.mlflow.typo"),
    ("tracking.wandb.mode=sometimes", "tracking.wandb.mode"),
    ("tracking.mlflow.experiment=''", "tracking.mlflow.experiment"),
])
def test_a_tracking_key_that_cannot_work_is_refused(override, key):
    from mlpkit.config import validate

    with pytest.raises(ConfigError) as error:
        validate(compose_config(override))
    assert error.value.key == key


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_names_the_install_command(tmp_path, monkeypatch, tracker):
    from mlpkit.loggers import build_loggers

    monkeypatch.setitem(sys.modules, tracker, None)  # `import mlflow` now fails as if it were not installed
    with pytest.raises(ConfigError) as error:  # refused by the config's check, before the run writes
        mlpkit.train([f"logger=[tensorboard,{tracker}]", *TINY], run_dir=tmp_path / "run")
    assert f"pip install 'mlpkit[{tracker}]'" in str(error.value) and "\n" not in str(error.value)
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
    with pytest.raises(ConfigError, match=rf"pip install 'mlpkit\[{tracker}\]'"):  # and by the builder itself
        build_loggers(compose_config(f"logger=[{tracker}]"), tmp_path)


def test_a_failing_tracker_warns_once_and_the_other_loggers_go_on(caplog):
    from mlpkit.loggers import Loggers

    class Recorder:
        def __init__(self):
            self.calls = []

        def __getattr__(self, method):
            return lambda *args: self.calls.append((method, *args))

    class GoneServer(Recorder):
        def log_scalars(self, values, step):
            raise ConnectionError("server at 127.0.0.1:5000 refused the connection\nretried 2 times")

    tensorboard, mlflow = Recorder(), GoneServer()
    loggers = Loggers({"tensorboard": tensorboard, "mlflow": mlflow})
    with caplog.at_level(logging.WARNING, logger="mlpkit"):
        for step in range(3):
            loggers.log_scalars({"loss/train": 1.0}, step)
        loggers.close()
    assert [call[0] for call in tensorboard.calls] == ["log_scalars"] * 3 + ["close"]
    assert mlflow.calls == []  # dropped at its first failure: never called again
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "mlflow" in warnings[0] and "ConnectionError: server at 127.0.0.1:5000" in warnings[0]
    assert "\n" not in warnings[0]

    class FullDisk(Recorder):
        def flush(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):  # the run directory's own loggers fail the run, as any write there does
        Loggers({"csv": FullDisk()}).flush()


@pytest.mark.slow
def test_trackers_are_imported_only_when_chosen(tmp_path):
    result = python_c(
        "import sys; from mlpkit.loggers import build_loggers; from tests.conftest import compose_config\n"
        f"build_loggers(compose_config('logger=[tensorboard,csv]'), {str(tmp_path)!r}).close()\n"
        "print(sorted(name for name in ('mlflow', 'wandb') if name in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --- csv ---------------------------------------------------------------------------------------------
def csv_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    import pandas as pd

    table = pd.read_csv(run_dir / "metrics.csv")
    assert list(table.columns) == ["step", "tag", "value"]
    return {tag: list(zip(rows["step"].tolist(), rows["value"].tolist())) for tag, rows in table.groupby("tag")}


@pytest.mark.slow
def test_csv_holds_every_scalar_tensorboard_holds_at_its_step(tmp_path):
    run_dir = train(tmp_path / "run", "tensorboard", "csv")
    expected = read_scalars(run_dir)
    assert "loss/train" in expected and "final/test_accuracy" in expected
    same_points(csv_points(run_dir), expected)


def test_csv_reopened_by_a_resume_drops_the_rows_past_its_checkpoint(tmp_path):
    from mlpkit.csv_logger import CSVLogger

    first = CSVLogger(tmp_path)
    for step in range(10):
        first.log_scalars({"loss/train": step / 10, "lr/group0": 0.1}, step)
    first.flush()
    first.file.write("10,loss/tr")  # the last line a kill cut short
    first.file.close()
    resumed = CSVLogger(tmp_path, purge_step=6)
    for step in range(6, 12):
        resumed.log_scalars({"loss/train": -step}, step)
    resumed.close()
    points = csv_points(tmp_path)
    assert points["loss/train"] == [(step, step / 10) for step in range(6)] + [(step, -step) for step in range(6, 12)]
    assert [step for step, _ in points["lr/group0"]] == list(range(6))


def test_csv_is_written_on_flush_not_a_line_per_scalar(tmp_path):
    from mlpkit.csv_logger import CSVLogger

    logger = CSVLogger(tmp_path)
    for step in range(50):
        logger.log_scalars({"loss/train": 1.0}, step)
    assert (tmp_path / "metrics.csv").read_text() == ""  # the header too waits in the buffer
    logger.flush()
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 51
    logger.close()


@pytest.mark.slow
def test_a_run_resumed_in_its_directory_has_each_step_once_in_csv_as_in_tensorboard(tmp_path, monkeypatch):
    from mlpkit.errors import TrainingStopped

    overrides = ("trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=25", "trainer.log_every_n_steps=1")
    with monkeypatch.context() as patch:
        stop_after_saving_step(patch, 25)
        with pytest.raises(TrainingStopped):
            train(tmp_path / "run", "tensorboard", "csv", extra=overrides)
    mlpkit.train([*overrides, f"resume={tmp_path / 'run'}"])
    points = csv_points(tmp_path / "run")
    assert [step for step, _ in points["loss/train"]] == list(range(60))
    same_points(points, read_scalars(tmp_path / "run"))


# --- mlflow ------------------------------------------------------------------------------------------
def mlflow_run(run_dir: Path):
    from mlflow.tracking import MlflowClient

    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    paths: set[str] = set()
    for entry in client.list_artifacts(run_id, folder):
        paths |= artifact_paths(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return paths


def check_mlflow_run(run_dir: Path) -> None:
    """The MLflow run holds the config as params, TensorBoard's scalars at their steps, the texts, the
    images and the run's files."""
    client, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["model.hidden_sizes"] == "[16]" and run.data.params["trainer.max_epochs"] == "2"
    assert run.data.tags["gradient_health/summary"].startswith("gradients:")
    expected = read_scalars(run_dir)
    history = {tag: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, tag),
                                                        key=lambda m: (m.step, m.timestamp))]
               for tag in run.data.metrics}
    same_points(history, expected)
    paths = artifact_paths(client, run.info.run_id)
    assert {"metrics.json", "checkpoints/best.pt", "gradient_flow.png", "texts/config.txt", "texts/model.txt",
            "texts/gradient_health/summary.txt", ".hydra/config.yaml"} <= paths
    assert any(path.startswith("images/gradient_flow") for path in paths)
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(run_dir.parent)))
    assert json.loads(local.read_text()) == json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_mlflow_run_in_the_local_store_beside_the_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = train(tmp_path / "run", "tensorboard", "mlflow",
                    extra=("tracking.mlflow.experiment=digits",))
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlruns").is_dir()  # in the run's parent
    assert json.loads((run_dir / "mlflow_run.json").read_text())["tracking_uri"] == \
        f"sqlite:///{tmp_path / 'mlflow.db'}"
    check_mlflow_run(run_dir)
    client, run = mlflow_run(run_dir)
    assert client.get_experiment(run.info.experiment_id).name == "digits"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server_artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return server, uri
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"mlflow server exited: {server.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.5)
    stop_server(server)
    raise AssertionError("mlflow server did not answer within 90 s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.slow
def test_mlflow_over_http_to_a_real_server_and_a_server_gone_mid_run(tmp_path, caplog):
    from mlpkit.callbacks import Callback

    server, uri = start_mlflow_server(tmp_path)
    try:
        run_dir = train(tmp_path / "run", "tensorboard", "csv", "mlflow",
                        extra=(f"tracking.mlflow.tracking_uri={uri}",))
        check_mlflow_run(run_dir)

        class StopServerAfterFirstEpoch(Callback):
            def on_validation_end(self, trainer, metrics, improved):
                if trainer.epoch == 1:  # after the checkpoint's flush: the first epoch reached the server
                    stop_server(server)

        with caplog.at_level(logging.WARNING, logger="mlpkit"):
            gone = train(tmp_path / "gone", "tensorboard", "csv", "mlflow",
                         extra=(f"tracking.mlflow.tracking_uri={uri}",), callbacks=[StopServerAfterFirstEpoch()])
    finally:
        stop_server(server)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len([line for line in warnings if "mlflow" in line]) == 1, warnings
    assert MLFLOW_WARNING in warnings[0]
    check_run_directory_intact(gone)


def check_run_directory_intact(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    scalars = read_scalars(run_dir)
    assert [step for step, _ in scalars["loss/val"]] == [20, 40] and "final/test_loss" in scalars
    same_points(csv_points(run_dir), scalars)
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "gradient_flow.png").is_file()


@pytest.mark.slow
def test_mlflow_at_a_dead_address_warns_once_and_the_run_completes(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mlpkit"):
        run_dir = train(tmp_path / "run", "tensorboard", "csv", "mlflow",
                        extra=(f"tracking.mlflow.tracking_uri=http://127.0.0.1:{free_port()}",))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len([line for line in warnings if "mlflow" in line]) == 1, warnings
    assert "logger mlflow could not start" in warnings[0] and "\n" not in warnings[0]
    check_run_directory_intact(run_dir)


# --- wandb -------------------------------------------------------------------------------------------
def wandb_records(path: Path) -> list:
    """The records of wandb's offline run file (a LevelDB-style log of protobuf Records in 32 KiB
    blocks, after a 7-byte ':W&B' header), read as `wandb sync` reads them."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, position, pieces = [], header, b""
    while position + header <= len(data):
        if block - position % block < header:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + header])
        if kind == 0 and length == 0:
            break
        pieces += data[position + header:position + header + length]
        position += header + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


@pytest.mark.slow
def test_wandb_offline_run_holds_the_history_summary_config_and_model(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))  # no key configured: offline
    run_dir = train(tmp_path / "run", "tensorboard", "wandb")
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    [run_file] = offline.glob("run-*.wandb")
    records = wandb_records(run_file)

    history: dict[str, list[tuple[int, float]]] = {}
    for record in (r.history for r in records if r.WhichOneof("record_type") == "history"):
        items = {tuple(item.nested_key): json.loads(item.value_json) for item in record.item}
        step = items[("_step",)]
        for key, value in items.items():
            if len(key) == 1 and not key[0].startswith("_") and isinstance(value, (int, float)):
                history.setdefault(key[0], []).append((step, value))
    scalars = read_scalars(run_dir)
    final = {tag: points for tag, points in scalars.items() if tag.startswith("final/")}
    same_points(history, {tag: points for tag, points in scalars.items() if tag not in final})

    summary: dict[str, object] = {}
    for record in (r.summary for r in records if r.WhichOneof("record_type") == "summary"):
        summary.update({"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.update})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isclose(summary["final/val_loss"], metrics["val"]["loss"], rel_tol=1e-6)
    assert len(final) == 18 and all(math.isclose(summary[tag], points[-1][1], rel_tol=1e-6)
                                    for tag, points in final.items())  # the final metrics: in the summary
    assert str(summary["gradient_health/summary"]).startswith("gradients:")
    assert "linear1" in str(summary["model"])

    [run_record] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["model"]["hidden_sizes"] == [16] and config["logger"] == ["tensorboard", "wandb"]
    assert [r.artifact.type for r in records if r.WhichOneof("record_type") == "artifact"] == ["model"]
    images = {path.name for path in (offline / "files" / "media" / "images").rglob("*.png")}
    assert any(name.startswith("gradient_flow") for name in images) and any("relu" in name for name in images)

"""``logger=[mlflow]``: the run as an MLflow run, through the real ``mlflow`` client.

Where: ``tracking.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a local store in the run
directory's parent: ``mlflow.db`` (SQLite: MLflow 3 refuses its old ``./mlruns`` file store unless
told) with the artifacts in ``mlruns/`` beside it (``mlflow ui --backend-store-uri sqlite:///<parent>/mlflow.db``).
What: the composed config as params, every scalar at its step (one ``log_batch`` per flush), texts
as artifacts under ``texts/`` (the verdict summary also as a tag), images at their steps, the final
metrics, and at the end the run's files: metrics.json, the checkpoint (best.pt, else last.pt),
the label and preprocessing files, gradient_flow.png and the config. ``mlflow_run.json`` in the run
directory names the MLflow run, so a resume in that directory goes on in the same MLflow run.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mlpkit.rundir import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    GRADIENT_FLOW_FIGURE,
    LABELS_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    PREPROCESSING_FILE,
    RUN_CONFIG,
)
from mlpkit.tracker_values import flat_config, keep_text

RUN_FILE = "mlflow_run.json"  # the MLflow run this run directory logs to: tracking URI and run id
LOCAL_STORE = "mlflow.db"     # the default store, in the run directory's parent
LOCAL_ARTIFACTS = "mlruns"    # and its artifacts, beside it
FLUSH_SECONDS = 15.0          # at most this long between a scalar being logged and it being sent
# A tracker must not hold a run up for minutes: MLflow's own HTTP defaults retry 7 times over ~4 minutes
# with a 120 s timeout. A user's own settings of these variables win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
STATUS = {"completed": "FINISHED", "stopped": "KILLED"}  # metrics.json's status -> the MLflow run's; else FAILED
SUMMARY_TAG = "gradient_health/summary"  # also a tag: the runs table shows the verdict


@contextmanager
def quiet_retries() -> Iterator[None]:
    """urllib3 logs a warning per retry of an unreachable server: the run's one warning, if the
    tracker gives up, is mlpkit.loggers'."""
    connections = logging.getLogger("urllib3.connectionpool")
    level = connections.level
    connections.setLevel(logging.ERROR)
    try:
        yield
    finally:
        connections.setLevel(level)


def quietly(method):
    """The method, with urllib3's retry warnings held back (``quiet_retries``)."""
    @functools.wraps(method)
    def quiet(*args, **kwargs):
        with quiet_retries():
            return method(*args, **kwargs)
    return quiet


class MLflowLogger:
    @quietly
    def __init__(self, run_dir: Path, settings: dict[str, Any], cfg: DictConfig, resumed: bool = False):
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        # mlflow takes a second to import: only for a run that logs to it
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir)
        self.tracking_uri = settings.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{self.run_dir.resolve().parent / LOCAL_STORE}"
        self.client = MlflowClient(self.tracking_uri)
        self.run_id = self.continued_run() if resumed else None
        if self.run_id is None:
            self.run_id = self.start_run(settings["experiment"], settings.get("run_name") or self.run_dir.name)
            self.log_params(flat_config(cfg))
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self.pending: list[tuple[int, int, dict[str, float]]] = []  # (step, time in ms, values) not yet sent
        self.texts: dict[str, str] = {}  # tag -> its text, sent as texts/<tag>.txt
        self.unsent_texts: set[str] = set()
        self.next_flush = time.monotonic() + FLUSH_SECONDS

    def start_run(self, experiment_name: str, run_name: str) -> str:
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            local = self.tracking_uri.startswith("sqlite:///") and self.tracking_uri.endswith(LOCAL_STORE)
            artifacts = (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / LOCAL_ARTIFACTS).as_uri() \
                if local else None  # else the server's own artifact root
            experiment_id = self.client.create_experiment(experiment_name, artifact_location=artifacts)
        run = self.client.create_run(experiment_id, run_name=run_name,
                                     tags={"mlpkit.run_dir": str(self.run_dir.resolve())})
        (self.run_dir / RUN_FILE).write_text(json.dumps(
            {"tracking_uri": self.tracking_uri, "run_id": run.info.run_id, "experiment_id": experiment_id}) + "\n")
        return run.info.run_id

    def continued_run(self) -> str | None:
        """The MLflow run this directory logged to before, when it logged to this store."""
        try:
            saved = json.loads((self.run_dir / RUN_FILE).read_text())
        except (OSError, ValueError):
            return None
        return saved.get("run_id") if saved.get("tracking_uri") == self.tracking_uri else None

    def log_params(self, params: dict[str, Any]) -> None:
        """Params in batches of MLflow's limit, each value cut to its length limit."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        entries = [Param(key, truncate(str(value), MAX_PARAM_VAL_LENGTH)) for key, value in params.items()]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start:start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.pending.append((step, int(time.time() * 1000), values))
        if time.monotonic() >= self.next_flush:
            self.flush()

    @quietly
    def flush(self) -> None:
        """The kept scalars in ``log_batch`` calls of MLflow's limit, and the texts logged since."""
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        metrics = [Metric(tag, float(value), timestamp, step)
                   for step, timestamp, values in self.pending for tag, value in values.items()]
        self.pending = []
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
        for tag in sorted(self.unsent_texts):
            self.client.log_text(self.run_id, self.texts[tag] + "\n", f"texts/{tag}.txt")
        self.unsent_texts.clear()
        self.next_flush = time.monotonic() + FLUSH_SECONDS

    @quietly
    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        """Kept per tag and sent as ``texts/<tag>.txt`` when flushed (LINE_TEXTS: a line per step
        added); the verdict summary is a tag too."""
        keep_text(self.texts, tag, text, step)
        self.unsent_texts.add(tag)
        if tag == SUMMARY_TAG:
            from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

            self.client.set_tag(self.run_id, SUMMARY_TAG, truncate(text, MAX_TAG_VAL_LENGTH))

    @quietly
    def log_image(self, tag: str, rgb: Any, step: int) -> None:
        self.client.log_image(self.run_id, rgb, key=tag, step=step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int = 0) -> None:
        """The final metrics at the run's last step (the config went in as params at the start)."""
        self.log_scalars(metrics, step)

    @quietly
    def close(self) -> None:
        """Everything kept, the run's files as artifacts, and the run's status from metrics.json."""
        self.flush()
        for path, folder in self.run_files():
            self.client.log_artifact(self.run_id, str(path), folder)
        self.client.set_terminated(self.run_id, status=self.status())

    def run_files(self) -> list[tuple[Path, str | None]]:
        """(file, artifact folder) for the run's files that exist now."""
        checkpoints = self.run_dir / CHECKPOINT_DIR
        checkpoint = next((checkpoints / name for name in (BEST_CHECKPOINT, LAST_CHECKPOINT)
                           if (checkpoints / name).is_file()), None)
        files = [(self.run_dir / name, None) for name in (METRICS_FILE, LABELS_FILE, PREPROCESSING_FILE,
                                                           GRADIENT_FLOW_FIGURE)]
        files += [(self.run_dir / RUN_CONFIG, str(Path(RUN_CONFIG).parent))]
        files += [(checkpoint, CHECKPOINT_DIR)] if checkpoint is not None else []
        return [(path, folder) for path, folder in files if path.is_file()]

    def status(self) -> str:
        try:
            status = json.loads((self.run_dir / METRICS_FILE).read_text()).get("status")
        except (OSError, ValueError):
            status = None
        return STATUS.get(status, "FAILED")

    # TensorBoard's own views: MLflow has none of these
    def log_histogram(self, tag: str, values: Any, step: int) -> None:
        pass

    def log_graph(self, model: Any, example_input: Any) -> None:
        pass

    def log_layout(self, charts: dict[str, dict[str, list[str]]]) -> None:
        pass


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in "..." when cut."""
    return text if len(text) <= limit else text[:limit - 3] + "..."

"""``logger=[csv]``: every scalar of the run in one tidy table, ``metrics.csv`` in the run directory.

Long format, one row per value: ``step,tag,value``. The tags differ from step to step (loss/train on
logged steps, the validation metrics once an epoch, the per-layer diagnostics on measured steps, the
final metrics once), so wide rows would be mostly empty, and a CSV's header cannot gain a column that
first appears mid-run; long rows append as they come. ``pandas.read_csv(path)`` reads it in one call,
``.pivot_table(index="step", columns="tag", values="value")`` makes it wide.

Texts, histograms and images are not written here: the run directory holds them already (train.log
the verdicts and their summary, .hydra/config.yaml the config, metrics.json the gradient health,
gradient_flow.png the figure), and TensorBoard the rest.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

METRICS_CSV = "metrics.csv"
COLUMNS = ("step", "tag", "value")
FLUSH_SECONDS = 5.0  # at most this long between a value being logged and it being in the file (as TensorBoard)
BUFFER_BYTES = 1 << 16


class CSVLogger:
    """Keeps the scalars (a list append on a training step); ``flush()`` writes them through one
    buffered file and hands them to the operating system. A run resumed in its own directory
    (``purge_step``) first drops the rows it wrote at or after its checkpoint's step, as TensorBoard
    hides those events, then appends."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        self.path = Path(run_dir) / METRICS_CSV
        if purge_step is not None and self.path.is_file():
            keep_rows_before(self.path, purge_step)
            self.file = open(self.path, "a", newline="", buffering=BUFFER_BYTES)  # noqa: SIM115 (open for the run)
        else:
            self.file = open(self.path, "w", newline="", buffering=BUFFER_BYTES)  # noqa: SIM115
            csv.writer(self.file).writerow(COLUMNS)
        self.writer = csv.writer(self.file)
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.next_flush = time.monotonic() + FLUSH_SECONDS

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.pending.append((step, values))
        if time.monotonic() >= self.next_flush:
            self.flush()

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int = 0) -> None:
        """The final metrics as rows at the run's last step (the config is in .hydra/config.yaml)."""
        self.log_scalars(metrics, step)

    def flush(self) -> None:
        self.writer.writerows((step, tag, float(value)) for step, values in self.pending
                              for tag, value in values.items())
        self.pending = []
        self.file.flush()
        self.next_flush = time.monotonic() + FLUSH_SECONDS

    def close(self) -> None:
        if not self.file.closed:
            self.flush()
            self.file.close()

    # the run directory holds these already (see the module's docstring)
    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        pass

    def log_histogram(self, tag: str, values: Any, step: int) -> None:
        pass

    def log_image(self, tag: str, rgb: Any, step: int) -> None:
        pass

    def log_graph(self, model: Any, example_input: Any) -> None:
        pass

    def log_layout(self, charts: dict[str, dict[str, list[str]]]) -> None:
        pass


def keep_rows_before(path: Path, purge_step: int) -> None:
    """Rewrite ``path`` (atomically) without its rows at or after ``purge_step``; a last line cut
    short by a kill is dropped too."""
    kept = io.StringIO()
    writer = csv.writer(kept)
    with open(path, newline="") as file:
        rows = csv.reader(file)
        writer.writerow(next(rows, COLUMNS))
        for row in rows:
            if len(row) == len(COLUMNS) and row[0].isdigit() and int(row[0]) < purge_step and is_float(row[2]):
                writer.writerow(row)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(kept.getvalue(), newline="")
    temporary.replace(path)


def is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

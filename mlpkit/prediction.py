"""New rows of a table file (CSV/TSV, compressed or not, Parquet, Feather), predicted with a trained run.

`python scripts/predict.py run=<run dir> input=new.csv output=pred.csv` (also `mlpkit-predict`);
configs/predict.yaml holds its keys. The run is mlpkit.finished_run.Run; this command reads the
input file's feature columns (encoded and standardised with the run's preprocessing.json, as
mlpkit.model_inputs does a DataFrame's) and writes the table. Torch is imported only once the run
directory has been checked, so a mistyped path costs a fraction of a second.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from mlpkit.config import CONFIG_DIR, exit_on_config_error, given, report_config_errors
from mlpkit.errors import ConfigError, DataError
from mlpkit.finished_run import Run
from mlpkit.rundir import (
    RUN_FILES,
    RUN_FOLDERS,
    find_checkpoint,
    find_run,
    read_preprocessing,
    run_file,
    same_file,
)
from mlpkit.trained_model import TrainedModel, class_probabilities

OUTPUT_ALLOWED = "a file to write the predictions to"
RUN_FILES_ALLOWED = (f"a file that is not the run's own (anything in {' or '.join(f'{f}/' for f in RUN_FOLDERS)}, "
                     f"or one of its {', '.join(RUN_FILES)} files)")
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's CSV injection list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def read_feature_rows(path: Path, feature_names: Sequence[str], delimiter: str = ",",
                      preprocessing: dict[str, Any] | None = None, standardize: bool = False) -> np.ndarray:
    """The run's input columns of a table file (CSV/TSV, compressed or not, Parquet, Feather: by
    suffix) as float32 (N, F), one-hot encoded as the run's preprocessing.json says; other columns
    are ignored. ``standardize``: with its feature_mean and feature_std applied in float64, as training
    applied them, before the float32 cast (float32 holds 1e8 in steps of 8: 1e8 + noise keeps its noise).

    A missing file or column, a cell that is not a finite number, or a category the training file
    did not hold is one DataError naming the file, line (or row) and column; nothing is dropped, and
    a missing cell is filled in only as the run's data.missing filled the training rows (its
    preprocessing.json's "missing": fill values, indicator columns).
    """
    from mlpkit.data.columns import Rows, encode_features
    from mlpkit.data.formats import NULLS, TableFile
    from mlpkit.data.missing import INDICATOR_SUFFIX, complete_rows
    from mlpkit.data.table import check_delimiter
    from mlpkit.model_inputs import standardize_columns

    if not path.is_file():
        raise DataError("input", path, f"{path.resolve()} {'is a directory' if path.is_dir() else 'does not exist'}")
    preprocessing = preprocessing or {}
    columns = list(preprocessing.get("input_columns") or feature_names)
    categories = dict(preprocessing.get("categories") or {})
    record = preprocessing.get("missing") or {}
    table_file = TableFile(path, "input", check_delimiter(delimiter, "delimiter"), "delimiter",
                           missing_values=list(record.get("missing_values") or NULLS))
    header = list(table_file.schema().names)
    missing = [name for name in columns if name not in header]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        where = "line 1" if table_file.kind == "text" else "columns"
        raise DataError("input", path, f"{where}: no column {shown}; the run was trained on "
                        f"{len(columns)} feature columns: {', '.join(columns[:8])}"
                        f"{', ...' if len(columns) > 8 else ''}")
    import pyarrow as pa

    types = {name: pa.string() if name in categories else pa.float64() for name in columns}
    rows = Rows([table_file], [table_file.read(columns, types if table_file.kind == "text" else None)])
    offsets = preprocessing["feature_mean"] if standardize else None  # subtracted in float64
    values, names, _plan = encode_features(rows, columns, categories=categories,
                                           hint=lambda column: "the run reads it as a number", offsets=offsets,
                                           missing=record.get("strategy", "error"))
    values = complete_rows(values, names, record, offsets)  # filled in as training did, indicators added
    names = [*names, *(f"{name}{INDICATOR_SUFFIX}" for name in record.get("indicators") or [])]
    if standardize:
        std = np.asarray(preprocessing["feature_std"], dtype=np.float64)
        # color=red: color; x__missing: x
        sources = [name if name in columns else name.removesuffix(INDICATOR_SUFFIX).partition("=")[0]
                   for name in names]

        def beyond(problems: list[tuple[int, int]]) -> Exception:
            row, column = problems[0]  # the first column, as the reader checks them
            return rows.problem(row, sources[column], lambda cell: (
                f"{cell.strip()!r} standardised with the run's feature_std {std[column]:.6g} is beyond float32's "
                "range; expected values of the scale the run trained on"))

        standardize_columns(values, std, values, beyond)
    return values


def prediction_table(trained: TrainedModel, logits: Any, class_names: Sequence[str]
                     ) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the predicted class label and one probability per class, or the value."""
    objective = trained.objective
    predicted = objective.predict(logits).cpu().numpy()
    if not objective.is_classification:
        header = ["prediction"] if predicted.shape[1] == 1 else \
            [f"prediction_{i}" for i in range(predicted.shape[1])]
        spec = value_format(predicted, objective.target_std)
        return header, [[format(value, spec) for value in row] for row in predicted]
    probabilities = class_probabilities(objective, predicted)
    labels = objective.predict_class(logits).cpu().numpy()
    header = [spreadsheet_cell(name) for name in ("prediction", *(f"probability_{name}" for name in class_names))]
    cells = [spreadsheet_cell(str(name)) for name in class_names]
    return header, [[cells[label], *(f"{p:.6g}" for p in row)] for label, row in zip(labels, probabilities)]


def value_format(predicted: np.ndarray, target_std: float) -> str:
    """A format for regression values with 6 significant digits of their spread, however far from 0
    they sit: a target of 1e8 + small values is written 100000002.53125, not 1e+08."""
    largest = float(np.abs(predicted).max()) if predicted.size else 0.0
    magnitude = math.log10(largest / abs(target_std)) if largest > 0 and target_std else 0.0
    return f".{min(17, 6 + max(0, math.ceil(magnitude)))}g"


def spreadsheet_cell(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows as text: a label starting with = + - @ (or a tab,
    a carriage return) gets a leading ', as OWASP advises; a number (-1, -0.25) stays a number."""
    if text.startswith(FORMULA_START) and not NUMBER.fullmatch(text):
        return "'" + text
    return text


def predict_csv(run: Any, input: Any, output: Any = None, checkpoint: str = "auto", delimiter: str = ",",
                device: str = "cpu") -> Path | None:
    """Predict every row of ``input`` with a trained run; write the table to ``output`` (or stdout)."""
    run_dir = find_run(run)
    checkpoint_path = find_checkpoint(run_dir, str(checkpoint))
    preprocessing = read_preprocessing(run_dir)
    if input is None or str(input).strip() in ("", "???"):
        raise ConfigError("input", input, "a CSV file with the run's feature columns, e.g. input=new.csv")
    path = output_path(output, Path(str(input)).expanduser(), run_dir)  # refused before any work
    names = list(preprocessing["feature_names"])
    features = read_feature_rows(Path(str(input)).expanduser(), names, str(delimiter), preprocessing,
                                 standardize=True)

    class_names = list(preprocessing.get("class_names") or [])
    trained, logits = Run(run_dir).outputs(features, str(checkpoint), str(device))
    header, rows = prediction_table(trained, logits, class_names)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if path is None:
        sys.stdout.write(text.getvalue())
        return None
    write_replacing(path, text.getvalue(), output)
    print(f"wrote {len(rows)} predictions to {path} (run {run_dir}, {checkpoint_path.name}, epoch {trained.epoch})")
    return path


def output_path(output: Any, input_path: Path, run_dir: Path) -> Path | None:
    """The file ``output`` names, checked before anything is read or written; None for stdout.

    Refused: a directory, the input (by any name: a hard link, a symlink, another spelling) and
    the run's own files (its checkpoints/ and .hydra/, metrics.json, labels.json, ...), whose loss
    would cost the run. Any other existing file is replaced, as a shell's > would."""
    if output is None or str(output) == "-":
        return None
    path = Path(str(output)).expanduser()
    if path.is_dir() or str(output).endswith(("/", os.sep)):
        raise ConfigError("output", output, OUTPUT_ALLOWED, f"{path.resolve()} is a directory" if path.is_dir()
                          else "a name ending in / names a directory")
    if same_file(path, input_path) or path.resolve() == input_path.resolve():
        raise ConfigError("output", output, f"a file other than input={input_path}", f"it is the input file "
                          f"{input_path}: writing the predictions there would overwrite the rows they were made from")
    own = run_file(path, run_dir)
    if own is not None:
        raise ConfigError("output", output, RUN_FILES_ALLOWED, f"it is {own} of the run {run_dir}: writing "
                          "there would destroy what the run wrote")
    blocking = next((parent for parent in path.resolve().parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError("output", output, OUTPUT_ALLOWED, f"{blocking} is a file, so no folder can be made there")
    return path


def write_replacing(path: Path, text: str, output: Any) -> None:
    """``path`` replaced by ``text`` in one step: a temporary file beside it, then os.replace, so a
    process killed mid-write leaves the old table or the new one, never half of one. A symlink
    stays a symlink: the file it names is replaced."""
    target = path.resolve()
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as error:
        raise ConfigError("output", output, OUTPUT_ALLOWED, f"could not write {target}: "
                          f"{error.strerror or error}") from None
    finally:
        temporary.unlink(missing_ok=True)


# --- the command line -----------------------------------------------------------------------------
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def _predict(cfg: DictConfig) -> None:
    exit_on_config_error(predict_csv, given(cfg, "run"), given(cfg, "input"), cfg.output, cfg.checkpoint,
                         cfg.delimiter, cfg.device)


def predict_main() -> None:
    """`python scripts/predict.py run=<run dir> input=new.csv output=pred.csv`."""
    report_config_errors(_predict, "predict")

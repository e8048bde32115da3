"""New rows of a table file (CSV/TSV, compressed or not, Parquet, Feather), predicted with a trained run.

`python scripts/predict.py run=<run dir> input=new.csv output=pred.csv` (also `mlpkit-predict`);
configs/predict.yaml holds its keys. The run is found and loaded through mlpkit.runs; the
input's feature columns are encoded and standardised with the run's preprocessing.json. Torch is imported only
once the run directory has been checked, so a mistyped path costs a fraction of a second.
"""
from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from mlpkit.config import CONFIG_DIR, exit_on_config_error, given, report_config_errors
from mlpkit.errors import ConfigError, DataError
from mlpkit.runs import (
    TrainedRun,
    find_checkpoint,
    find_run,
    load_trained,
    logits_of,
    read_preprocessing,
    run_config,
)


def read_feature_rows(path: Path, feature_names: Sequence[str], delimiter: str = ",",
                      preprocessing: dict[str, Any] | None = None) -> np.ndarray:
    """The run's input columns of a table file (CSV/TSV, compressed or not, Parquet, Feather: by
    suffix) as float32 (N, F), one-hot encoded as the run's preprocessing.json says; other columns
    are ignored.

    A missing file or column, a cell that is not a finite number, or a category the training file
    did not hold is one DataError naming the file, line (or row) and column; nothing is dropped or
    filled in.
    """
    from mlpkit.data.columns import Rows, encode_features
    from mlpkit.data.formats import TableFile
    from mlpkit.data.table import check_delimiter

    if not path.is_file():
        raise DataError("input", path, f"{path.resolve()} {'is a directory' if path.is_dir() else 'does not exist'}")
    preprocessing = preprocessing or {}
    columns = list(preprocessing.get("input_columns") or feature_names)
    categories = dict(preprocessing.get("categories") or {})
    table_file = TableFile(path, "input", check_delimiter(delimiter, "delimiter"), "delimiter")
    header = list(table_file.schema().names)
    missing = [name for name in columns if name not in header]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        where = "line 1" if table_file.kind == "text" else "columns"
        raise DataError("input", path, f"{where}: no column {shown}; the run was trained on "
                        f"{len(columns)} feature columns: {', '.join(columns[:8])}"
                        f"{', ...' if len(columns) > 8 else ''}")
    import pyarrow as pa

    types = {name: pa.string() if name in categories else pa.float32() for name in columns}
    rows = Rows([table_file], [table_file.read(columns, types if table_file.kind == "text" else None)])
    values, _names, _plan = encode_features(rows, columns, categories=categories,
                                            hint=lambda column: "the run reads it as a number")
    return values


def prediction_table(trained: TrainedRun, features: np.ndarray, class_names: Sequence[str]
                     ) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the predicted class label and one probability per class, or the value."""
    import torch

    parameter = next(trained.model.parameters())
    logits = logits_of(trained.model, torch.as_tensor(features, device=parameter.device))
    objective = trained.objective
    predicted = objective.predict(logits).cpu().numpy()
    if not objective.is_classification:
        header = ["prediction"] if predicted.shape[1] == 1 else \
            [f"prediction_{i}" for i in range(predicted.shape[1])]
        return header, [[f"{value:.6g}" for value in row] for row in predicted]
    if objective.head == "sigmoid":  # one output: the probability of class_names[1]
        predicted = np.concatenate([1 - predicted, predicted], axis=1)
    labels = objective.predict_class(logits).cpu().numpy()
    header = ["prediction", *(f"probability_{name}" for name in class_names)]
    return header, [[str(class_names[label]), *(f"{p:.6g}" for p in row)] for label, row in zip(labels, predicted)]


def predict_csv(run: Any, input: Any, output: Any = None, checkpoint: str = "auto", delimiter: str = ",",
                device: str = "cpu") -> Path | None:
    """Predict every row of ``input`` with a trained run; write the table to ``output`` (or stdout)."""
    run_dir = find_run(run)
    checkpoint_path = find_checkpoint(run_dir, str(checkpoint))
    preprocessing = read_preprocessing(run_dir)
    if input is None or str(input).strip() in ("", "???"):
        raise ConfigError("input", input, "a CSV file with the run's feature columns, e.g. input=new.csv")
    if output is not None and str(output) != "-" and Path(str(output)).expanduser().resolve() == \
            Path(str(input)).expanduser().resolve():
        raise ConfigError("output", output, f"a file other than input={input}", "writing the predictions "
                          "there would overwrite the rows they were made from")
    names = list(preprocessing["feature_names"])
    features = read_feature_rows(Path(str(input)).expanduser(), names, str(delimiter), preprocessing)
    features -= np.asarray(preprocessing["feature_mean"], dtype=np.float32)
    features /= np.asarray(preprocessing["feature_std"], dtype=np.float32)

    from mlpkit.acceleration import resolve_device

    torch_device = resolve_device(str(device))
    class_names = list(preprocessing.get("class_names") or [])
    trained = load_trained(run_dir, run_config(run_dir), checkpoint_path, preprocessing["task"], class_names,
                           len(names), preprocessing["target_mean"], preprocessing["target_std"], torch_device)
    header, rows = prediction_table(trained, features, class_names)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if output is None or str(output) == "-":
        sys.stdout.write(text.getvalue())
        return None
    path = Path(str(output)).expanduser()
    if path.is_dir():
        raise ConfigError("output", output, "a file to write the predictions to", f"{path.resolve()} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.getvalue())
    print(f"wrote {len(rows)} predictions to {path} (run {run_dir}, {checkpoint_path.name}, epoch {trained.epoch})")
    return path


# --- the command line -----------------------------------------------------------------------------
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def _predict(cfg: DictConfig) -> None:
    exit_on_config_error(predict_csv, given(cfg, "run"), given(cfg, "input"), cfg.output, cfg.checkpoint,
                         cfg.delimiter, cfg.device)


def predict_main() -> None:
    """`python scripts/predict.py run=<run dir> input=new.csv output=pred.csv`."""
    report_config_errors(_predict, "predict", new_keys=False)

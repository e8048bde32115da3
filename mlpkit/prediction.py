"""New rows of a CSV file, predicted with a trained run.

`python scripts/predict.py run=<run dir> input=new.csv output=pred.csv` (also `mlpkit-predict`);
configs/predict.yaml holds its keys. The run is found and loaded through mlpkit.runs; the
input's feature columns are standardised with the run's preprocessing.json. Torch is imported only
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


def read_feature_rows(path: Path, feature_names: Sequence[str], delimiter: str = ",") -> np.ndarray:
    """The named feature columns of a CSV file as float32 (N, F); other columns are ignored.

    The file is read like a training table (mlpkit.data.table.read_rows); a missing file or column,
    or a cell that is not a finite number, is one DataError naming the file, line and column;
    nothing is dropped or filled in.
    """
    from mlpkit.data.table import finite_number, read_rows

    if not path.is_file():
        raise DataError("input", path, f"{path.resolve()} {'is a directory' if path.is_dir() else 'does not exist'}")
    header, rows = read_rows(path, delimiter, key="input", delimiter_key="delimiter")
    missing = [name for name in feature_names if name not in header]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError("input", path, f"line 1: no column {shown}; the run was trained on "
                        f"{len(feature_names)} feature columns: {', '.join(feature_names[:8])}"
                        f"{', ...' if len(feature_names) > 8 else ''}")
    columns = [header.index(name) for name in feature_names]
    values = np.empty((len(rows), len(columns)), dtype=np.float32)
    for index, (line, row) in enumerate(rows):
        for position, column in enumerate(columns):
            value = finite_number(row[column])
            if value is None:
                cell = row[column]
                problem = "empty cell" if cell.strip() == "" else f"{cell!r} is not a finite number"
                raise DataError("input", path, f"line {line}, column '{feature_names[position]}': {problem}")
            values[index, position] = value
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
    delimiter = "\t" if delimiter == "\\t" else str(delimiter)
    if output is not None and str(output) != "-" and Path(str(output)).expanduser().resolve() == \
            Path(str(input)).expanduser().resolve():
        raise ConfigError("output", output, f"a file other than input={input}", "writing the predictions "
                          "there would overwrite the rows they were made from")
    names = list(preprocessing["feature_names"])
    features = read_feature_rows(Path(str(input)).expanduser(), names, delimiter)
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

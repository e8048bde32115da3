"""A finished run as a file that runs without mlpkit: ONNX (onnxruntime, any ONNX runtime) or TorchScript
(``torch.jit.load``), with the numeric preprocessing inside the graph.

`python scripts/export.py run=<run dir> format=onnx|torchscript` (also ``mlpkit-export``), or
``export(run_dir, "onnx")``. The exported graph takes raw feature rows, float32 (batch, features), the
columns in the order of preprocessing.json's ``feature_names``: after one-hot encoding, which stays
outside the graph (the JSON beside the file names each categorical column's categories). Inside it:
missing-value filling (``fill_values``), standardisation with the run's feature_mean and feature_std,
the model and its head. Out: one probability per class (a sigmoid head's p as the two columns 1 - p, p,
as ``Run.predict_proba`` gives them), or the regression value in the target's units (float64).

Precision: the graph computes in float32, as the model trained. The float64 feature_mean is
subtracted as two float32 constants, its float32 part and the rest, so a column of 1e8 + noise is
centred without losing the mean's digits; but the input is float32, which holds 1e8 only in steps of 8:
columns whose spread float32 cannot resolve at their magnitude are named in the JSON
(``precision.coarse_features``) and in a warning. Regression values are scaled back in float64.
ONNX export needs onnx and onnxscript (torch's dynamo exporter), imported only when asked for.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlpkit.config import CONFIG_DIR, exit_on_config_error, given, report_config_errors
from mlpkit.errors import ConfigError
from mlpkit.rundir import find_checkpoint, find_run, read_metrics, run_file, write_atomically

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format -> the default file's suffix
ONNX_OPSET = 18  # torch's dynamo exporter writes opset 18 natively (torchlib); onnxruntime runs it since 1.14
EXPORT_DIR = "export"  # the default: <run dir>/export/model.onnx (model.pt), beside the run's own files
EXPORT_NAME = "model"
INPUT_NAME = "features"
INSTALL_EXPORT = "pip install 'mlpkit[export]'"
ONNX_PACKAGES = ("onnx", "onnxscript")  # what torch.onnx.export(dynamo=True) imports
# A column is coarse when float32's step at its values (|mean| + 4 std) is more than this share of its
# std: a float32 input then moves its standardised value by more than 1e-3.
COARSE_STEP = 1e-3
EXAMPLE_ROWS = 3  # the rows traced: torch.export specialises a dimension of 0 or 1, so more than one


class MissingPackages(ConfigError, ImportError):
    """A format whose packages are not installed: a ConfigError for the command's one line, an
    ImportError for Python code that checks for missing packages."""


# --- the graph ------------------------------------------------------------------------------------
class ExportedModel(nn.Module):
    """Raw feature rows (float32, in preprocessing.json's feature_names order) -> class probabilities,
    or regression values in the target's units (float64)."""

    def __init__(self, model: nn.Module, head: str, preprocessing: dict[str, Any], fill: np.ndarray | None = None):
        super().__init__()
        self.model = exportable(model)
        self.head = head
        mean = np.asarray(preprocessing["feature_mean"], dtype=np.float64)
        mean_high = mean.astype(np.float32)
        self.register_buffer("mean_high", torch.from_numpy(mean_high))
        # what float32 loses of the mean: x - mean_high is exact for x near it, then the rest comes off
        self.register_buffer("mean_low", torch.from_numpy((mean - mean_high).astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(np.asarray(preprocessing["feature_std"], dtype=np.float32)))
        self.register_buffer("fill", None if fill is None else torch.from_numpy(np.asarray(fill, dtype=np.float32)))
        self.target_mean = float(preprocessing.get("target_mean", 0.0))
        self.target_std = float(preprocessing.get("target_std", 1.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.fill is not None:  # decided when the graph is traced: no branch in the file
            features = torch.where(torch.isnan(features), self.fill, features)
        standardized = ((features - self.mean_high) - self.mean_low) / self.std
        logits = self.model.logits(standardized)
        if self.head == "softmax":
            return logits.softmax(dim=-1)
        if self.head == "sigmoid":
            positive = logits.sigmoid()
            return torch.cat([1 - positive, positive], dim=-1)
        return logits.double() * self.target_std + self.target_mean


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose modules every exporter knows: RReLU, which draws its slope
    while training, is the LeakyReLU of slope (lower + upper) / 2 in eval (torch's own definition), and
    the ONNX exporter has no RReLU."""
    import copy

    copied = copy.deepcopy(model).eval()
    for name, module in list(copied.named_children()):
        if isinstance(module, nn.RReLU):
            setattr(copied, name, nn.LeakyReLU((module.lower + module.upper) / 2))
    return copied


def fill_values(preprocessing: dict[str, Any]) -> np.ndarray | None:
    """The value each feature's missing (NaN) cells become inside the graph, one per feature_names
    entry (NaN: a feature that is not filled), or None when the run fills nothing.

    Missing-value filling is not in preprocessing.json yet: None. Where it lands, this function
    reads it; ExportedModel applies it before standardising."""
    return None


def coarse_features(preprocessing: dict[str, Any]) -> list[str]:
    """The features whose spread a float32 input cannot resolve at their magnitude (1e8 + noise)."""
    mean = np.abs(np.asarray(preprocessing["feature_mean"], dtype=np.float64))
    std = np.asarray(preprocessing["feature_std"], dtype=np.float64)
    step = np.spacing((mean + 4 * std).astype(np.float32)).astype(np.float64)
    return [name for name, coarse in zip(preprocessing["feature_names"], step > COARSE_STEP * std) if coarse]


# --- writing the files ----------------------------------------------------------------------------
def export(run_dir: str | Path, format: str = "onnx", path: str | Path | None = None, checkpoint: str = "auto",
           overwrite: bool = False) -> Path:
    """Write a finished run's model as ``format`` (onnx or torchscript) to ``path`` (default
    <run dir>/export/model.onnx or model.pt) and its description to ``<path>.json``; returns ``path``.
    Refused before anything is written: a run without metrics.json or the checkpoint, an unknown
    format, an existing file without ``overwrite=True``, a file of the run's own."""
    from mlpkit.acceleration import resolve_device
    from mlpkit.rundir import read_preprocessing, run_config
    from mlpkit.trained_model import label_array, load_model

    run_dir = find_run(run_dir)
    read_metrics(run_dir)  # an unfinished run is refused
    if format not in FORMATS:
        raise ConfigError("format", format, " or ".join(FORMATS))
    checkpoint_path = find_checkpoint(run_dir, str(checkpoint))
    target = output_path(path, run_dir, format, overwrite)
    if format == "onnx":
        require_onnx_packages()
    preprocessing = read_preprocessing(run_dir)
    trained = load_model(run_config(run_dir), checkpoint_path, preprocessing, resolve_device("cpu"))
    exported = ExportedModel(trained.model, trained.objective.head, preprocessing, fill_values(preprocessing)).eval()
    coarse = coarse_features(preprocessing)
    if coarse:
        warnings.warn(f"the export takes float32 rows, which cannot resolve the spread of {len(coarse)} feature(s) "
                      f"at their magnitude: {', '.join(coarse[:5])}{', ...' if len(coarse) > 5 else ''}",
                      stacklevel=2)
    example = torch.as_tensor(np.tile(np.asarray(preprocessing["feature_mean"], dtype=np.float32),
                                      (EXAMPLE_ROWS, 1)))
    classes = label_array(preprocessing.get("class_names") or []).tolist() \
        if trained.objective.is_classification else None
    description = describe(format, target, preprocessing, trained, classes, coarse, run_dir, checkpoint_path)
    write_atomically(target, lambda temporary: WRITERS[format](exported, example, temporary, description))
    write_atomically(sidecar(target), lambda temporary: temporary.write_text(json.dumps(description, indent=2) + "\n"))
    return target


def output_path(path: Any, run_dir: Path, format: str, overwrite: bool) -> Path:
    """The file to write, checked: a directory given gets model.<suffix> inside; an existing file (or
    its JSON) is replaced only with ``overwrite``; the run's own files never."""
    if not isinstance(overwrite, bool):
        raise ConfigError("overwrite", overwrite, "true or false")
    name = EXPORT_NAME + FORMATS[format]
    if path is None or str(path).strip() == "":
        target = run_dir / EXPORT_DIR / name
    else:
        target = Path(str(path)).expanduser()
        if target.is_dir() or str(path).endswith(("/", os.sep)):
            target = target / name
    own = run_file(target, run_dir)
    if own is not None:
        raise ConfigError("path", path, "a file that is not the run's own", f"it is {own} of the run {run_dir}: "
                          "writing there would destroy what the run wrote")
    for file in (target, sidecar(target)):
        if file.is_dir():
            raise ConfigError("path", path, "a file to write the model to", f"{file.resolve()} is a directory")
        if file.exists() and not overwrite:
            raise ConfigError("path", path if path is not None else str(target),
                              "a file that does not exist yet, or overwrite=true to replace it",
                              f"{file.resolve()} exists")
    blocking = next((parent for parent in target.resolve().parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError("path", path, "a file to write the model to", f"{blocking} is a file, so no folder "
                          "can be made there")
    return target


def sidecar(target: Path) -> Path:
    """The JSON beside an exported file: model.onnx -> model.onnx.json."""
    return target.with_name(target.name + ".json")


def require_onnx_packages() -> None:
    """MissingPackages naming the install command when onnx or onnxscript is missing."""
    from importlib.util import find_spec

    missing = []
    for name in ONNX_PACKAGES:
        try:
            if find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a module made unimportable (sys.modules[name] = None)
            missing.append(name)
    if missing:
        raise MissingPackages("format", "onnx", "torchscript, or onnx with its packages installed",
                              f"ONNX export needs {' and '.join(missing)}, not installed: {INSTALL_EXPORT}")


def write_onnx(exported: ExportedModel, example: torch.Tensor, temporary: Path, description: dict[str, Any]) -> None:
    """The dynamo exporter (the TorchScript-based one is deprecated): one file, weights inside."""
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals, not the user's concern
        program = torch.onnx.export(exported, (example,), input_names=[INPUT_NAME],
                                    output_names=[description["output"]["name"]], opset_version=ONNX_OPSET,
                                    dynamo=True, dynamic_shapes={"features": {0: batch}}, verbose=False)
    program.save(str(temporary), external_data=False)


def write_torchscript(exported: ExportedModel, example: torch.Tensor, temporary: Path,
                      description: dict[str, Any]) -> None:
    """Traced (MLP.logits walks its blocks in Python, which script cannot compile); the description
    rides along as an extra file, ``torch.jit.load(path, _extra_files={"mlpkit_export.json": ""})``."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation note
        traced = torch.jit.trace(exported, example)
        torch.jit.save(traced, str(temporary), _extra_files={"mlpkit_export.json": json.dumps(description)})


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript}


def describe(format: str, target: Path, preprocessing: dict[str, Any], trained: Any, classes: list | None,
             coarse: list[str], run_dir: Path, checkpoint_path: Path) -> dict[str, Any]:
    """What the JSON beside the file holds: the input and output, the labels, what stays outside."""
    names = list(preprocessing["feature_names"])
    objective = trained.objective
    if classes is not None:
        output = {"name": "probabilities", "shape": ["batch", len(classes)], "dtype": "float32",
                  "columns": classes, "meaning": "the probability of each class, columns in class_labels' order"}
    else:
        width = trained.model.logits(torch.zeros(1, len(names))).shape[1]
        output = {"name": "prediction", "shape": ["batch", width], "dtype": "float64",
                  "meaning": f"the predicted {preprocessing.get('target') or 'target'} in its original units"}
    return {
        "format": format, "file": target.name, "opset": ONNX_OPSET if format == "onnx" else None,
        "task": objective.task, "head": objective.head,
        "input": {"name": INPUT_NAME, "shape": ["batch", len(names)], "dtype": "float32", "feature_names": names},
        "output": output, "class_labels": classes,
        "inside_the_graph": ["missing-value filling"] * (fill_values(preprocessing) is not None)
        + ["standardisation: (x - feature_mean) / feature_std", f"the model and its {objective.head} head"],
        "outside_the_graph": categorical_mapping(preprocessing),
        "precision": {"compute": "float32", "coarse_features": coarse,
                      "note": "feature_mean is subtracted as float32 high and low parts; a float32 input holds "
                              "large values only to 7 significant digits (1e8 in steps of 8)"},
        "run": str(run_dir.resolve()), "checkpoint": str(checkpoint_path.relative_to(run_dir)),
        "epoch": trained.epoch, "step": trained.step, "torch": torch.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def categorical_mapping(preprocessing: dict[str, Any]) -> dict[str, Any] | None:
    """How a table's text columns become input features (one-hot, done before the graph), or None."""
    categories = dict(preprocessing.get("categories") or {})
    if not categories:
        return None
    return {
        "input_columns": list(preprocessing.get("input_columns") or []),
        "one_hot": {column: {"categories": list(values), "features": [f"{column}={value}" for value in values]}
                    for column, values in categories.items()},
        "rule": "feature '<column>=<category>' is 1.0 where the cell's text is the category, else 0.0; the "
                "other input columns pass as their numbers; a category not listed was not seen in training",
    }


# --- the command line -----------------------------------------------------------------------------
def export_command(run: Any, format: Any, path: Any = None, checkpoint: Any = "auto", overwrite: Any = False) -> Path:
    """The command's work: export, then one line saying what was written."""
    started = time.perf_counter()
    target = export(run, str(format), path, str(checkpoint), overwrite)
    description = json.loads(sidecar(target).read_text())
    print(f"wrote {target} ({description['format']}{' opset ' + str(ONNX_OPSET) if format == 'onnx' else ''}, "
          f"{target.stat().st_size / 1024:.1f} KiB) and {sidecar(target).name} in "
          f"{time.perf_counter() - started:.1f}s (run {description['run']}, {description['checkpoint']}, "
          f"epoch {description['epoch']})")
    return target


def export_main() -> None:
    """`python scripts/export.py run=<run dir> format=onnx|torchscript [path=...] [overwrite=true]`."""
    import hydra  # only the command needs Hydra's app machinery
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
    def _export(cfg: DictConfig) -> None:
        exit_on_config_error(export_command, given(cfg, "run"), cfg.format, cfg.path, cfg.checkpoint, cfg.overwrite)

    report_config_errors(_export, "export")

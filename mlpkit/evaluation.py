"""A trained run, evaluated on its test split; and what every use of a trained run shares.

`python scripts/evaluate.py run=<run dir>` (also `mlpkit-evaluate`); configs/evaluate.yaml holds its
keys. A run directory is what `python train.py` wrote: .hydra/config.yaml, checkpoints/,
preprocessing.json. Loading a run (find_run, find_checkpoint, run_config, load_trained) and the
command-line helpers are shared with mlpkit.prediction, which imports them from here. Torch is
imported only once the run directory has been checked, so a mistyped path costs a fraction of a
second.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpkit.config import CONFIG_DIR, ConfigError, report_config_errors

RUN_HINT = "a run directory written by python train.py, e.g. run=outputs/2024-05-01/12-00-00"
CHECKPOINTS = {"best": "best.pt", "last": "last.pt"}


# --- the run directory ---------------------------------------------------------------------------
def find_run(run: Any) -> Path:
    """The run directory, checked: it exists and holds the config the run was composed with."""
    if run is None or str(run).strip() in ("", "???"):
        raise ConfigError("run", run, RUN_HINT)
    path = Path(str(run)).expanduser()
    if not path.is_dir():
        raise ConfigError("run", run, RUN_HINT, f"{path.resolve()} "
                          f"{'is a file' if path.exists() else 'does not exist'}")
    if not (path / ".hydra" / "config.yaml").is_file():
        raise ConfigError("run", run, RUN_HINT, f"{path.resolve()} has no .hydra/config.yaml, so it "
                          "is not a run directory")
    return path


def find_checkpoint(run_dir: Path, choice: str = "auto") -> Path:
    """checkpoints/best.pt, or last.pt when there is no best.pt (``choice``: auto, best, last)."""
    if choice not in ("auto", *CHECKPOINTS):
        raise ConfigError("checkpoint", choice, "auto (best.pt, else last.pt), best or last")
    names = [CHECKPOINTS[choice]] if choice in CHECKPOINTS else list(CHECKPOINTS.values())
    for name in names:
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    wanted = " or ".join(f"checkpoints/{name}" for name in names)
    raise ConfigError("run", run_dir, f"a run directory holding {wanted}",
                      f"{run_dir.resolve()} has none; did the run stop before its first epoch ended?")


def run_config(run_dir: Path) -> DictConfig:
    """The run's composed config, data paths made absolute against the directory it was launched from."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    launched_from = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd") \
        if hydra_file.is_file() else None
    for key in ("path", "root"):  # data.path (csv), data.root (torchvision sets)
        value = OmegaConf.select(cfg, f"data.{key}")
        if launched_from and isinstance(value, str) and not Path(value).expanduser().is_absolute() \
                and (Path(launched_from) / value).exists():
            cfg.data[key] = str(Path(launched_from) / value)
    return cfg


def read_preprocessing(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "preprocessing.json"
    if not path.is_file():
        raise ConfigError("run", run_dir, "a run directory holding preprocessing.json (written by "
                          "every training run since mlpkit 0.1)", f"{path.resolve()} does not exist")
    return json.loads(path.read_text())


@dataclass
class TrainedRun:
    """A run's model with its checkpoint's weights, in eval mode, and the objective it trained with."""

    run_dir: Path
    checkpoint: Path
    epoch: int
    step: int
    model: Any
    objective: Any


def load_trained(run_dir: Path, cfg: DictConfig, checkpoint: Path, task: str, class_names: Sequence[str],
                 in_features: int, target_mean: float, target_std: float, device: Any) -> TrainedRun:
    """Build the model the run's config describes and load the checkpoint's weights into it."""
    from mlpkit.checkpoint import check_model_fits, load_checkpoint
    from mlpkit.model import build_model
    from mlpkit.objective import build_objective

    state = load_checkpoint(checkpoint, map_location=device)
    last_layer = max((k for k in state["model"] if k.startswith("linear") and k.endswith(".weight")),
                     key=lambda k: int(k[len("linear"):-len(".weight")]))
    objective = build_objective(
        cfg.head.name, cfg.loss.name, task, str(cfg.data.source), len(class_names),
        n_targets=state["model"][last_layer].shape[0], label_smoothing=cfg.loss.get("label_smoothing", 0.0),
        pos_weight=cfg.loss.get("pos_weight"), target_mean=target_mean, target_std=target_std)
    params = {k: v for k, v in OmegaConf.to_container(cfg.activation, resolve=True).items() if k != "name"}
    model = build_model(in_features, objective.out_features, list(cfg.model.hidden_sizes), cfg.activation.name,
                        params, objective.head, dropout=cfg.model.dropout, bias=cfg.model.get("bias", True))
    check_model_fits(state, model)
    model.load_state_dict(state["model"])
    return TrainedRun(run_dir, checkpoint, int(state["epoch"]), int(state["step"]), model.to(device).eval(),
                      objective)


def logits_of(model: Any, inputs: Any, chunk: int = 8192) -> Any:
    import torch

    with torch.no_grad():
        return torch.cat([model.logits(inputs[i:i + chunk]) for i in range(0, len(inputs), chunk)])


def resolve_device(name: str) -> Any:
    from mlpkit.cli import resolve_device as resolve

    return resolve(str(name))


# --- evaluate -----------------------------------------------------------------------------------
def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[i, j]: samples of true class i predicted as class j."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    return counts


def per_class(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and support of each class (NaN where a class is never predicted)."""
    hits, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = hits / predicted, hits / support
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)}


def format_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """A text table: one row per true class, one column per predicted class, recall at the right,
    precision at the bottom."""
    scores = per_class(matrix, class_names)
    corner = "true \\ predicted"
    labels = [str(name) for name in class_names]
    first = max(len(corner), len("precision"), *(len(label) for label in labels))
    width = max(5, *(len(label) for label in labels), len(str(matrix.max())))

    def score(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.2f}"

    lines = [f"{corner:<{first}}  " + " ".join(f"{label:>{width}}" for label in labels) + "  recall"]
    for label, row in zip(labels, matrix):
        lines.append(f"{label:<{first}}  " + " ".join(f"{count:>{width}}" for count in row)
                     + f"  {score(scores[label]['recall']):>6}")
    lines.append(f"{'precision':<{first}}  "
                 + " ".join(f"{score(scores[label]['precision']):>{width}}" for label in labels))
    return "\n".join(lines)


def evaluate_run(run: Any, checkpoint: str = "auto", device: str = "cpu") -> dict[str, Any]:
    """Evaluate a run's checkpoint on its test split (rebuilt from the run's config: the split is
    seeded, so it is the same); print the report, write evaluation.json and a figure in the run dir."""
    run_dir = find_run(run)
    checkpoint_path = find_checkpoint(run_dir, str(checkpoint))
    cfg = run_config(run_dir)
    from mlpkit import figures
    from mlpkit.data import build_data

    torch_device = resolve_device(device)
    data = build_data(OmegaConf.to_container(cfg.data, resolve=True), torch_device)
    trained = load_trained(run_dir, cfg, checkpoint_path, data.task, data.class_names, data.in_features,
                           data.target_mean, data.target_std, torch_device)
    objective, split = trained.objective, data.test
    x, y = split.batch(slice(None), torch_device)
    logits = logits_of(trained.model, x)
    metrics = {name: float(value) for name, value in objective.metrics(logits, y).items()}
    report = {"run": str(run_dir), "checkpoint": str(checkpoint_path), "epoch": trained.epoch,
              "step": trained.step, "dataset": data.name, "task": data.task, "split": "test",
              "samples": len(split), "metrics": metrics}
    print(f"{data.name} test split, {len(split)} samples; checkpoint {checkpoint_path} "
          f"(epoch {trained.epoch}, step {trained.step})")
    print("test: " + ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()))
    headline = "accuracy" if objective.is_classification else "r2"
    title = (f"data={data.name}, test split, {checkpoint_path.name} (epoch {trained.epoch}): "
             f"{headline} {metrics[headline]:.3f}")
    if objective.is_classification:
        matrix = confusion_matrix(y.cpu().numpy(), objective.predict_class(logits).cpu().numpy(),
                                  data.n_classes)
        report |= {"class_names": list(data.class_names), "confusion_matrix": matrix.tolist(),
                   "per_class": per_class(matrix, data.class_names)}
        print("confusion matrix (rows: true class, columns: predicted class)")
        print(format_confusion_matrix(matrix, data.class_names))
        figure = figures.confusion_matrix_figure(matrix, data.class_names, title)
        figure_path = run_dir / "confusion_matrix.png"
    else:
        true = (y * objective.target_std + objective.target_mean).cpu().numpy()
        figure = figures.predicted_vs_true_figure(true, objective.predict(logits).cpu().numpy(), title,
                                                  data.extra.get("target") or "target")
        figure_path = run_dir / "predicted_vs_true.png"
    figures.save_png(figure, figure_path)
    report_path = run_dir / "evaluation.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {report_path} and {figure_path}")
    return report


# --- the command lines ----------------------------------------------------------------------------
def exit_on_config_error(command: Callable[..., Any], *args: Any) -> None:
    """Inside the Hydra task: a ConfigError is one line on stderr and exit code 2, no traceback."""
    try:
        command(*args)
    except ConfigError as error:
        print(f"Config error: {error}", file=sys.stderr)
        sys.exit(2)  # SystemExit passes through Hydra, which would log a failed job for an exception


def given(cfg: DictConfig, key: str) -> Any:
    """The value of a key, or ``???`` while a required key is not given."""
    return "???" if OmegaConf.is_missing(cfg, key) else cfg[key]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def _evaluate(cfg: DictConfig) -> None:
    exit_on_config_error(evaluate_run, given(cfg, "run"), cfg.checkpoint, cfg.device)


def evaluate_main() -> None:
    """`python scripts/evaluate.py run=<run dir>` and `mlpkit-evaluate run=<run dir>`."""
    report_config_errors(_evaluate, "evaluate", new_keys=False)

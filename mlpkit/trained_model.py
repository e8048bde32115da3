"""A run's trained model: its config's network with one checkpoint's weights and the objective it
trained with (``load_model``), the logits of rows (``logits_of``), a classifier's probabilities per
class and its labels in the type the targets had. ``Run`` (mlpkit.finished_run), the export, the
predict command and the estimators use these."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")  # as the data sources write a whole-number label: no "007", "+1"


@dataclass
class TrainedModel:
    """A run's model with one checkpoint's weights, in eval mode, and the objective it trained with."""

    checkpoint: Path
    epoch: int
    step: int
    model: Any
    objective: Any


def load_model(cfg: DictConfig, checkpoint: Path, preprocessing: dict[str, Any], device: Any) -> TrainedModel:
    """Build the model the run's config describes (sized by its preprocessing.json) and load the
    checkpoint's weights into it."""
    from mlpkit.checkpoint import check_model_fits, load_checkpoint
    from mlpkit.model import model_from_config
    from mlpkit.objective import build_objective

    state = load_checkpoint(checkpoint, map_location=device)
    last_layer = max((k for k in state["model"] if k.startswith("linear") and k.endswith(".weight")),
                     key=lambda k: int(k[len("linear"):-len(".weight")]))
    objective = build_objective(
        cfg.head.name, cfg.loss.name, preprocessing["task"], str(cfg.data.source),
        len(preprocessing.get("class_names") or []), n_targets=state["model"][last_layer].shape[0],
        label_smoothing=cfg.loss.get("label_smoothing", 0.0), pos_weight=cfg.loss.get("pos_weight"),
        target_mean=preprocessing["target_mean"], target_std=preprocessing["target_std"])
    model = model_from_config(cfg, len(preprocessing["feature_names"]), objective.out_features, objective.head,
                              weights_follow=True)
    check_model_fits(state, model)
    model.load_state_dict(state["model"])
    return TrainedModel(checkpoint, int(state["epoch"]), int(state["step"]), model.to(device).eval(), objective)


def logits_of(model: Any, inputs: Any, chunk: int = 8192) -> Any:
    import torch

    with torch.no_grad():  # no rows: one empty chunk, so the result still has the model's columns
        return torch.cat([model.logits(inputs[i:i + chunk]) for i in range(0, max(len(inputs), 1), chunk)])


def class_probabilities(objective: Any, predicted: np.ndarray) -> np.ndarray:
    """(N, n_classes): a classifier's ``objective.predict`` output as one probability per class; a
    sigmoid head's one output p, the probability of class_names[1], becomes (1 - p, p)."""
    if objective.head == "sigmoid":
        predicted = predicted.reshape(-1, 1)
        return np.concatenate([1 - predicted, predicted], axis=1)
    return predicted


def label_array(class_names: list[str]) -> np.ndarray:
    """Class names (labels.json and preprocessing.json hold them as JSON strings) as the labels the
    targets were: all whole numbers -> int64, all numbers -> float64, else the text. Only the forms
    the data sources write count as numbers ("3", "-1", "0.5"; not "007", "nan", " 1")."""
    def is_float(name: str) -> bool:
        try:
            return np.isfinite(float(name)) and repr(float(name)) == name
        except ValueError:
            return False

    names = [str(name) for name in class_names]
    if names and all(INTEGER.fullmatch(name) for name in names) and \
            all(-2**63 <= int(name) < 2**63 for name in names):
        return np.asarray([int(name) for name in names], dtype=np.int64)
    if names and all(INTEGER.fullmatch(name) or is_float(name) for name in names):
        return np.asarray([float(name) for name in names], dtype=np.float64)
    return np.asarray(names, dtype=str)

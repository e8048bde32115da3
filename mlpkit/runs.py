"""A finished run directory: its config, checkpoints, preprocessing, and the model it trained.

What `python train.py` wrote (.hydra/config.yaml, checkpoints/, preprocessing.json) is read back
here, once, for evaluate, predict and the Python API. Torch is imported only once the directory has
been checked, so a mistyped path costs a fraction of a second.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpkit.errors import ConfigError
from mlpkit.rundir import CHECKPOINT_DIR

RUN_HINT = "a run directory written by python train.py, e.g. run=outputs/2024-05-01/12-00-00"
CHECKPOINTS = {"best": "best.pt", "last": "last.pt"}
# What a run and the tools on it write into its directory: folders whose every file is the run's,
# and names at its top (metrics.json, labels.json, preprocessing.json, evaluation.json, train.log,
# the figures, TensorBoard's event files). predict never writes over one of them, by any name.
RUN_FOLDERS = (CHECKPOINT_DIR, ".hydra")
RUN_FILES = ("*.json", "*.log", "*.png", "*.pt", "events.out.tfevents.*")


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
        if (run_dir / CHECKPOINT_DIR / name).is_file():
            return run_dir / CHECKPOINT_DIR / name
    wanted = " or ".join(f"{CHECKPOINT_DIR}/{name}" for name in names)
    raise ConfigError("run", run_dir, f"a run directory holding {wanted}",
                      f"{run_dir.resolve()} has none; did the run stop before its first epoch ended?")


def run_config(run_dir: Path) -> DictConfig:
    """The run's composed config, data paths made absolute against the directory it was launched from."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    launched_from = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd") \
        if hydra_file.is_file() else None
    for key in ("path", "val_path", "test_path", "root"):  # table files (csv), data.root (torchvision sets)
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
    return read_json(path, run_dir)


def read_json(path: Path, run_dir: Path) -> Any:
    """A JSON file of the run; a damaged one (a disk that filled, a hand edit) is one ConfigError."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError("run", run_dir, "a run directory whose files are as the run wrote them",
                          f"{path.resolve()} is not valid JSON ({error})") from None


def run_file(path: Path, run_dir: Path) -> str | None:
    """Which of the run's own files (RUN_FOLDERS, RUN_FILES) ``path`` is, by any spelling, symlink
    or hard link, or None: what predict must not write over."""
    target = path.expanduser().resolve()  # symlinks followed, ".." gone
    for folder in RUN_FOLDERS:
        inside = next((parent for parent in (target, *target.parents) if same_file(parent, run_dir / folder)), None)
        if inside is not None:
            return f"{folder}/{target.relative_to(inside)}".removesuffix("/.")
    if same_file(target.parent, run_dir) and any(fnmatch(target.name, pattern) for pattern in RUN_FILES):
        return target.name
    if target.is_file():  # a hard link elsewhere: the same file under another name
        own = [*(p for pattern in RUN_FILES for p in run_dir.glob(pattern)),
               *(p for folder in RUN_FOLDERS for p in (run_dir / folder).rglob("*"))]
        for file in own:
            if same_file(file, target):
                return str(file.relative_to(run_dir))
    return None


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file (os.path.samefile); False when either does not exist."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


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
    from mlpkit.model import model_from_config
    from mlpkit.objective import build_objective

    state = load_checkpoint(checkpoint, map_location=device)
    last_layer = max((k for k in state["model"] if k.startswith("linear") and k.endswith(".weight")),
                     key=lambda k: int(k[len("linear"):-len(".weight")]))
    objective = build_objective(
        cfg.head.name, cfg.loss.name, task, str(cfg.data.source), len(class_names),
        n_targets=state["model"][last_layer].shape[0], label_smoothing=cfg.loss.get("label_smoothing", 0.0),
        pos_weight=cfg.loss.get("pos_weight"), target_mean=target_mean, target_std=target_std)
    model = model_from_config(cfg, in_features, objective.out_features, objective.head, weights_follow=True)
    check_model_fits(state, model)
    model.load_state_dict(state["model"])
    return TrainedRun(run_dir, checkpoint, int(state["epoch"]), int(state["step"]), model.to(device).eval(),
                      objective)


def logits_of(model: Any, inputs: Any, chunk: int = 8192) -> Any:
    import torch

    with torch.no_grad():  # no rows: one empty chunk, so the result still has the model's columns
        return torch.cat([model.logits(inputs[i:i + chunk]) for i in range(0, max(len(inputs), 1), chunk)])


def check_same_data(run_dir: Path, fingerprint: str, key: str, value: Any, allowed: str, allow: bool = False) -> None:
    """Refuse data that is not what the run trained on (its preprocessing.json fingerprint): a changed
    file would silently give another test split. ``allow`` goes on, with a warning."""
    saved = read_preprocessing(run_dir).get("fingerprint")
    if saved is None or saved == fingerprint:
        return
    problem = (f"the data loaded now differs from the data {run_dir} trained on (fingerprint {fingerprint[:12]} "
               f"against {saved[:12]}): a file behind it changed, or rows were added or reordered")
    if not allow:
        raise ConfigError(key, value, allowed, problem)
    print(f"warning: {problem}; going on ({key}=true)", file=sys.stderr)  # the commands print, not log

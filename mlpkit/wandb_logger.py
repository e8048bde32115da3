"""``logger=[wandb]``: the run as a Weights & Biases run, through the real ``wandb`` client.

``tracking.wandb.mode=auto`` runs online when an API key is configured (``WANDB_API_KEY`` or
``wandb login``'s netrc entry; ``WANDB_MODE`` wins when set) and offline otherwise: then
``<run dir>/wandb/offline-run-*`` holds what ``wandb sync`` uploads. The composed config is the run's
config; every scalar goes into its history at its step, histograms and images too; texts go into the
summary (the verdict summary, the gradient_health lines, the model and config printouts) with the
final metrics; metrics.json and the checkpoint are a ``model`` artifact at the end.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpkit.rundir import BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_FILE
from mlpkit.tracker_values import keep_text

HISTOGRAM_BINS = 64


class WandbLogger:
    def __init__(self, run_dir: Path, settings: dict[str, Any], cfg: DictConfig):
        import wandb  # takes a second to import and starts a service process: only for a run that logs to it

        self.wandb, self.run_dir = wandb, Path(run_dir)
        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("hydra", None)
        self.run = wandb.init(
            dir=str(self.run_dir), project=settings["project"], entity=settings.get("entity"),
            mode=wandb_mode(settings["mode"]), name=self.run_dir.name, config=config, reinit="create_new",
            # the run's console is mlpkit's own; no machine statistics, code or git state sampled
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True, disable_git=True,
                                    save_code=False))
        self.pending: list[tuple[int, dict[str, Any]]] = []  # (step, values) not yet logged
        self.last_step = 0  # wandb's history only moves forward: older images go in at this step
        self.texts: dict[str, str] = {}

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.keep(step, values)

    def keep(self, step: int, values: dict[str, Any]) -> None:
        self.last_step = max(self.last_step, step)
        self.pending.append((step, values))

    def flush(self) -> None:
        """The kept values into the history, one ``log`` per step (values of one step merged)."""
        rows: list[tuple[int, dict[str, Any]]] = []
        for step, values in self.pending:
            if rows and rows[-1][0] == step:
                merge(rows[-1][1], values)
            else:
                rows.append((step, dict(values)))
        self.pending = []
        for step, values in rows:
            self.run.log(values, step=step)

    def log_histogram(self, tag: str, values: Any, step: int) -> None:
        """Counted now: the weights change with the next step."""
        import numpy as np

        array = values.detach().float().cpu().numpy() if hasattr(values, "detach") else np.asarray(values, float)
        array = array[np.isfinite(array)]
        if array.size:
            self.keep(step, {tag: self.wandb.Histogram(np_histogram=np.histogram(array, bins=HISTOGRAM_BINS))})

    def log_image(self, tag: str, rgb: Any, step: int) -> None:
        """At its step, or at the latest step for a figure drawn after the fact (gradient flow)."""
        self.keep(max(step, self.last_step), {tag: self.wandb.Image(rgb, caption=f"step {step}")})

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        keep_text(self.texts, tag, text, step)
        self.run.summary[tag] = self.texts[tag]

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int = 0) -> None:
        """The final metrics in the run's summary (W&B's runs table shows them), not in its history: a
        second log at the last step, after that step's row went out, may be dropped (seen in CI)."""
        self.run.summary.update(metrics)

    def close(self) -> None:
        self.flush()
        artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model")
        files = [self.run_dir / METRICS_FILE, *(self.run_dir / CHECKPOINT_DIR / name
                                                 for name in (BEST_CHECKPOINT, LAST_CHECKPOINT))]
        for path in (path for path in files if path.is_file()):
            # immutable: read from the run directory when uploaded, not copied into ~/.local/share/wandb
            artifact.add_file(str(path), name=str(path.relative_to(self.run_dir)), policy="immutable",
                              skip_cache=True)
        if artifact.manifest.entries:
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if completed(self.run_dir) else 1)

    # TensorBoard's own views
    def log_graph(self, model: Any, example_input: Any) -> None:
        pass

    def log_layout(self, charts: dict[str, dict[str, list[str]]]) -> None:
        pass


def merge(row: dict[str, Any], values: dict[str, Any]) -> None:
    """Values into one step's row; a second image under a tag already there joins it in a list."""
    for tag, value in values.items():
        if tag in row and not isinstance(value, (int, float)):
            earlier = row[tag] if isinstance(row[tag], list) else [row[tag]]
            row[tag] = [*earlier, value]
        else:
            row[tag] = value


def wandb_mode(mode: str) -> str:
    """``auto``: ``$WANDB_MODE`` when set, else online with an API key configured, else offline."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:  # `wandb login` writes the key into ~/.netrc
        from wandb.sdk.lib.wbauth import read_netrc_auth

        return bool(read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")))
    except Exception:  # a wandb without this helper, or a netrc it cannot read: no key it could use
        return False


def completed(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / METRICS_FILE).read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False

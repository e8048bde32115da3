"""What the experiment trackers (mlflow_logger, wandb_logger) receive besides scalars: the composed
config as flat params, and texts kept by tag."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpkit.errors import show_value

LINE_TEXTS = ("gradient_health",)  # texts that add a line each step they fire; other tags hold their latest text


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as dotted keys (``model.hidden_sizes``) and plain values (lists as typed,
    ``[64,32]``), without Hydra's own node: a tracker's params."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif prefix:
            flat[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) or node is None else show_value(node)

    walk(container, "")
    return flat


def keep_text(texts: dict[str, str], tag: str, text: str, step: int) -> None:
    """A tracker's texts by tag: LINE_TEXTS gain a ``step N: ...`` line, the others are replaced."""
    if tag in LINE_TEXTS:
        text = "\n".join(filter(None, (texts.get(tag), f"step {step}: {text}")))
    texts[tag] = text

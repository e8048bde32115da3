"""The keys a run reads: every key of a composed (or a checkpoint's saved) config must be one of them.

The table is read from the YAML files of ``configs/``, where every key is written once with its
comment: a group's keys are those of the chosen file (found by the value that names it, e.g.
``scheduler.name``), the top level's those of ``train.yaml`` and of the ``@package _global_`` files
(an experiment's ``variant``). A key added with ``+`` that nothing reads (``+trainer.max_epoch=3``, a
typo) is refused with the nearest known key, never silently ignored. ``data`` and ``activation`` check
their keys themselves, against the keys their source or module takes; the optimizer's keys are its
torch constructor's arguments (``mlpkit.optimizers``).
"""
from __future__ import annotations

import difflib
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from mlpkit.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # configs/, beside the package

# The value that names a group's choice (a checkpoint's config has no Hydra choices to read).
CHOICE_KEY = {"head": "name", "loss": "name", "scheduler": "name", "optimizer": "_target_",
              "activation": "name", "data": "source"}
CHECKED_ELSEWHERE = ("data", "activation", "optimizer")  # mlpkit.data, mlpkit.activations, mlpkit.optimizers
GLOBAL_PACKAGE = "# @package _global_"


def override_key(override: str) -> str:
    """The key an override sets, as typed: ``+trainer.callbacks=[...]`` -> ``trainer.callbacks``."""
    return override.split("=", 1)[0].lstrip("+~")


def leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of a nested mapping's leaves (a list is a leaf: ``model.hidden_sizes``)."""
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            yield from leaf_keys(value, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1]


@functools.cache
def documented_keys() -> tuple[dict[str, dict[Any, frozenset[str]]], frozenset[str]]:
    """``({group: {choice value: keys}}, top-level keys)`` from the YAML files of configs/."""

    groups: dict[str, dict[Any, frozenset[str]]] = {}
    top = set(leaf_keys(yaml.safe_load((CONFIG_DIR / "train.yaml").read_text()))) - {"defaults"}
    for path in sorted(CONFIG_DIR.glob("*/*.yaml")):
        group, text = path.parent.name, path.read_text()
        content = yaml.safe_load(text) or {}
        if text.startswith(GLOBAL_PACKAGE):  # experiment/, hparams_search/: keys of their own at the top
            top.update(key for key in leaf_keys(content) if key.split(".")[0] not in ("defaults", "hydra")
                       and not (CONFIG_DIR / key.split(".")[0]).is_dir())
            continue
        if group == "hydra":
            continue
        content.pop("defaults", None)  # the schema it extends (mlpkit/schema.py), not a key
        choice = content.get(CHOICE_KEY.get(group, ""), path.stem)
        keys = groups.setdefault(group, {}).get(choice, frozenset())
        groups[group][choice] = keys | frozenset(leaf_keys(content))
    return groups, frozenset(top)


def group_keys(group: str, node: Mapping[str, Any]) -> frozenset[str]:
    """The keys of ``group``'s chosen file; all its files' keys when the choice is unknown (its
    own check then names the choice)."""
    choices = documented_keys()[0][group]
    chosen = node.get(CHOICE_KEY.get(group, ""), None) if isinstance(node, Mapping) else None
    if chosen in choices and chosen != "auto":  # head=auto, loss=auto: any choice's keys may be read
        return choices[chosen]
    if len(choices) == 1:
        return next(iter(choices.values()))
    return frozenset().union(*choices.values())


OPEN_MAPPINGS = ("sweep.pruner",)  # a _target_ and its class's arguments, checked where it is built (mlpkit.pruning)


def _open(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in OPEN_MAPPINGS)


def check_known_keys(config: Mapping[str, Any]) -> None:
    """Refuse the first key that no part of the run reads, naming the nearest known one."""
    groups, top = documented_keys()
    for key in leaf_keys(config):
        group, _, rest = key.partition(".")
        if group in CHECKED_ELSEWHERE or key in top or _under(key, top) or _open(key):
            continue
        if group in groups and rest and (rest in group_keys(group, config[group]) or
                                         _under(rest, group_keys(group, config[group]))):
            continue
        raise unknown_key(key, config)


def _under(key: str, known: frozenset[str]) -> bool:
    """``key`` inside a documented mapping (``variants.relu.init``) or one of its leaves' parent."""
    return any(key.startswith(f"{name}.") for name in known)


def unknown_key(key: str, config: Mapping[str, Any]) -> ConfigError:
    groups, top = documented_keys()
    group, _, rest = key.partition(".")
    if group in groups and rest:
        names, prefix, where = sorted(group_keys(group, config[group])), f"{group}.", f"{group}'s keys"
    else:
        names, prefix, where = sorted({name.split(".")[0] for name in top} | set(groups)), "", "the top-level keys"
    nearest = difflib.get_close_matches(key, [prefix + name for name in names], n=1, cutoff=0.6)
    guess = f"did you mean {nearest[0]}? " if nearest else "nothing in the run reads it; "
    return ConfigError(key, _select(config, key), f"a key the run reads ({guess}{where}: {', '.join(names)})")


def _select(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node

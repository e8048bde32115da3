"""The remedies a gradient verdict names (the diagnosis tries them): for each verdict kind, the
overrides that address it on a given config, and the variant's overrides: the user's with the
remedy's keys replaced (a swapped group drops its own sub-keys)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from mlpkit.config_keys import override_key


@dataclass(frozen=True)
class Remedy:
    """One thing to try: overrides added to the user's, a short name (job directories) and what it does."""

    name: str
    overrides: tuple[str, ...]
    what: str
    last_resort: bool = False  # recommended only when no other remedy works


# --- which remedies a verdict names ---------------------------------------------------------------
def remedies_for(kinds: Sequence[str], cfg: DictConfig) -> list[Remedy]:
    """The remedies the verdict kinds name (verdicts.ADVICE), those the config already has left out,
    in the order they are tried; a last resort comes last."""
    found: dict[tuple[str, ...], Remedy] = {}
    for kind in kinds:
        for remedy in _REMEDIES.get(kind, _step_size)(cfg):  # a run that failed without a verdict: its steps
            found.setdefault(remedy.overrides, remedy)
    return sorted(found.values(), key=lambda remedy: remedy.last_resort)


def _gradient_path(cfg: DictConfig) -> list[Remedy]:
    """Vanishing: a gradient that every layer shrinks on its way down."""
    from mlpkit.activations import activation_spec
    from mlpkit.model import residual_layers

    model, remedies = cfg.model, []
    if activation_spec(str(cfg.activation.name)).family != "relu":
        remedies.append(Remedy("relu_kaiming", ("activation=relu", "model.init=kaiming_normal"), "relu + kaiming init"))
    elif str(model.init) != "kaiming_normal":
        remedies.append(Remedy("kaiming", ("model.init=kaiming_normal",), "kaiming init"))
    remedies += [Remedy(f"{norm}_norm", (f"model.norm={norm}",), f"{norm} norm before each activation")
                 for norm in ("layer", "batch") if str(model.norm) != norm]
    hidden_sizes = list(model.hidden_sizes)
    if not model.residual and residual_layers(hidden_sizes):
        remedies.append(Remedy("residual", ("model.residual=true",), "skip connections"))
    if len(hidden_sizes) > 2:
        shallower = ",".join(str(size) for size in hidden_sizes[:2])
        remedies.append(Remedy("shallower", (f"model.hidden_sizes=[{shallower}]",), "2 hidden layers (last resort)",
                               last_resort=True))
    return remedies


def _saturation(cfg: DictConfig) -> list[Remedy]:
    """Saturated: units far out on a squashing activation's flat tails."""
    own = [Remedy("xavier", ("model.init=xavier_normal",), "xavier init")] if str(cfg.model.init) != "xavier_normal" else []
    return [*_gradient_path(cfg), *own, *_lower_lr(cfg)]


def _step_size(cfg: DictConfig) -> list[Remedy]:
    """Exploding (or non-finite): steps too large for the loss surface."""
    clip = float(cfg.trainer.gradient_clip_val or 0)
    remedies = [] if 0 < clip <= 1 else [Remedy("clip", ("trainer.gradient_clip_val=1.0",), "clip gradients at norm 1")]
    remedies += _lower_lr(cfg)
    if str(cfg.optimizer.lr) != "auto":
        remedies.append(Remedy("lr_auto", ("optimizer.lr=auto",), "lr from the range test"))
    return remedies


def _dead_units(cfg: DictConfig) -> list[Remedy]:
    """Dead: relu units that output 0 for every input and so get no gradient."""
    return [*(Remedy(name, (f"activation={name}",), f"{name}: no dead units") for name in ("leaky", "elu")
              if str(cfg.activation.name) != name), *_lower_lr(cfg)]


def _lower_lr(cfg: DictConfig) -> list[Remedy]:
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):  # auto: the range test picks it already
        return []
    return [Remedy("lr_div10", (f"optimizer.lr={lr / 10:g}",), "a 10x lower lr")]


_REMEDIES = {"vanishing": _gradient_path, "saturated": _saturation, "exploding": _step_size, "dead": _dead_units}


# --- the overrides a variant trains with ----------------------------------------------------------
def with_remedy(user: Sequence[str], remedy: Sequence[str]) -> list[str]:
    """The user's overrides with the remedy's: a key the remedy sets (a group it swaps: its keys too)
    is the remedy's."""
    keys = {override_key(override) for override in remedy}
    kept = [o for o in user if override_key(o) not in keys and not any(override_key(o).startswith(f"{key}.") for key in keys)]
    return [*kept, *remedy]


def settled(user: Sequence[str], remedy: Remedy) -> Remedy:
    """The remedy as it must be typed on top of ``user``: an experiment that sets activation.name
    itself (experiment=vanishing_gradients) keeps it over ``activation=relu``, so the name is pinned too."""
    from mlpkit.api import run_config

    wanted = next((o.split("=", 1)[1] for o in remedy.overrides if override_key(o) == "activation"), None)
    if wanted is None or str(run_config(with_remedy(user, remedy.overrides)).activation.name) == wanted:
        return remedy
    return Remedy(remedy.name, (*remedy.overrides, f"activation.name={wanted}"), remedy.what, remedy.last_resort)

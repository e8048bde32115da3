"""build_model and the MLP module: linear1, (norm1,) act1, ..., linearN, head; optional skip connections."""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from mlpkit.activations import Activation, resolve_activation
from mlpkit.errors import ConfigError, show_value
from mlpkit.schema import INITS, NORMS, Model, with_defaults

HEAD_MODULES = {"softmax": lambda: nn.Softmax(dim=-1), "sigmoid": nn.Sigmoid, "identity": nn.Identity}
DEFAULTS = Model()  # model.* defaults (mlpkit/schema.py): build_model's keyword defaults


def residual_layers(hidden_sizes: Sequence[int]) -> list[int]:
    """The hidden layers (1-based, as in ``linear<i>``) that get a skip connection with
    model.residual=true: those after the first whose input and output widths match. The first
    maps the data's features into the network (its width depends on the data set), so it has none."""
    return [index for index in range(2, len(hidden_sizes) + 1) if hidden_sizes[index - 2] == hidden_sizes[index - 1]]


def describe_residual(hidden_sizes: Sequence[int], norm: str = "none") -> str:
    """``residual: h + act(linear(h)) around linear2, linear3 (64->64)``: where the skip connections are."""
    layers = residual_layers(hidden_sizes)
    widths = sorted({hidden_sizes[index - 1] for index in layers})
    branch = "act(linear(h))" if NORMS[norm] is None else "act(norm(linear(h)))"
    return (f"residual: h + {branch} around {', '.join(f'linear{i}' for i in layers)} "
            f"({', '.join(f'{w}->{w}' for w in widths)})")


class MLP(nn.Module):
    """A multilayer perceptron whose printout reads like a hand-written one.

    ``logits(x)`` runs every layer but the head (what losses use); ``forward(x)`` applies the head
    too, so calling the model gives predictions: probabilities, or values for regression.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], head: nn.Module, activation: Activation | None = None,
                 residual: Sequence[int] = (), residual_note: str = ""):
        super().__init__()
        for name, module in layers.items():
            self.add_module(name, module)
        self.head = head
        self.body_names = tuple(layers)
        self.activation = activation  # the resolved hidden activation: diagnostics read its rules here
        # The body as blocks: each hidden layer's modules (linear, norm, act, dropout) and whether a
        # skip connection adds the block's input to its output; the output layer is a block alone.
        self.blocks = _blocks(self.body_names, set(residual))
        self.residual_note = residual_note

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        modules = self._modules
        for names, skip in self.blocks:
            h = x
            for name in names:
                h = modules[name](h)
            x = x + h if skip else h
        return x

    def extra_repr(self) -> str:
        return self.residual_note  # printed above the layers: where the skip connections are

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.logits(x))

    def linear_layers(self) -> OrderedDict[str, nn.Linear]:
        """The Linear layers by name, input side first (what gradient diagnostics report on)."""
        return OrderedDict((n, m) for n, m in self.named_children() if isinstance(m, nn.Linear))

    def activation_after(self) -> OrderedDict[str, nn.Module]:
        """Each hidden Linear's name -> the activation module that follows it."""
        pairs: OrderedDict[str, nn.Module] = OrderedDict()
        current = None
        for name, module in self.named_children():
            if isinstance(module, nn.Linear):
                current = name
            elif name.startswith("act") and current is not None:
                pairs[current] = module
        return pairs


def _blocks(names: Sequence[str], residual: set[int]) -> tuple[tuple[tuple[str, ...], bool], ...]:
    blocks: list[tuple[list[str], bool]] = []
    for name in names:
        if name.startswith("linear"):
            blocks.append(([], int(name[len("linear"):]) in residual))
        blocks[-1][0].append(name)
    return tuple((tuple(block), skip) for block, skip in blocks)


EVAL_CHUNK = 8192  # rows per forward pass when evaluating or predicting a whole split (the trainer, mlpkit.Run)
# Bytes per parameter while training: float32 weights, their gradients and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 4 * 4


def check_fits_memory(in_features: int, out_features: int, hidden_sizes: Sequence[int],
                      device: torch.device | str) -> None:
    """ConfigError (key model.hidden_sizes) before a model is allocated whose parameters, gradients
    and optimizer state alone exceed the device's memory (CUDA: free memory; CPU and MPS: RAM)."""
    widths = [in_features, *hidden_sizes, out_features]
    parameters = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(widths, widths[1:]))
    needed = parameters * TRAINING_BYTES_PER_PARAMETER
    device = torch.device(device)
    available, memory = _available_memory(device)
    if needed > available:
        raise ConfigError("model.hidden_sizes", list(hidden_sizes),
                          f"a model that fits in memory: {parameters:,} parameters need about "
                          f"{needed / 2**30:,.1f} GiB to train (float32 weights, gradients and Adam's two "
                          f"moments), more than the {available / 2**30:,.1f} GiB of {memory}")


def _available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes the model may take on ``device``, and what they are (for the message)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free, f"free memory on {device}"
    try:
        import psutil  # optional: the memory available now, not only the RAM installed
    except ImportError:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM on this machine"
    return psutil.virtual_memory().available, "memory available on this machine"


def build_model(
    in_features: int,
    out_features: int,
    hidden_sizes: Sequence[int],
    activation: str,
    activation_params: dict[str, Any],
    head: str,
    dropout: float = DEFAULTS.dropout,
    init: str = DEFAULTS.init,
    bias: bool = DEFAULTS.bias,
    norm: str = DEFAULTS.norm,
    residual: bool = DEFAULTS.residual,
) -> MLP:
    """An MLP from plain values; input and output sizes come from the data.

    ``norm`` (none, batch, layer) puts a normalisation layer between each hidden Linear and its
    activation; ``residual`` adds skip connections, h + act(norm(linear(h))), around the hidden
    layers ``residual_layers`` names (ConfigError when there is none)."""
    act = resolve_activation(activation, activation_params)
    for key, value, names in (("model.norm", norm, NORMS), ("model.init", init, INITS)):
        if value not in names:
            raise ConfigError(key, value, f"one of {', '.join(names)}")
    if not isinstance(bias, bool):  # nn.Linear would take any truthy value, "false" included
        raise ConfigError("model.bias", bias, "true or false")
    skips = residual_layers(hidden_sizes) if residual else []
    if residual and not skips:
        raise ConfigError(*no_residual_layer(hidden_sizes))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    widths = [in_features, *hidden_sizes]
    for index, (fan_in, fan_out) in enumerate(zip(widths, widths[1:]), start=1):
        layers[f"linear{index}"] = nn.Linear(fan_in, fan_out, bias=bias)
        if NORMS[norm] is not None:
            layers[f"norm{index}"] = getattr(nn, NORMS[norm])(fan_out)
        layers[f"act{index}"] = act.module(fan_out)
        if dropout > 0:
            layers[f"dropout{index}"] = nn.Dropout(dropout)
    layers[f"linear{len(widths)}"] = nn.Linear(widths[-1], out_features, bias=bias)
    model = MLP(layers, HEAD_MODULES[head](), act, skips, describe_residual(hidden_sizes, norm) if skips else "")
    if INITS[init] is not None:  # default: torch's own init
        initialize(model, init, *act.init_gain_args())
    return model


def activation_params(activation_cfg: Any) -> dict[str, Any]:
    """The ``activation`` group's arguments: every key but its name."""
    return {key: value for key, value in activation_cfg.items() if key != "name"}


def model_from_config(cfg: Any, in_features: int, out_features: int, head: str, *, weights_follow: bool = False
                      ) -> MLP:
    """The model a run's config (its ``model`` and ``activation`` groups) describes, for training and
    for loading a trained run alike; a key a run saved before it existed takes its default
    (``schema.with_defaults``). ``weights_follow``: a checkpoint's weights replace the initial ones
    (no ``model.init``, which would draw from torch's random generator for nothing)."""
    saved = OmegaConf.to_container(cfg.model, resolve=True) if OmegaConf.is_config(cfg.model) else dict(cfg.model)
    model = with_defaults({"model": saved}).model  # resolved: its interpolations point outside the group
    return build_model(in_features, out_features, list(model.hidden_sizes), cfg.activation.name,
                       activation_params(cfg.activation), head, dropout=model.dropout,
                       init=DEFAULTS.init if weights_follow else model.init, bias=model.bias,
                       norm=model.norm, residual=model.residual)


def no_residual_layer(hidden_sizes: Sequence[int]) -> tuple[str, bool, str, str]:
    """ConfigError's arguments for model.residual=true on hidden sizes that leave no skip connection."""
    return ("model.residual", "true", "false, or model.hidden_sizes with two equal widths in a row, e.g. "
            "[64,64,64] (skips around linear2 and linear3)",
            f"model.hidden_sizes={show_value(list(hidden_sizes))} has no hidden layer after the first whose input and "
            "output widths match, so h + act(linear(h)) cannot be added")


def check_batch_norm_batches(norm: str, train_rows: int, batch_size: int, drop_last: bool = False,
                             limit_batches: int | None = None) -> None:
    """ConfigError (key trainer.batch_size) when model.norm=batch would meet a training batch of one
    row, which BatchNorm cannot normalise (torch stops mid-epoch with a traceback). ``limit_batches``:
    an epoch of only its first batches (trainer.overfit_batches, fast_dev_run)."""
    if limit_batches:
        train_rows = min(train_rows, limit_batches * batch_size)
    last = train_rows % batch_size
    if norm == "batch" and (batch_size == 1 or (last == 1 and not drop_last)):
        raise ConfigError("trainer.batch_size", batch_size, "a size that leaves no batch of one row with model.norm=batch, "
                          f"e.g. {batch_size + 1}", f"{train_rows} training rows in batches of {batch_size} leave "
                          "one row alone, and BatchNorm cannot normalise a single row")


def initialize(model: MLP, init: str, nonlinearity: str, param: float | None) -> None:
    """Re-initialise the Linear weights (biases to zero) with a gain chosen for the activation.

    Hidden layers use the activation's gain; the output layer feeds the loss directly, so it uses
    the linear gain (1).
    """
    linears = list(model.linear_layers().values())
    for index, layer in enumerate(linears):
        is_output = index == len(linears) - 1
        layer_nonlinearity, layer_param = ("linear", None) if is_output else (nonlinearity, param)
        fill = getattr(nn.init, INITS[init])
        if init.startswith("kaiming"):  # kaiming takes the nonlinearity itself, not a gain
            fill(layer.weight, a=layer_param or 0.0, nonlinearity=layer_nonlinearity)
        else:
            fill(layer.weight, gain=nn.init.calculate_gain(layer_nonlinearity, layer_param))
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_summary(model: nn.Module) -> str:
    """A table of the layers: name, module, output width, parameters; then the total."""
    rows = [("layer", "module", "out", "parameters")]
    for name, module in model.named_children():
        width = getattr(module, "out_features", "")
        rows.append((name, type(module).__name__, str(width), f"{count_parameters(module):,}"))
    rows.append(("total", "", "", f"{count_parameters(model):,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"
                      for r in rows)
    note = getattr(model, "residual_note", "")
    return f"{table}\n{note}" if note else table

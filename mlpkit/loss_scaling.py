"""``trainer.precision=16-mixed``: float16 autocast with loss scaling (``torch.amp.GradScaler``).

float16 holds gradients down to about 6e-8 only, so the loss is multiplied by a scale before the
backward pass and the gradients divided by it again (``unscale``) before anything reads them: the
gradient monitor, clipping and the optimizer see the true gradients. A step whose scaled gradients
overflowed is skipped by the scaler (and the scale halved), counted on the device without a host
synchronisation, logged as ``amp/skipped_steps`` with ``amp/scale``, and never judged as exploding
gradients or a non-finite failure: overflow is how loss scaling finds its scale.
"""
from __future__ import annotations

from typing import Any

import torch

from mlpkit.callbacks import Callback


class LossScaler(Callback):
    """The run's GradScaler, as a callback for its logged values and its checkpointed state."""

    state_key = "grad_scaler"

    def __init__(self, device: torch.device):
        self.scaler = torch.amp.GradScaler(device.type)
        self.skipped = torch.zeros((), device=device)  # overflowed steps so far, counted on the device

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """The gradients divided by the scale, in place (once per step, before they are read)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` unless the gradients overflowed; then the scale's update."""
        found_inf = self.scaler._found_inf_per_device(optimizer)  # what unscale found: device tensors, no sync
        self.scaler.step(optimizer)
        self.scaler.update()
        for overflowed in found_inf.values():
            self.skipped += overflowed.to(self.skipped.device)

    def log_values(self, trainer: Any) -> dict[str, Any]:
        scale = getattr(self.scaler, "_scale", None)  # the scale tensor itself: get_scale() would synchronise
        return {"amp/scale": scale.reshape(()) if scale is not None else self.scaler.get_scale(),
                "amp/skipped_steps": self.skipped}

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "skipped": self.skipped.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self.skipped = state["skipped"].to(self.skipped.device)

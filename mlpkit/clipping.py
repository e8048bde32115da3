"""Gradient clipping (``trainer.gradient_clip_val``, ``trainer.gradient_clip_algorithm``), counted on the device."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from mlpkit.callbacks import Callback


class GradientClipper(Callback):
    """``trainer.gradient_clip_val``/``gradient_clip_algorithm``, with what TensorBoard shows of it.

    After backward it reads the total gradient norm and whether clipping will act, and counts the
    steps it acts on, all on the device; before the optimizer step it clips in place (after the
    gradient monitor has measured the raw gradients). A logged step fetches, in its one transfer,
    ``grad_norm/total_before_clip`` (this step) and ``clip/fraction`` (the share of the steps since
    the last logged step on which clipping acted)."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], clip_val: float, algorithm: str,
                 device: torch.device):
        self.parameters = list(parameters)
        self.clip_val, self.algorithm = float(clip_val), algorithm
        self.acted = torch.zeros((), device=device)  # steps clipped since the last logged step
        self.steps = 0  # steps inspected since then (a host count: no sync)
        self.total_norm = torch.zeros((), device=device)

    def on_after_backward(self, trainer: object) -> None:
        grads = [p.grad for p in self.parameters if p.grad is not None]
        self.total_norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if self.algorithm == "norm":
            acts = self.total_norm > self.clip_val
        else:
            # the largest |element|: one aminmax pass a tensor (torch._foreach_norm with ord=inf is
            # fifteen times slower on CPU)
            acts = torch.stack([torch.stack(torch.aminmax(grad)) for grad in grads]).abs().max() > self.clip_val
        self.acted += acts
        self.steps += 1

    def on_before_optimizer_step(self, trainer: object) -> None:
        if self.algorithm == "norm":
            torch.nn.utils.clip_grads_with_norm_(self.parameters, self.clip_val, self.total_norm, foreach=True)
        else:
            torch.nn.utils.clip_grad_value_(self.parameters, self.clip_val, foreach=True)

    def log_values(self, trainer: object) -> dict[str, torch.Tensor]:
        """Device values, fetched with the logged step's loss; the count starts again."""
        fraction = self.acted / max(self.steps, 1)
        self.acted.zero_()
        self.steps = 0
        return {"grad_norm/total_before_clip": self.total_norm, "clip/fraction": fraction}

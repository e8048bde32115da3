"""Gradient clipping (``trainer.gradient_clip_val``, ``trainer.gradient_clip_algorithm``), counted on the device."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


class GradientClipper:
    """``trainer.gradient_clip_val``/``gradient_clip_algorithm``, with what TensorBoard shows of it.

    ``inspect()`` after backward reads the total gradient norm and whether clipping will act, and
    counts the steps it acts on, all on the device; ``clip()`` then clips in place (after the
    gradient monitor has measured the raw gradients). ``pending()`` are the device values to fetch
    with a logged step's one transfer; ``scalars(fetched)`` turns them into TensorBoard scalars and
    starts a new count."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], clip_val: float, algorithm: str,
                 device: torch.device):
        self.parameters = list(parameters)
        self.clip_val, self.algorithm = float(clip_val), algorithm
        self.acted = torch.zeros((), device=device)  # steps clipped since the last logged step
        self.steps = 0  # steps inspected since then (a host count: no sync)
        self.total_norm = torch.zeros((), device=device)

    def inspect(self) -> None:
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

    def clip(self) -> None:
        if self.algorithm == "norm":
            torch.nn.utils.clip_grads_with_norm_(self.parameters, self.clip_val, self.total_norm, foreach=True)
        else:
            torch.nn.utils.clip_grad_value_(self.parameters, self.clip_val, foreach=True)

    def pending(self) -> dict[str, torch.Tensor]:
        return {"clip_total_norm": self.total_norm, "clip_acted": self.acted}

    def scalars(self, fetched: Mapping[str, list[float]]) -> dict[str, float]:
        """``grad_norm/total_before_clip`` (this step) and ``clip/fraction`` (the share of the steps
        since the last logged step on which clipping acted)."""
        fraction = fetched["clip_acted"][0] / max(self.steps, 1)
        self.acted.zero_()
        self.steps = 0
        return {"grad_norm/total_before_clip": fetched["clip_total_norm"][0], "clip/fraction": fraction}

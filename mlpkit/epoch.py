"""The epoch in progress: its batch order, the next batch, each batch's loss so far and when this
session started it. A checkpoint taken mid-epoch keeps it, so a resume goes on at the next batch."""
from __future__ import annotations

import time
from typing import Any

import torch

BETWEEN_EPOCHS = {"epoch_order": None, "next_batch": 0, "epoch_losses": None}  # a checkpoint at an epoch's end


class EpochInProgress:
    def __init__(self, order: torch.Tensor, next_batch: int = 0, losses: list[torch.Tensor] | None = None):
        self.order, self.next_batch = order, next_batch
        # on the device: one copy per step, read at the epoch's end, at checkpoints and when stopping
        self.losses: list[torch.Tensor] = losses if losses is not None else []
        self.started: tuple[float, int] | None = None  # this session's start: when, from which batch

    def start(self) -> None:
        self.started = (time.perf_counter(), self.next_batch)

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)
        self.next_batch += 1

    def losses_so_far(self, device: torch.device) -> torch.Tensor:
        """The loss of each batch so far, one tensor on the device."""
        return torch.stack(self.losses) if self.losses else torch.zeros(0, device=device)

    def trained(self, batch_size: int, rows_per_epoch: int) -> tuple[float, int]:
        """Seconds and rows this session has trained of the epoch."""
        if self.started is None:
            return 0.0, 0
        started, first_batch = self.started
        rows = min(self.next_batch * batch_size, rows_per_epoch) - min(first_batch * batch_size, rows_per_epoch)
        return time.perf_counter() - started, rows

    def state(self, losses: torch.Tensor) -> dict[str, Any]:
        return {"epoch_order": self.order.cpu(), "next_batch": self.next_batch, "epoch_losses": losses.cpu()}

    @classmethod
    def from_state(cls, extra: dict[str, Any], data_device: torch.device,
                   device: torch.device) -> EpochInProgress | None:
        """The epoch a checkpoint was taken in; None for one taken between epochs."""
        if extra.get("epoch_order") is None:
            return None
        saved = extra["epoch_losses"]
        losses = list(saved.to(device).unbind()) if saved is not None else []
        return cls(extra["epoch_order"].to(data_device), extra["next_batch"], losses)

"""The training loop, top to bottom: batches by index, loss, backward, step, log, evaluate."""
from __future__ import annotations

import logging
import math
import time
from typing import Protocol

import torch
from tqdm.auto import tqdm

from mlpkit.data import Data, Split
from mlpkit.model import MLP
from mlpkit.objective import Objective

log = logging.getLogger(__name__)
EVAL_CHUNK = 8192  # rows per forward pass when evaluating a whole split


class ScalarLogger(Protocol):
    def log_scalars(self, values: dict[str, float], step: int) -> None: ...


class Trainer:
    """Trains ``model`` on ``data.train``, evaluates on ``data.val`` every epoch.

    Gradient norms of every Linear layer are computed on the device with one fused
    ``torch._foreach_norm`` and pulled to the host once per ``log_every_n_steps``, together with
    the loss: that is the loop's only host synchronisation besides the per-epoch evaluation.
    """

    def __init__(
        self,
        model: MLP,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        data: Data,
        *,
        max_epochs: int,
        batch_size: int,
        seed: int,
        log_every_n_steps: int = 10,
        logger: ScalarLogger | None = None,
        progress: bool = False,
    ):
        self.model, self.objective, self.optimizer, self.data = model, objective, optimizer, data
        self.max_epochs, self.batch_size = max_epochs, batch_size
        self.log_every_n_steps = log_every_n_steps
        self.logger = logger
        self.progress = progress
        self.batch_generator = torch.Generator().manual_seed(seed)
        self.layers = model.linear_layers()
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    # --- one step ------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model.logits(x)
        loss = self.objective.loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.logger is not None and self.step % self.log_every_n_steps == 0:
            self.log_step(loss)
        self.optimizer.step()
        return loss.detach()

    def log_step(self, loss: torch.Tensor) -> None:
        """Loss and per-layer gradient norms: computed on the device, one transfer to the host."""
        weights = [layer.weight.grad for layer in self.layers.values()]
        biases = [layer.bias.grad for layer in self.layers.values() if layer.bias is not None]
        norms = torch._foreach_norm(weights + biases)
        values = torch.stack([loss.detach().float(), *[n.float() for n in norms]]).tolist()
        names = list(self.layers)
        scalars = {"loss/train": values[0]}
        scalars.update({f"grad_norm/{name}": v for name, v in zip(names, values[1:1 + len(names)])})
        scalars.update({f"grad_norm_bias/{name}": v for name, v in zip(names, values[1 + len(names):])})
        self.logger.log_scalars(scalars, self.step)

    # --- one epoch -----------------------------------------------------------------------------
    def train_epoch(self) -> float:
        split = self.data.train
        self.model.train()
        order = torch.randperm(len(split), generator=self.batch_generator).to(split.x.device)
        loss_sum = torch.zeros((), device=split.x.device)
        for start in range(0, len(split), self.batch_size):
            rows = order[start:start + self.batch_size]
            loss_sum += self.train_step(split.x[rows], split.y[rows]) * rows.numel()
            self.step += 1
        return loss_sum.item() / len(split)

    @torch.no_grad()
    def evaluate(self, split: Split) -> dict[str, float]:
        """Every metric of the objective on a whole split (one host transfer)."""
        was_training = self.model.training
        self.model.eval()
        logits = torch.cat([self.model.logits(split.x[i:i + EVAL_CHUNK])
                            for i in range(0, len(split), EVAL_CHUNK)])
        metrics = self.objective.metrics(logits, split.y)
        self.model.train(was_training)
        values = torch.stack([v.float() for v in metrics.values()]).tolist()
        return dict(zip(metrics, values))

    # --- the whole run -------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train for ``max_epochs`` and return final metrics, timing and per-epoch history."""
        bar = tqdm(range(self.max_epochs), desc="epochs", unit="epoch", disable=not self.progress,
                   dynamic_ncols=True)
        train_seconds = 0.0
        for self.epoch in bar:
            started = time.perf_counter()
            train_loss = self.train_epoch()
            train_seconds += time.perf_counter() - started
            val = self.evaluate(self.data.val)
            self.record_epoch(train_loss, val, bar)
        bar.close()
        samples = len(self.data.train) * self.max_epochs
        return {
            "train": self.evaluate(self.data.train),
            "val": self.evaluate(self.data.val),
            "test": self.evaluate(self.data.test),
            "epochs": self.max_epochs,
            "steps": self.step,
            "train_seconds": train_seconds,
            "samples_per_second": samples / train_seconds if train_seconds > 0 else 0.0,
            "history": self.history,
        }

    def record_epoch(self, train_loss: float, val: dict[str, float], bar: tqdm) -> None:
        entry = {"epoch": self.epoch + 1, "step": self.step, "loss/train_epoch": train_loss}
        entry.update({f"{name}/val": value for name, value in val.items()})
        self.history.append(entry)
        if self.logger is not None:
            self.logger.log_scalars({k: v for k, v in entry.items() if "/" in k}, self.step)
        summary = "  ".join(f"{k} {v:.4g}" for k, v in entry.items() if "/" in k)
        if self.progress:
            bar.set_postfix_str(summary)
        else:
            log.info("epoch %d/%d  %s", self.epoch + 1, self.max_epochs, summary)
        if not math.isfinite(train_loss):
            log.warning("loss/train is %s at epoch %d", train_loss, self.epoch + 1)

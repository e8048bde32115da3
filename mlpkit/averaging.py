"""Weight averaging: an exponential moving average of the weights (``trainer.ema_decay``) and
stochastic weight averaging (``trainer.swa_start``), with ``torch.optim.swa_utils``.

The averaged copies train alongside the model and are evaluated at the end of the run: metrics.json
gets ``val_ema``/``test_ema`` (and ``val_swa``/``test_swa``) beside the raw weights' ``val``/``test``.
Both are callback state in every checkpoint, so a resumed run averages as an uninterrupted one would.
The EMA updates after every optimizer step (one fused kernel over the parameters, batch norm's
running statistics averaged with them); SWA averages the weights at the end of every epoch from
``swa_start`` on, and recomputes batch norm's statistics for the averaged weights on the training
rows at the end (``update_bn``), as SWA needs.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from mlpkit.callbacks import Callback

log = logging.getLogger("mlpkit")


class WeightAveraging(Callback):
    state_key = "weight_averaging"

    def __init__(self, model: torch.nn.Module, ema_decay: float = 0.0, swa_start: int = 0):
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True) \
            if ema_decay else None
        self.swa = AveragedModel(model) if swa_start else None
        self.swa_start = swa_start

    def on_after_optimizer_step(self, trainer: Any) -> None:
        if self.ema is not None:
            self.ema.update_parameters(trainer.model)

    def on_validation_end(self, trainer: Any, metrics: dict[str, float], improved: bool) -> None:
        if self.swa is not None and trainer.epoch >= self.swa_start:
            self.swa.update_parameters(trainer.model)

    def on_fit_start(self, trainer: Any) -> None:
        if self.swa is not None and self.swa_start > trainer.max_epochs:
            log.warning("trainer.swa_start=%d comes after the run's last epoch (trainer.max_epochs=%d): no weights "
                        "are averaged, so the run reports no val_swa (a resume with more epochs would average them)",
                        self.swa_start, trainer.max_epochs)

    def on_fit_end(self, trainer: Any, final: dict[str, dict[str, float]]) -> None:
        """The averaged weights' metrics, beside the raw weights' (for the splits the run has)."""
        for name, averaged in (("ema", self.ema), ("swa", self.swa)):
            if averaged is None or (name == "swa" and int(averaged.n_averaged) == 0):
                continue
            if name == "swa" and has_batch_norm(averaged.module):
                train = trainer.data.train
                update_bn((train.batch(slice(i, i + trainer.batch_size), trainer.device)[0]
                           for i in range(0, len(train), trainer.batch_size)), averaged.module)
            for split in ("val", "test"):
                if len(getattr(trainer.data, split)):
                    final[f"{split}_{name}"] = trainer.evaluate(getattr(trainer.data, split), averaged.module)

    def state_dict(self) -> dict[str, Any]:
        return {name: averaged.state_dict() for name, averaged in (("ema", self.ema), ("swa", self.swa))
                if averaged is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, averaged in (("ema", self.ema), ("swa", self.swa)):
            if averaged is not None and name in state:
                averaged.load_state_dict(state[name])


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())

"""Ranks, shares and reductions for ``trainer.strategy=ddp``: a run started by ``torchrun`` trains
as one run over its ranks.

A data-parallel run means what a single-process run means. ``trainer.batch_size`` stays the global
batch; every rank holds the whole (in-memory) data set and draws the same seeded shuffle; in each
step rank r takes its contiguous share of the batch's rows, weights its loss by that share (as
``Trainer.backward`` weights accumulated batches) and the gradients are summed over the ranks with
one all-reduce of one flat buffer, which carries the step's loss and each rank's stop signal too.
Every rank then holds the same gradients, measures the same diagnostics and takes the same optimizer
step: the weights stay equal without being sent. Rank 0 alone writes the run's files.

torch is imported inside the functions: mlpkit.config and ``python train.py --help`` import this
module and need none of it.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from mlpkit.errors import ConfigError

if TYPE_CHECKING:
    import torch

STRATEGIES = ("auto", "single", "ddp")
TORCHRUN = "torchrun --nproc_per_node=N train.py ..."
_ONE_GPU = re.compile(r"cuda:\d+")


# --- where this process stands ---------------------------------------------------------------------
def world_size() -> int:
    """The ranks torchrun (or SLURM through it) started: WORLD_SIZE, 1 when none."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def launched() -> bool:
    """Whether torchrun started this process as one of several ranks."""
    return world_size() > 1


def writes_files() -> bool:
    """Rank 0 writes the run's files (and a process that is no rank: every single-process run)."""
    return rank() == 0


def resolve_strategy(strategy: str) -> str:
    """``trainer.strategy``: auto is ddp under torchrun with several ranks, else single; ddp without
    several ranks, or single with them, is refused."""
    strategy = str(strategy)
    if strategy == "auto":
        return "ddp" if launched() else "single"
    if strategy == "ddp" and not launched():
        raise ConfigError("trainer.strategy", strategy, f"auto or single in one process; ddp runs start with "
                          f"{TORCHRUN} (WORLD_SIZE is {world_size()} here)")
    if strategy == "single" and launched():
        raise ConfigError("trainer.strategy", strategy, f"auto or ddp under torchrun (WORLD_SIZE={world_size()}); "
                          "single trains in one process: start it with python train.py")
    return strategy


def check_ddp_device(device: str) -> None:
    """One device per rank: cuda (each rank takes cuda:LOCAL_RANK) or cpu, never one GPU for all."""
    if _ONE_GPU.fullmatch(str(device)):
        raise ConfigError("trainer.device", device, "cuda (rank r trains on cuda:LOCAL_RANK), auto or cpu with "
                          "trainer.strategy=ddp", f"{device} would put all {world_size()} ranks on one GPU")
    if str(device) == "mps":
        raise ConfigError("trainer.device", device, "cuda, auto or cpu with trainer.strategy=ddp",
                          "torch.distributed has no MPS backend")


def check_ranks_fit(ranks: int, train_rows: int, batch_size: int, norm: str = "none", drop_last: bool = False) -> None:
    """Each rank takes at least one row of every full batch: the ranks may not outnumber the rows
    of a batch (nor the training rows); with BatchNorm no rank's share may be one row."""
    if ranks > train_rows:
        raise ConfigError("WORLD_SIZE", ranks, f"at most {train_rows} ranks (the training rows)",
                          "each rank trains on its share of every batch; start fewer ranks")
    if ranks > batch_size:
        raise ConfigError("trainer.batch_size", batch_size, f"at least {ranks} (the ranks torchrun started) with "
                          "trainer.strategy=ddp", "the global batch is shared among the ranks, each taking at "
                          "least one row")
    last = 0 if drop_last else train_rows % batch_size
    if norm == "batch" and any(1 in share_sizes(rows, ranks) for rows in (batch_size, last) if rows):
        raise ConfigError("trainer.batch_size", batch_size, f"a size whose share per rank ({ranks} ranks) is never "
                          f"one row with model.norm=batch, e.g. {2 * ranks}", "each rank's BatchNorm normalises its "
                          "own share of the batch, and cannot normalise a single row")


def share_sizes(rows: int, ranks: int) -> set[int]:
    """The rows each rank takes of a batch of ``rows`` (GradientSync.share)."""
    base, extra = divmod(rows, ranks)
    return {base, base + 1} if extra else {base}


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK for a cuda run (made current, as NCCL needs), else ``device``."""
    import torch

    if device.type != "cuda":
        return device
    if local_rank() >= torch.cuda.device_count():
        raise ConfigError("trainer.device", str(device), f"a machine with a GPU per rank ({torch.cuda.device_count()} "
                          f"here)", f"local rank {local_rank()} has no cuda:{local_rank()}")
    torch.cuda.set_device(local_rank())
    return torch.device("cuda", local_rank())


# --- the process group -----------------------------------------------------------------------------
def start() -> None:
    """Join torchrun's process group: gloo for CPU tensors, and NCCL for CUDA ones where there is
    CUDA (a ``device:backend`` pair each: the tensor's device picks; objects travel on gloo)."""
    import atexit

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    nccl = torch.cuda.is_available() and dist.is_nccl_available()
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if nccl else "gloo")
    atexit.register(stop)


def stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def started() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value``, on every rank."""
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


# --- one step over the ranks -----------------------------------------------------------------------
class GradientSync:
    """This rank's share of each batch and the one all-reduce per step.

    ``all_reduce`` sums, over the ranks, the gradients, the loss (each rank's weighted by its rows'
    share: the sum is the batch's mean) and a slot per rank holding the signal that rank received
    (0: none). Every rank reads the same slots after the step, so all stop after the same step."""

    def __init__(self, ranks: int, this_rank: int):
        self.ranks, self.rank = ranks, this_rank
        self.stop_signal: int | None = None  # agreed: a signal some rank received, or None

    def share(self, rows: int) -> slice:
        """This rank's contiguous rows of a batch of ``rows``: the first ``rows % ranks`` ranks take one more."""
        base, extra = divmod(rows, self.ranks)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def all_reduce(self, parameters: list[torch.Tensor], loss: torch.Tensor, signal: int | None) -> torch.Tensor:
        """Sum the gradients (a rank without rows adds zeros), the loss and the stop slots over the
        ranks; the gradients are replaced in place, the summed loss returned."""
        import torch
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        slots = torch.zeros(self.ranks, device=loss.device, dtype=grads[0].dtype)
        slots[self.rank] = signal or 0
        flat = _flatten_dense_tensors([*grads, loss.reshape(1).to(grads[0].dtype), slots])
        dist.all_reduce(flat)
        *summed, total, agreed = _unflatten_dense_tensors(flat, [*grads, total_like(loss, grads), slots])
        for parameter, grad in zip(parameters, summed):
            parameter.grad = grad
        signals = [int(value) for value in agreed.tolist() if value]  # a host read: the stop must be agreed
        self.stop_signal = signals[0] if signals else None
        return total.reshape(()).to(loss.dtype)

    def broadcast_model(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (equal already when seeded alike: a guard)."""
        import torch.distributed as dist

        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def average_buffers(self, model: torch.nn.Module) -> None:
        """BatchNorm's running statistics averaged over the ranks (each normalised its own share), before
        an evaluation: the ranks evaluate the same model."""
        import torch.distributed as dist

        floating = [buffer for buffer in model.buffers() if buffer.is_floating_point()]
        for buffer in floating:
            dist.all_reduce(buffer.data)
            buffer.data /= self.ranks


def total_like(loss: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.zeros(1, device=loss.device, dtype=grads[0].dtype)


def gradient_sync(strategy: str) -> GradientSync | None:
    """The step's reduction for a ddp run (joining torchrun's process group if the caller has not),
    None for a single-process one."""
    if resolve_strategy(strategy) != "ddp":
        return None
    start()
    return GradientSync(world_size(), rank())

"""Where and how fast a run computes: the device, threads per job, matmul precision, bf16 autocast,
torch.compile and CUDA graphs, fused optimizers.

Each one is a torch feature switched on from the config; nothing here reimplements one.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext

import torch

from mlpkit.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``trainer.device``: auto picks cuda, then mps, then cpu; a device that is not here is refused."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu", "no CUDA device is available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu", "no MPS device is available here")
    return torch.device(name)


def parallel_jobs(launcher: Mapping, cores: int) -> int:
    """How many jobs the launcher runs at once on this machine (1 for a sequential launcher)."""
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n_jobs = int(launcher.get("n_jobs", -1))
        return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)  # joblib: -1 = all cores
    return 1


def torch_threads(setting: int | str, launcher: Mapping, cores: int | None = None) -> int | None:
    """Threads for one job so that jobs x threads <= cores; None leaves torch's default alone.

    ``setting``: ``auto`` or a positive integer. With submitit the job owns ``cpus_per_task``
    cores; with Ray, ``ray.remote.num_cpus``; with joblib a share of this machine's cores.
    """
    if str(setting) != "auto":
        return int(setting)
    cores = cores or os.cpu_count() or 1
    target = str(launcher.get("_target_", ""))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    if "ray" in target:  # Ray reserves ray.remote.num_cpus per job (1 unless set)
        num_cpus = ((launcher.get("ray") or {}).get("remote") or {}).get("num_cpus")
        return int(num_cpus) if num_cpus else 1
    jobs = parallel_jobs(launcher, cores)
    return max(1, cores // jobs) if jobs > 1 else None


LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_settings(device: torch.device, compile_step: bool, cuda_graphs: bool, precision: str = "32") -> None:
    """Refuse what this device cannot do, before any data is loaded (the values are checked by
    config.validate)."""
    if precision == "16-mixed" and device.type != "cuda":
        raise ConfigError("trainer.precision", precision, "32 or bf16-mixed on this device",
                          f"float16 with loss scaling is for CUDA devices; this run trains on {device}: "
                          "trainer.precision=bf16-mixed autocasts to bfloat16, which needs no loss scaling")
    if cuda_graphs and device.type != "cuda":
        raise ConfigError("trainer.cuda_graphs", cuda_graphs, "false on this device",
                          f"CUDA graphs need a CUDA device; this run trains on {device}")
    if (compile_step or cuda_graphs) and device.type == "mps":
        raise ConfigError("trainer.compile", compile_step, "false on mps", "torch.compile does not target mps")


def set_matmul_precision(device: torch.device, tf32: bool) -> None:
    """On CUDA, float32 matmuls on TF32 tensor cores (or not); other devices keep full float32."""
    if device.type != "cuda":
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = "tf32" if tf32 else "ieee"
    else:
        matmul.allow_tf32 = tf32


def autocast(device: torch.device, precision: str):
    """A context for the forward pass: bf16 autocast for ``bf16-mixed``, fp16 for ``16-mixed`` (with
    loss scaling: mlpkit.loss_scaling), nothing for ``32``."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return nullcontext()


AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def compile_loss(forward_loss: LossFunction, cuda_graphs: bool) -> LossFunction:
    """``forward_loss`` (forward and loss; its backward comes compiled with it) through torch.compile
    with static shapes. With ``cuda_graphs``, mode "reduce-overhead": torch records the compiled
    forward and backward as CUDA graphs once and replays them every step."""
    return torch.compile(forward_loss, dynamic=False, mode="reduce-overhead" if cuda_graphs else None)


FUSED_DEVICES = ("cpu", "cuda")  # where torch has fused Adam, AdamW and SGD kernels


def resolve_fused(setting: object, device: torch.device) -> bool | None:
    """``optimizer.fused``: ``auto`` means torch's fused kernel where it has one (CPU, CUDA), torch's
    default elsewhere. On 2 CPU cores the fused Adam step makes a digits epoch about 12% faster."""
    if setting == "auto":
        return True if device.type in FUSED_DEVICES else None
    if setting is None or isinstance(setting, bool):
        return setting
    raise ConfigError("optimizer.fused", setting, "auto, true, false or null")

"""Random-number-generator state: captured into a checkpoint and restored from it, so a resumed run draws the same numbers."""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

RNG_KEYS = ("torch", "cuda", "numpy", "python", "batch_generator")


def capture_rng_state(batch_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG the loop draws from, as tensors and plain containers (weights_only-loadable)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state(legacy=True)
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # Only when CUDA is in use: capturing would otherwise start a CUDA context for nothing,
        # and an untouched CUDA generator is already where seed_everything left it.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        # MT19937 keys are uint32; int64 holds them exactly and every torch version stores it.
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gauss)},
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
        "batch_generator": None if batch_generator is None else batch_generator.get_state(),
    }


def restore_rng_state(rng: Mapping[str, Any], batch_generator: torch.Generator | None = None) -> None:
    """Put every RNG back exactly where ``capture_rng_state`` found it."""
    # set_rng_state wants CPU byte tensors, whatever map_location the file was loaded with.
    torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") is not None and torch.cuda.is_available():
        states = [state.cpu() for state in rng["cuda"]][: torch.cuda.device_count()]
        for index, state in enumerate(states):
            torch.cuda.set_rng_state(state, index)
    numpy_state = rng["numpy"]
    np.random.set_state((
        numpy_state["kind"], numpy_state["keys"].cpu().numpy().astype(np.uint32),
        numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))
    python_state = rng["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]),
                     python_state["gauss_next"]))
    if batch_generator is not None and rng.get("batch_generator") is not None:
        batch_generator.set_state(rng["batch_generator"].to("cpu"))

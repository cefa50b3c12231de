"""Seconds per local training step of a run config's workload, for several LoRA layer placements.

For each ``lora_layers`` value (``None``: LoRA on every layer) the workload is built from the config, one
client trains ``steps`` steps twice from the same adapter, and both passes are timed: the first pays for
filling the layer cache (the frozen bottom layers, once per example), the second shows the steady state
that later rounds see. With ``cache=False`` the same placement runs the whole model every step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from ..config import RunConfig

__all__ = ["time_steps"]


def time_steps(
    config: RunConfig,
    placements: Sequence[int | None],
    *,
    steps: int = 10,
    cache: Sequence[bool] = (True,),
    log: Any = None,
) -> list[dict[str, Any]]:
    """One row per (placement, cache) pair: ``lora_layers``, ``cache``, ``lora_numel``, ``first_s_per_step``
    (cache fill included), ``s_per_step`` (second pass), ``batch_size``, ``max_length``, ``threads``."""
    import torch

    from ..models.workload import build_workload

    train = dataclasses.replace(config.train, max_steps=steps)
    rows = []
    for top in placements:
        for use_cache in cache:
            if use_cache and top is None:
                continue  # nothing is frozen below the LoRA: there is nothing to cache
            model = dataclasses.replace(
                config.model, lora_layers=top, layer_cache_mb=config.model.layer_cache_mb if use_cache else 0
            )
            wl = build_workload(model, config.data, seed=config.fl.seed)
            lora, head = wl.initial_params()
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                wl.train_client(0, lora, head, train, seed=0)
                times.append((time.perf_counter() - t0) / steps)
            row = {
                "lora_layers": top,
                "cache": bool(use_cache and top is not None),
                "lora_numel": wl.lora_spec.numel,
                "first_s_per_step": round(times[0], 4),
                "s_per_step": round(times[1], 4),
                "batch_size": train.batch_size,
                "max_length": model.max_length,
                "threads": torch.get_num_threads(),
            }
            rows.append(row)
            if log is not None:
                log(row)
    return rows

"""The final model of a run, written by both drivers (``fedsqueeze run`` and the Flower ServerApp).

- ``OUT/final_params.safetensors``: every trained tensor under its stable name, ``lora/<name>`` and
  ``head/<name>`` (float32), whatever the workload;
- ``OUT/final_adapter/``: the adapter in PEFT's own format (``adapter_model.safetensors`` +
  ``adapter_config.json``, the classifier head included as PEFT's ``modules_to_save``), loadable with
  ``peft.PeftModel.from_pretrained(base_model, "OUT/final_adapter")``; written when the workload can
  (``save_adapter``: the PEFT workloads; the tests' toy workload cannot).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write

__all__ = ["FINAL_ADAPTER", "FINAL_PARAMS", "save_final"]

FINAL_PARAMS = "final_params.safetensors"
FINAL_ADAPTER = "final_adapter"


def save_final(
    out: Path, lora: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor], workload: Any = None
) -> list[Path]:
    """Write the final parameters (and, when ``workload`` has ``save_adapter``, the PEFT adapter) to
    ``out``; returns the paths written."""
    from safetensors.torch import save_file

    tensors = {f"lora/{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in lora.items()}
    tensors.update({f"head/{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in head.items()})
    atomic_write(out / FINAL_PARAMS, lambda tmp: save_file(tensors, tmp))
    written = [out / FINAL_PARAMS]
    save_adapter = getattr(workload, "save_adapter", None)
    if callable(save_adapter):
        final, tmp = out / FINAL_ADAPTER, out / f".{FINAL_ADAPTER}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_adapter(dict(lora), dict(head), tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        written.append(final)
    return written

"""LoRA through PEFT, and the adapter / head tensors as ordered dicts with stable names.

Names are PEFT's parameter names without the wrapper prefix and adapter name, e.g.
``bert.encoder.layer.0.attention.self.query.lora_A.weight`` and ``classifier.weight``, in the model's
parameter (state-dict) order.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from .._extras import require
from ..errors import ConfigError
from ..spec import UpdateSpec

__all__ = ["DEFAULT_TARGETS", "apply_lora", "read_tensors", "split_trainable", "stable_name", "write_tensors"]

DEFAULT_TARGETS = {
    "minilm": ("query", "value"),
    "tiny-bert": ("query", "value"),
    "smollm2-135m": ("q_proj", "v_proj"),
    "tiny-llama": ("q_proj", "v_proj"),
}


def apply_lora(
    model: torch.nn.Module,
    model_name: str,
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: tuple[str, ...] | None,
    classification: bool,
    layers: list[int] | None = None,
) -> Any:
    """Wrap ``model`` with a LoRA adapter; for classification the head is trained as ``modules_to_save``.

    ``layers``: the transformer layer indices that get LoRA (PEFT's ``layers_to_transform``); ``None``: all.

    LoRA ``A`` is drawn from the global torch RNG (``B`` starts at zero): seed it before calling.
    """
    require("peft", "llm", "LoRA adapters on Hugging Face models")
    from peft import LoraConfig, TaskType, get_peft_model

    targets = list(target_modules or DEFAULT_TARGETS[model_name])
    head = ["classifier"] if model_name in ("minilm", "tiny-bert") else ["score"]
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=head if classification else None,
        layers_to_transform=layers,
    )
    try:
        with warnings.catch_warnings():
            # PEFT calls a transformers API that transformers 5 deprecates; not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:  # PEFT: "Target modules {...} not found in the base model"
        raise ConfigError(f"model.target_modules = {targets}: {exc}") from exc


def stable_name(peft_name: str) -> str:
    """``base_model.model.x.lora_A.default.weight`` -> ``x.lora_A.weight``;
    ``...classifier.modules_to_save.default.weight`` -> ``classifier.weight``."""
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".modules_to_save.default.", ".").replace(".default.", ".")


def split_trainable(
    peft_model: torch.nn.Module,
) -> tuple[OrderedDict[str, torch.nn.Parameter], OrderedDict[str, torch.nn.Parameter]]:
    """The trainable parameters, split into LoRA (``lora_`` in the name) and the rest (the head)."""
    lora: OrderedDict[str, torch.nn.Parameter] = OrderedDict()
    head: OrderedDict[str, torch.nn.Parameter] = OrderedDict()
    for name, p in peft_model.named_parameters():
        if not p.requires_grad:
            continue
        key = stable_name(name)
        target = lora if ".lora_" in name else head
        if key in target:
            raise ConfigError(f"two trainable tensors map to the name {key!r}")
        target[key] = p
    if not lora:
        raise ConfigError("the LoRA adapter has no trainable tensors; check model.target_modules")
    return lora, head


def read_tensors(params: Mapping[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Detached float32 CPU copies of ``params``, in order (the model may live on a GPU)."""
    return {k: p.detach().to("cpu", torch.float32).clone() for k, p in params.items()}


def write_tensors(params: Mapping[str, torch.nn.Parameter], tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into ``params`` in place; names and shapes must match exactly."""
    UpdateSpec.from_tensors(params).check(tensors)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[k].to(p.dtype))

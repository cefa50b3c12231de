"""LoRA through PEFT, and the adapter / head tensors as ordered dicts with stable names.

Names are PEFT's parameter names without the wrapper prefix and adapter name, e.g.
``bert.encoder.layer.0.attention.self.query.lora_A.weight`` and ``classifier.weight``, in the model's
parameter (state-dict) order.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from .._extras import require
from ..errors import ConfigError
from ..spec import UpdateSpec
from .registry import ALL_LINEAR, available, find, get

__all__ = [
    "DEFAULT_TARGETS",
    "apply_lora",
    "freeze_lora_a",
    "linear_module_names",
    "read_tensors",
    "split_trainable",
    "stable_name",
    "write_tensors",
]

# The built-in models' default LoRA targets (the registry's), by name.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {name: get(name).targets for name in available()}
HEAD_NAMES = ("classifier", "score")  # transformers' sequence-classification heads (PEFT's convention)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names (last path part) of ``model``'s linear layers, deduplicated, in module order: what
    ``model.target_modules`` may name (``torch.nn.Linear`` and transformers' GPT-2 style ``Conv1D``)."""
    names = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    ]
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))


_LORA_LAYERS = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _check_targets(model: torch.nn.Module, targets: list[str], model_name: str) -> None:
    """:class:`~fedsqueeze.ConfigError` naming the first target that matches no layer LoRA can wrap."""
    layers = [
        n for n, m in model.named_modules() if isinstance(m, _LORA_LAYERS) or type(m).__name__ == "Conv1D"
    ]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in layers):
            raise ConfigError(
                f"model.target_modules: {model_name} has no linear module {target!r}; its linear modules are "
                f"{', '.join(linear_module_names(model))} (or use 'all-linear')"
            )


def _head_modules(model: torch.nn.Module, model_name: str) -> list[str]:
    entry = find(model_name)
    if entry is not None:
        return [entry.head]
    heads = [n for n in HEAD_NAMES if isinstance(getattr(model, n, None), torch.nn.Module)]
    if not heads:
        raise ConfigError(
            f"{model_name}: its sequence classifier has no head named {' or '.join(HEAD_NAMES)}; use a "
            "causal LM with model.classifier = 'verbalizer'"
        )
    return heads


def _inputs_to_float32(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _float32_trainables(peft_model: torch.nn.Module) -> None:
    """Keep every trainable tensor float32 over a lower-precision base (``model.dtype``): a no-op over a
    float32 base. A float32 head copy casts its (bfloat16 / float16) input up; PEFT's LoRA layers cast
    their input to the adapter's dtype and the result back themselves."""
    from peft.utils import ModulesToSaveWrapper

    for p in peft_model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    for module in peft_model.modules():
        if isinstance(module, ModulesToSaveWrapper) and any(
            p.dtype != torch.float32 for p in module.original_module.parameters()
        ):
            module.register_forward_pre_hook(_inputs_to_float32)


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

    ``target_modules``: module names, ``("all-linear",)`` (every linear layer but the output one and the
    classification head) or ``None`` (the built-in model's default, else PEFT's default for the
    architecture). ``layers``: the transformer layer indices that get LoRA (PEFT's ``layers_to_transform``);
    ``None``: all. The LoRA tensors and the head are float32 whatever the base model's dtype.

    LoRA ``A`` is drawn from the global torch RNG (``B`` starts at zero): seed it before calling.
    """
    require("peft", "llm", "LoRA adapters on Hugging Face models")
    from peft import LoraConfig, TaskType, get_peft_model

    entry = find(model_name)
    targets: list[str] | str | None
    if target_modules is None:
        targets = list(entry.targets) if entry is not None else None  # None: PEFT's per-architecture default
    elif tuple(target_modules) == (ALL_LINEAR,):
        targets = ALL_LINEAR
    else:
        targets = list(target_modules)
        _check_targets(model, targets, model_name)
    head = _head_modules(model, model_name) if classification else None
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM,
        r=r,
        # PEFT annotates int, but it scales by alpha / r and saves the value in adapter_config.json as given:
        # the config's float (32.0) passes through unchanged, so the saved adapters stay the same.
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=head,
        layers_to_transform=layers,
    )
    try:
        with warnings.catch_warnings():
            # PEFT calls a transformers API that transformers 5 deprecates; not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config)
    except ValueError as exc:  # PEFT: "Target modules {...} not found in the base model", no default, ...
        shown = targets if targets is not None else "unset"
        raise ConfigError(
            f"model.target_modules = {shown}: {_one_line(exc)[:300]}; the model's linear modules are "
            f"{', '.join(linear_module_names(model))}"
        ) from None
    _float32_trainables(peft_model)
    return peft_model


# PEFT's LoRA A factors: ``lora_A`` (linear, conv) and ``lora_embedding_A`` (embedding layers).
_LORA_A = re.compile(r"\.lora_(embedding_)?A\.")


def freeze_lora_a(peft_model: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Freeze every LoRA ``A`` of ``peft_model`` where it stands (FFA-LoRA: only ``B`` trains).

    Call it right after :func:`apply_lora`: ``A`` then keeps its seeded initialisation, which every client
    and the server draw alike from the same seed, so it is never sent; :func:`split_trainable` no longer
    lists it and ``save_pretrained`` still writes it. Returns the frozen tensors (stable names, detached
    float32 CPU copies).
    """
    frozen: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, p in peft_model.named_parameters():
        if _LORA_A.search(name) and p.requires_grad:
            p.requires_grad_(False)
            frozen[stable_name(name)] = p.detach().to("cpu", torch.float32).clone()
    if not frozen:
        raise ConfigError("model.lora_train = 'b': the adapter has no trainable LoRA A to freeze")
    return frozen


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

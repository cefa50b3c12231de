"""Model registry: the built-in models by name, and what any ``model.name`` resolves to.

A ``model.name`` is one of three things:

- a built-in model, an entry of this registry (:func:`available`): where its weights come from (a
  checkpoint folder from an installed asset package, or the config of a randomly initialised test model),
  its tokenizer, its kind, its default LoRA targets and the name of its classification head;
- a local directory holding a Hugging Face model (``config.json`` beside the weights, written by
  ``save_pretrained``);
- a Hugging Face hub id, only where the hub is on (``FEDSQUEEZE_OFFLINE=0``).

Adding a built-in model is one :func:`register` call at the end of this module. Nothing here imports
transformers; the entries' loaders do, when called.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UsageError
from ..offline import OPT_OUT_VAR, offline_requested
from .assets import (
    minilm_dir,
    minilm_tokenizer,
    smollm2_fp32_dir,
    smollm2_tokenizer,
    tiny_bert_config,
    tiny_llama_config,
)

__all__ = [
    "ALL_LINEAR",
    "AUTO",
    "DTYPES",
    "KINDS",
    "TOY",
    "ModelEntry",
    "available",
    "check_name",
    "find",
    "get",
    "hub_enabled",
    "local_dir",
    "model_config_json",
    "model_type",
    "register",
    "resolve_kind",
]

KINDS = ("causal-lm", "encoder")
AUTO = "auto"
DTYPES = ("float32", "bfloat16", "float16")  # of the frozen base model; LoRA and the head stay float32
ALL_LINEAR = "all-linear"  # PEFT's shorthand for every linear layer but the output one
TOY = "toy"  # the in-code test workload (fedsqueeze.fl.toy), not a model of this registry

_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
# A hub id: ``name`` or ``owner/name``, letters, digits, ``-``, ``_`` and ``.``.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


@dataclass(frozen=True)
class ModelEntry:
    """One built-in model.

    Attributes
    ----------
    name
        Its ``model.name`` (lower-case letters, digits, ``-`` and ``.``).
    kind
        ``causal-lm`` or ``encoder``.
    targets
        Default LoRA target modules (``model.target_modules`` unset).
    head
        The module a classification head gets (``classifier`` for BERT, ``score`` for causal LMs).
    tokenizer
        Returns its tokenizer (no argument).
    checkpoint
        Returns the folder of its pretrained weights; ``None`` for a randomly initialised model.
    tiny_config
        ``(tokenizer, layers) -> transformers config`` of a randomly initialised model; ``None`` for a
        pretrained one.
    model_type
        Its transformers ``model_type`` (``bert``, ``llama``).
    gguf
        Whether its files are read from a GGUF file (needs the ``gguf`` package).
    pooling
        What a classification head reads with ``model.pooling = "auto"``: ``cls`` (the BERT pooler over
        ``[CLS]``) or ``mean`` (the masked token mean, how sentence-transformers models were trained).
    description
        One line for listings.
    """

    name: str
    kind: str
    targets: tuple[str, ...]
    head: str
    tokenizer: Callable[[], Any]
    checkpoint: Callable[[], Path] | None = None
    tiny_config: Callable[[Any, int], Any] | None = None
    model_type: str = ""
    gguf: bool = False
    pooling: str = "cls"
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"model {self.name!r}: kind must be one of {', '.join(KINDS)}")
        if self.pooling not in ("cls", "mean"):
            raise UsageError(f"model {self.name!r}: pooling must be cls or mean, got {self.pooling!r}")
        if (self.checkpoint is None) == (self.tiny_config is None):
            raise UsageError(f"model {self.name!r}: give exactly one of checkpoint and tiny_config")


_BY_NAME: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to the registry (its name must be new and not ``toy``); returns it."""
    if not _NAME.match(entry.name) or entry.name == TOY:
        raise UsageError(f"model name {entry.name!r} must be lower-case letters, digits, '-' and '.'")
    if entry.name in _BY_NAME:
        raise UsageError(f"model {entry.name!r} is registered already")
    _BY_NAME[entry.name] = entry
    return entry


def available() -> list[str]:
    """Names of the built-in models, sorted."""
    return sorted(_BY_NAME)


def find(name: str) -> ModelEntry | None:
    """The built-in entry named ``name``, or ``None`` (a directory, a hub id, ``toy``)."""
    return _BY_NAME.get(name)


def get(name: str) -> ModelEntry:
    """The built-in entry named ``name``; :class:`~fedsqueeze.ConfigError` if there is none."""
    entry = _BY_NAME.get(name)
    if entry is None:
        raise ConfigError(f"unknown built-in model {name!r}; available: {', '.join(available())}")
    return entry


def hub_enabled() -> bool:
    """Whether hub ids are allowed: ``FEDSQUEEZE_OFFLINE=0`` (or ``false``/``no``/``off``)."""
    return not offline_requested()


def local_dir(name: str) -> Path | None:
    """``name`` as a model directory (one holding ``config.json``), or ``None``."""
    if name in _BY_NAME or name == TOY:
        return None
    path = Path(name).expanduser()
    return path if (path / "config.json").is_file() else None


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or not _HUB_ID.match(name)


def check_name(name: Any) -> None:
    """:class:`~fedsqueeze.ConfigError` unless ``name`` is a built-in model, ``toy``, a model directory or
    (with the hub on) a hub id. Cheap: reads no model file."""
    builtin = ", ".join(available())
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model.name must be a built-in model ({builtin}), a model directory or a hub id")
    if name in _BY_NAME or name == TOY:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.name = {name!r} is a directory without config.json; give a folder written by "
                "save_pretrained (the model's config.json, weights and tokenizer)"
            )
        return
    if path.exists():
        raise ConfigError(f"model.name = {name!r} is a file; give the model's directory (with config.json)")
    if _looks_like_path(name):
        raise ConfigError(f"model.name = {name!r}: no such directory (nor a built-in model: {builtin})")
    if not hub_enabled():
        raise ConfigError(
            f"model.name = {name!r} is not allowed; choose one of {builtin}, {TOY}, an existing model "
            f"directory, or a Hugging Face hub id after setting {OPT_OUT_VAR}=0"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def model_config_json(name: str) -> dict[str, Any]:
    """The ``config.json`` of a model directory or hub id, as a dict (downloads it for a hub id)."""
    check_name(name)
    if name in _BY_NAME or name == TOY:
        raise UsageError(f"{name!r} is a built-in name, not a model directory or hub id")
    folder = local_dir(name)
    if folder is not None:
        path = folder / "config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(name, "config.json"))
        except Exception as exc:  # any hub failure (network, missing repo, auth) is the user's to fix
            raise ConfigError(
                f"model.name = {name!r}: cannot read its config.json from the hub ({_one_line(exc)})"
            ) from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name = {name!r}: unreadable config.json ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model.name = {name!r}: config.json is not a JSON object")
    return data


def resolve_kind(name: str, kind: str = AUTO) -> str:
    """``causal-lm`` or ``encoder`` for model ``name`` with ``model.kind = kind``.

    Built-ins know theirs (an explicit ``kind`` must agree). For a directory or hub id, ``auto`` reads the
    ``architectures`` of its ``config.json``: one ending in ``ForCausalLM`` (or ``LMHeadModel``, GPT-2's
    name) makes a causal LM, anything else an encoder.
    """
    if kind != AUTO and kind not in KINDS:
        raise ConfigError(f"model.kind = {kind!r} is not allowed; choose one of {AUTO}, {', '.join(KINDS)}")
    entry = find(name)
    if entry is not None:
        if kind not in (AUTO, entry.kind):
            raise ConfigError(
                f"model.kind = {kind!r} but {name} is a built-in {entry.kind}; set model.kind = "
                f"'{AUTO}' or '{entry.kind}'"
            )
        return entry.kind
    if name == TOY:
        raise ConfigError("model.name = 'toy' is the in-code test workload; it has no model kind")
    if kind != AUTO:
        return kind
    architectures = model_config_json(name).get("architectures") or []
    causal = any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return "causal-lm" if causal else "encoder"


def model_type(name: str) -> str:
    """The transformers ``model_type`` of model ``name`` (``bert``, ``llama``, ...; ``""`` if unknown)."""
    entry = find(name)
    if entry is not None:
        return entry.model_type
    value = model_config_json(name).get("model_type", "")
    return value if isinstance(value, str) else ""


# -- the built-in models ------------------------------------------------------------------------------------
register(
    ModelEntry(
        "minilm",
        "encoder",
        ("query", "value"),
        "classifier",
        minilm_tokenizer,
        checkpoint=minilm_dir,
        model_type="bert",
        pooling="mean",  # a sentence-transformers model, trained on the mean-pooled embedding
        description="all-MiniLM-L6-v2 (sentence-transformers), 6 layers, 22.7M parameters",
    )
)
register(
    ModelEntry(
        "smollm2-135m",
        "causal-lm",
        ("q_proj", "v_proj"),
        "score",
        smollm2_tokenizer,
        checkpoint=smollm2_fp32_dir,
        model_type="llama",
        gguf=True,
        description="SmolLM2-135M-Instruct (from its Q4_1 GGUF, cached as fp32 safetensors), 30 layers",
    )
)
register(
    ModelEntry(
        "tiny-bert",
        "encoder",
        ("query", "value"),
        "classifier",
        minilm_tokenizer,
        tiny_config=tiny_bert_config,
        model_type="bert",
        description="randomly initialised 32-wide BERT with MiniLM's tokenizer (tests)",
    )
)
register(
    ModelEntry(
        "tiny-llama",
        "causal-lm",
        ("q_proj", "v_proj"),
        "score",
        smollm2_tokenizer,
        tiny_config=tiny_llama_config,
        model_type="llama",
        gguf=True,  # borrows SmolLM2's tokenizer, rebuilt from the GGUF
        description="randomly initialised 32-wide Llama with SmolLM2's tokenizer (tests)",
    )
)

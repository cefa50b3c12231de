"""Model and tokenizer loading for any ``model.name``: a built-in model (:mod:`.registry`), a local model
directory or a hub id.

Imports transformers lazily (the ``fedsqueeze[llm]`` extra; without it each loader raises a one-line
:class:`~fedsqueeze.errors.MissingExtraError`). The built-in models come from installed asset packages
(:mod:`.assets`) and never from a hub.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .assets import check_llm, minilm_dir, quiet_transformers, smollm2_cache_dir, smollm2_fp32_dir
from .registry import AUTO, DTYPES, TOY, available, check_name, find, local_dir, model_type, resolve_kind
from .registry import get as get_entry

__all__ = [
    "CAUSAL_MODELS",
    "ENCODER_MODELS",
    "check_dtype",
    "load_base_model",
    "load_tokenizer",
    "minilm_dir",
    "quiet_transformers",
    "require_llm",
    "smollm2_cache_dir",
    "smollm2_fp32_dir",
]

CAUSAL_MODELS = tuple(n for n in available() if get_entry(n).kind == "causal-lm")
ENCODER_MODELS = tuple(n for n in available() if get_entry(n).kind == "encoder")
# Files of which a saved tokenizer has at least one (save_pretrained writes the first two).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def require_llm(model_name: str | None = None) -> None:
    """Raise :class:`~fedsqueeze.errors.MissingExtraError` unless ``fedsqueeze[llm]`` is installed.

    Checks transformers and peft, and gguf too for the built-in models read from a GGUF file (SmolLM2, and
    the tiny-llama that borrows its tokenizer). Cheap: call it before anything slow.
    """
    what = f"the {model_name} model" if model_name else "Hugging Face models"
    entry = find(model_name) if model_name else None
    check_llm(what, gguf=entry is not None and entry.gguf)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _location(name: str) -> str:
    """The directory or hub id a non-built-in ``name`` loads from (checked as ``model.name`` is)."""
    check_name(name)
    if name == TOY:
        raise ConfigError("model.name = 'toy' is the in-code test workload; it has no tokenizer or weights")
    return name


def load_tokenizer(model_name: str) -> Any:
    """The tokenizer of ``model_name``: a built-in's (tiny-bert uses MiniLM's, tiny-llama SmolLM2's), or the
    one saved in the model's directory (or hub repository).

    A tokenizer without a padding token pads with its end-of-sequence token.
    """
    require_llm(model_name)
    entry = find(model_name)
    if entry is not None:
        return entry.tokenizer()
    location = _location(model_name)
    folder = local_dir(location)
    if folder is not None and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        # transformers would build an empty tokenizer from the config alone
        raise ConfigError(
            f"model.name = {model_name!r}: no tokenizer in that directory (no tokenizer.json nor "
            "tokenizer_config.json); save one beside the model with tokenizer.save_pretrained(DIR)"
        )
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"model.name = {model_name!r}: no tokenizer could be loaded from it ({_one_line(exc)}); save one "
            "beside the model with tokenizer.save_pretrained(DIR)"
        ) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"model.name = {model_name!r}: its tokenizer has no pad or eos token")
        tok.pad_token = tok.eos_token
    return tok


def _matmul_error(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why torch cannot multiply ``dtype`` matrices on ``device`` (``None``: it can)."""
    try:
        a = torch.ones(4, 4, dtype=dtype, device=device)
        (a @ a).sum().item()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        return _one_line(exc)
    return None


def check_dtype(dtype: str, device: torch.device | str = "cpu") -> None:
    """:class:`~fedsqueeze.ConfigError` unless ``model.dtype = dtype`` can run on ``device``.

    ``float32`` always can; ``bfloat16`` and ``float16`` need a matrix product of that type there (a probe).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype = {dtype!r} is not allowed; choose one of {', '.join(DTYPES)}")
    if dtype == "float32":
        return
    device = torch.device(device)
    why = _matmul_error(getattr(torch, dtype), device)
    if why is not None:
        raise ConfigError(
            f"model.dtype = {dtype!r}: torch cannot multiply {dtype} matrices on this {device.type} ({why}); "
            "use model.dtype = 'float32'"
        )


def _layers_kwargs(num_layers: int | None, available: int, name: str) -> dict[str, int]:
    if num_layers is None:
        return {}
    if num_layers > available:
        raise ConfigError(f"model.num_layers = {num_layers} but {name} has only {available} layers")
    return {"num_hidden_layers": num_layers}


def load_base_model(
    name: str,
    tokenizer: Any,
    *,
    num_labels: int | None,
    num_layers: int | None = None,
    pooling: str = "auto",
    kind: str = AUTO,
    dtype: str = "float32",
) -> torch.nn.Module:
    """The base (pre-LoRA) model on the CPU, in eval mode.

    Parameters
    ----------
    name
        A built-in model, a model directory or a hub id (see :mod:`.registry`).
    tokenizer
        Its tokenizer (:func:`load_tokenizer`); sets the vocabulary of the tiny models and the pad id.
    num_labels
        Set: a sequence classifier (``AutoModelForSequenceClassification``, new head); ``None``: a causal
        LM (the model must be one).
    num_layers
        Keep the first this many transformer layers; ``None``: all.
    pooling
        What a classification head reads (:mod:`fedsqueeze.models.pooling`); ``mean`` needs a BERT encoder.
    kind
        ``model.kind``: ``auto``, ``causal-lm`` or ``encoder``.
    dtype
        ``model.dtype`` of the weights: ``float32``, ``bfloat16`` or ``float16``.

    Randomly initialised parts (head, tiny models) draw from the global torch RNG, so seed it (the workload
    builder does, inside ``torch.random.fork_rng``).
    """
    require_llm(name)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from .pooling import MeanPoolBertForSequenceClassification, resolve_pooling

    entry = find(name)
    kind = resolve_kind(name, kind)
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype = {dtype!r} is not allowed; choose one of {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    if num_labels is None and kind != "causal-lm":
        raise ConfigError(
            f"{name} is an encoder: it cannot generate; use a causal LM (smollm2-135m, tiny-llama or a "
            "causal LM directory)"
        )
    pooling = resolve_pooling(name, pooling)
    if pooling == "mean" and (kind != "encoder" or num_labels is None or model_type(name) != "bert"):
        raise ConfigError(
            f"model.pooling = 'mean' needs a BERT encoder classifier (minilm, tiny-bert or a BERT "
            f"directory), not {name}"
        )
    classifier: Any = (
        MeanPoolBertForSequenceClassification if pooling == "mean" else AutoModelForSequenceClassification
    )

    if entry is not None and entry.tiny_config is not None:
        config = entry.tiny_config(tokenizer, num_layers or 2)
        if num_labels is not None:
            config.num_labels = num_labels
            model = classifier.from_config(config) if pooling == "cls" else classifier(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
        model = model.to(torch_dtype)  # the weights were drawn in float32 either way
    else:
        path = entry.checkpoint() if entry is not None and entry.checkpoint else _location(name)
        try:
            with quiet_transformers():
                total = AutoConfig.from_pretrained(path).num_hidden_layers
            kwargs: dict[str, Any] = _layers_kwargs(num_layers, total, name)
            with quiet_transformers():
                if num_labels is not None:
                    kwargs["num_labels"] = num_labels
                    model = classifier.from_pretrained(path, dtype=torch_dtype, **kwargs)
                else:
                    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
        except ConfigError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if entry is not None:
                raise
            what = "a causal LM" if num_labels is None else "a sequence classifier"
            raise ConfigError(
                f"model.name = {name!r}: transformers cannot load it as {what} ({_one_line(exc)})"
            ) from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval()

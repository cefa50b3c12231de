"""Trained autoencoders: save/load (``.safetensors`` + ``.json``) and a process-wide store by fingerprint.

The decoder of ``cg_fedllm`` / ``cg_fedllm_q`` finds the model named by the 8-byte fingerprint in the body
through the one seam of trained-model codecs, ``fedsqueeze.decode(blob, spec, models=...)``: ``models`` is a
mapping ``{fingerprint_hex: model_or_path}`` or any object with ``resolve(fingerprint_hex)`` (a
:class:`ModelStore`); without it the decoder looks in the process-wide store. A model enters that store
when it is saved, loaded (:func:`load`), registered (:func:`register`) or used by a codec, so in a
single-process simulation the server finds the clients' model with nothing passed; a separate server
process calls :func:`load` once with the same file, or passes its own store.
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

__all__ = ["ModelStore", "load", "lookup", "register", "resolve", "save", "sidecar_path"]

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


class ModelStore:
    """A set of models by fingerprint, for ``fedsqueeze.decode(..., models=store)``.

    For a server that keeps the models of several runs apart (the process-wide store, which
    :func:`register` and :func:`load` fill, is the default).
    """

    def __init__(self, models: Mapping[str, CGAutoEncoder | str | Path] | None = None) -> None:
        self._models: dict[str, CGAutoEncoder | str | Path] = dict(models or {})

    def add(self, model: CGAutoEncoder | str | Path) -> str:
        """Add a model (or the path of a saved one, loaded now) and return its fingerprint in hex."""
        if isinstance(model, str | Path):
            model = load(model)
        fp = model.fingerprint().hex()
        self._models[fp] = model
        return fp

    def resolve(self, fingerprint_hex: str) -> CGAutoEncoder | None:
        """The model with this fingerprint, or ``None``."""
        return _as_model(self._models.get(fingerprint_hex), fingerprint_hex)


def _as_model(given: Any, fingerprint_hex: str) -> CGAutoEncoder | None:
    if given is None:
        return None
    model = load(given) if isinstance(given, str | Path) else given
    if not isinstance(model, CGAutoEncoder):
        raise PayloadError(f"the model given for {fingerprint_hex} is not a CGAutoEncoder")
    if model.fingerprint().hex() != fingerprint_hex:
        raise PayloadError(f"the autoencoder given for {fingerprint_hex} has another fingerprint")
    return model


def resolve(fingerprint_hex: str, models: Any = None) -> CGAutoEncoder:
    """The decoder's model: from ``models`` (a mapping or a resolver) if given, else the process store.

    Raises
    ------
    PayloadError
        No model with this fingerprint is known, or the given one hashes differently.
    """
    if models is None:
        found = lookup(fingerprint_hex)
    elif hasattr(models, "resolve"):
        found = _as_model(models.resolve(fingerprint_hex), fingerprint_hex)
    elif isinstance(models, Mapping):
        found = _as_model(models.get(fingerprint_hex), fingerprint_hex)
    else:
        raise PayloadError(f"models= must be a mapping or have resolve(), got {type(models).__name__}")
    if found is None:
        raise PayloadError(
            f"payload needs autoencoder {fingerprint_hex}, which is unknown here: pass "
            f"models={{'{fingerprint_hex}': model_or_path}} to fedsqueeze.decode or call "
            "fedsqueeze.cg_fedllm.store.load(path) first"
        )
    return found

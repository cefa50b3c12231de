"""Pieces shared by the ``cg_fedllm`` and ``cg_fedllm_q`` codecs: model resolution and body bounds."""

from __future__ import annotations

import struct

import numpy as np

from ..errors import ConfigError, PayloadError
from ..spec import UpdateSpec
from .autoencoder import CGAutoEncoder
from .layout import FactorLayout
from .normalize import num_scales
from .store import load, lookup

__all__ = [
    "PREFIX",
    "check_trained_spec",
    "codec_model",
    "max_body",
    "read_floats",
    "read_prefix",
    "read_prefix_byte",
]

# version (B) + fingerprint (8s)
PREFIX = struct.Struct("<B8s")
MAX_MULTIPLE = 2**8  # depth <= 8


def codec_model(model_fingerprint: str | None, model_path: str | None, name: str) -> CGAutoEncoder:
    """The encoder's model: an in-memory one registered by ``from_model``, else loaded from ``model_path``."""
    if model_fingerprint is not None:
        model = lookup(model_fingerprint)
        if model is None:
            raise ConfigError(
                f"{name}: autoencoder {model_fingerprint} is not in this process's store; build the codec "
                "with from_model(model) or give model_path"
            )
        return model
    if model_path is None:
        raise ConfigError(
            f"{name} needs a trained autoencoder: set model_path (train one with `fedsqueeze tgap`) or use "
            f"{name}.from_model(model)"
        )
    return load(model_path)


def check_trained_spec(model: CGAutoEncoder, spec: UpdateSpec, name: str) -> None:
    """Refuse to encode ``spec``'s updates with an autoencoder trained on another spec.

    Names and shapes must agree (not their order: the factor layout sorts the names). A model whose training
    spec is unknown (``trained_spec is None``) passes.
    """
    trained = model.trained_spec
    if trained is None:
        return
    want, have = dict(trained.entries), dict(spec.entries)
    if want == have:
        return
    missing = sorted(set(have) - set(want))
    other = sorted(n for n in set(have) & set(want) if have[n] != want[n])
    if missing:
        first = f"it never saw tensor {missing[0]!r}" + (
            f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        )
    elif other:
        first = f"tensor {other[0]!r} is {list(have[other[0]])} here, {list(want[other[0]])} in training"
    else:
        first = f"it was trained on {len(want) - len(have)} more tensor(s)"
    raise ConfigError(
        f"{name}: autoencoder {model.fingerprint().hex()} was trained on updates of another spec "
        f"({len(want)} tensors, d={trained.numel}) than this update's ({len(have)} tensors, d={spec.numel}): "
        f"{first}; train one on this model's updates (`fedsqueeze run ... --capture-updates all`, then "
        "`fedsqueeze tgap`)"
    )


def max_body(spec: UpdateSpec, per_value_bytes: int, fixed: int) -> int:
    """Bound for any model: scales of every tensor plus one value per padded input element."""
    if spec.numel == 0:
        return fixed
    lay = FactorLayout.from_spec(spec, MAX_MULTIPLE)
    return fixed + 4 * len(spec.entries) + per_value_bytes * lay.image_numel


def read_prefix(body: bytes, version: int, name: str) -> str:
    if len(body) < PREFIX.size:
        raise PayloadError(f"{name} body of {len(body)} bytes is shorter than its {PREFIX.size}-byte prefix")
    ver, fp = PREFIX.unpack_from(body)
    if ver != version:
        raise PayloadError(f"{name} body version {ver} is unknown (this build reads {version})")
    return fp.hex()


def read_prefix_byte(body: bytes, version: int, name: str, what: str) -> tuple[str, int]:
    """:func:`read_prefix` and the one byte after it (``what`` names that byte in the error)."""
    fp = read_prefix(body, version, name)
    if len(body) < PREFIX.size + 1:
        raise PayloadError(f"{name} body truncated before {what}")
    return fp, body[PREFIX.size]


def read_floats(body: bytes, offset: int, count: int, dtype: str, name: str) -> np.ndarray:
    """``count`` little-endian floats of ``dtype`` at ``offset``, checked finite, as float32."""
    width = np.dtype(dtype).itemsize
    if offset + width * count > len(body):
        raise PayloadError(f"{name} body truncated: needs {offset + width * count} bytes, has {len(body)}")
    vals = np.frombuffer(body, dtype=f"<{dtype}", count=count, offset=offset).astype(np.float32)
    if not np.isfinite(vals).all():
        raise PayloadError(f"{name} body holds NaN or Inf values")
    return vals


def scales_count(spec: UpdateSpec, model: CGAutoEncoder) -> int:
    return num_scales(spec, model.config.normalize)

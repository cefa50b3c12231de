"""Helpers shared by the classical baseline codecs (topk, randk, qsgd, signsgd, powersgd, compeft).

Not a codec module (leading underscore): option checks, the rate search, TopK selection, the value coders and
the float32 clamp that keeps decoded values finite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, PayloadError
from ..wire.bitpack import BitReader
from ..wire.frame import HEADER_SIZE

__all__ = [
    "CODER_IDS",
    "CODER_NAMES",
    "FP32_MAX",
    "HEADER_BITS",
    "MAX_RATE",
    "check_density",
    "check_one_budget",
    "check_rate",
    "check_rate_fits",
    "density_k",
    "expect_body_bits",
    "frame_bits",
    "largest_fitting",
    "read_scale",
    "read_values",
    "to_f32",
    "topk_sorted",
    "value_code",
]

FP32_MAX = float(np.finfo(np.float32).max)
HEADER_BITS = 8 * HEADER_SIZE
# A dense fp32 frame is 32 bits/param plus the header; 64 leaves room for the header down to d = 8. A rate
# above it is refused when the codec is made, one above the dense frame of the actual d when it encodes.
MAX_RATE = 64.0
# Wire ids of the index coders of wire/index_coding.py.
CODER_IDS = {"fixed": 0, "elias_fano": 1}
CODER_NAMES = {v: k for k, v in CODER_IDS.items()}


# -- option checks ---------------------------------------------------------------------------------------
def check_density(name: str, density: float) -> None:
    if not (isinstance(density, int | float) and 0 < density <= 1):
        raise ConfigError(f"{name}: density must be in (0, 1], got {density!r}")


def check_rate(name: str, rate: float | None) -> None:
    """The ``rate`` option of every budget codec: ``None`` or a number in ``(0, MAX_RATE]`` bits/param."""
    if rate is None:
        return
    if not (
        isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0 and math.isfinite(rate)
    ):
        raise ConfigError(f"{name}: rate must be positive bits per parameter or None, got {rate!r}")
    if rate > MAX_RATE:
        raise ConfigError(
            f"{name}: rate {rate:g} bits/param is more than a dense fp32 update needs (32 bits/param plus "
            f"the {HEADER_BITS}-bit frame header); use at most {MAX_RATE:g}, or the identity codec to send "
            "it whole"
        )


def check_one_budget(codec: Any, field: str = "density") -> None:
    """Refuse ``field`` (e.g. ``density``) set to other than its default together with ``rate``, which
    would silently override it.

    ``codec`` is a budget codec instance with fields ``rate`` and ``field``. The default with a rate passes,
    so ``get(name, **codec.options())`` rebuilds any codec.
    """
    if codec.rate is None:
        return
    default = next(f.default for f in dataclasses.fields(codec) if f.name == field)
    value = getattr(codec, field)
    if value != default:
        raise ConfigError(
            f"{codec.name}: give {field} or rate, not both (rate {codec.rate:g} would override {field} "
            f"{value:g}); drop one of them"
        )


def check_rate_fits(name: str, rate: float | None, d: int) -> None:
    """Refuse a rate whose budget exceeds the dense fp32 frame of ``d`` parameters (32 d + header bits)."""
    if rate is None or d <= 0 or rate * d <= 32 * d + HEADER_BITS:
        return
    raise ConfigError(
        f"{name}: rate {rate:g} bits/param is more than the dense fp32 frame of d={d} takes "
        f"({32 + HEADER_BITS / d:.4g} bits/param); lower the rate, or use the identity codec to send it whole"
    )


def density_k(density: float, d: int) -> int:
    """``floor(density * d)`` kept entries, at least one when ``d > 0`` (so tiny specs still send)."""
    if d <= 0:
        return 0
    return min(d, max(1, math.floor(density * d)))


# -- sizes and the rate search -------------------------------------------------------------------------
def frame_bits(body_bits: int | np.ndarray) -> int | np.ndarray:
    """Bits of the whole frame for a body of ``body_bits`` bits (padded to a byte, header included)."""
    return HEADER_BITS + 8 * ((body_bits + 7) // 8)


def largest_fitting(name: str, body_bits: np.ndarray, rate: float, d: int) -> int:
    """Largest index ``i`` with ``frame_bits(body_bits[i]) <= floor(rate * d)``.

    ``body_bits[i]`` is the body size of candidate ``i`` (e.g. ``k = i`` kept entries); sizes need not be
    monotone. Raises :class:`ConfigError` when no candidate fits (the rate is too small for this spec) or
    the rate buys more than the dense frame (:func:`check_rate_fits`).
    """
    check_rate_fits(name, rate, d)
    budget = math.floor(rate * d)
    sizes = np.asarray(body_bits, dtype=np.int64)
    fits = np.flatnonzero(frame_bits(sizes) <= budget)
    if fits.size == 0:
        smallest = int(frame_bits(sizes.min())) if sizes.size else HEADER_BITS
        raise ConfigError(
            f"{name}: rate {rate} bits/param gives {budget} bits for d={d}, but the smallest frame is "
            f"{smallest} bits; raise the rate (at least {smallest / max(d, 1):.4g}) or drop the rate option"
        )
    return int(fits[-1])


def expect_body_bits(name: str, body: bytes, nbits: int) -> None:
    """Refuse a body whose length is not exactly ``nbits`` rounded up to bytes."""
    want = (nbits + 7) // 8
    if len(body) != want:
        raise PayloadError(f"{name}: body has {len(body)} bytes, its header implies {want}")


# -- TopK selection ----------------------------------------------------------------------------------------
def topk_sorted(flat: torch.Tensor, k: int) -> np.ndarray:
    """Sorted int64 indices of the ``k`` largest ``|flat|`` (vectorized ``torch.topk``)."""
    d = flat.numel()
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= d:
        return np.arange(d, dtype=np.int64)
    idx = torch.topk(flat.abs(), k, sorted=False).indices.numpy().astype(np.int64)
    idx.sort()
    return idx


# -- value coding ----------------------------------------------------------------------------------------
def value_code(
    vals: np.ndarray, bits: int, *, stochastic: bool = False, rng: np.random.Generator | None = None
) -> tuple[float, np.ndarray]:
    """Code float64 values in ``bits`` bits each; returns ``(scale, codes)``.

    * 32: IEEE float32 bit patterns (scale unused, 0).
    * 16: IEEE float16 of ``v / scale`` with the float32 ``scale = max|v|`` (no fp16 overflow or underflow
      of the range itself, whatever the magnitudes).
    * 2..15: sign bit plus a ``bits - 1``-bit magnitude level, uniform on ``[0, scale]``, rounded to nearest
      or stochastically (unbiased) with ``rng``.
    """
    if bits == 32:
        return 0.0, vals.astype(np.float32).view(np.uint32).astype(np.uint64)
    scale = float(np.float32(np.max(np.abs(vals)))) if vals.size else 0.0
    div = scale if scale > 0 else 1.0
    r = np.minimum(np.abs(vals) / div, 1.0)  # fp32 rounding of scale may leave r a hair above 1
    if bits == 16:
        h = np.copysign(r, vals).astype(np.float16)
        return scale, h.view(np.uint16).astype(np.uint64)
    levels = (1 << (bits - 1)) - 1
    x = r * levels
    if stochastic:
        assert rng is not None
        q = np.floor(x + rng.random(x.size))
    else:
        q = np.floor(x + 0.5)
    q = np.clip(q, 0, levels).astype(np.uint64)
    sign = (vals < 0).astype(np.uint64)
    return scale, (sign << np.uint64(bits - 1)) | q


def read_scale(r: BitReader, name: str) -> float:
    """Read one fp32 scale; refuse NaN, ±Inf and negative values (no encoder writes them)."""
    c = float(r.read_f32(1, "scale")[0])
    if not (np.isfinite(c) and c >= 0):
        raise PayloadError(f"{name}: invalid scale {c}")
    return c


def read_values(codes: np.ndarray, bits: int, scale: float) -> np.ndarray:
    """Inverse of :func:`value_code`; float64 values."""
    with np.errstate(invalid="ignore"):  # hostile signalling NaNs are rejected just below
        if bits in (32, 16):
            raw = (
                codes.astype(np.uint32).view(np.float32)
                if bits == 32
                else codes.astype(np.uint16).view(np.float16)
            )
            if not np.isfinite(raw).all():
                # An encoder never writes NaN/Inf; saturating them would hide a forged payload.
                raise PayloadError(f"non-finite fp{bits} value in the payload")
            return raw.astype(np.float64) * (1.0 if bits == 32 else scale)
    levels = (1 << (bits - 1)) - 1
    mag = (codes & np.uint64(levels)).astype(np.float64) * (scale / levels)
    neg = (codes >> np.uint64(bits - 1)).astype(bool)
    return np.where(neg, -mag, mag)


def to_f32(x: np.ndarray) -> torch.Tensor:
    """float64 values to a float32 tensor, saturating at the float32 range (NaN stays NaN for the caller)."""
    return torch.from_numpy(np.clip(x, -FP32_MAX, FP32_MAX).astype(np.float32))

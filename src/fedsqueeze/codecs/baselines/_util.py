"""Helpers shared by the classical baseline codecs (topk, randk, seedproj, qsgd, signsgd, powersgd,
compeft).

Not a codec module (leading underscore): the rate search, TopK selection, the value coders and the float32
clamp that keeps decoded values finite. The option checks every budget codec shares are in ``..budget``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import ConfigError, PayloadError
from ...wire.bitpack import BitReader, BitWriter
from ..base import FP32_MAX
from ..budget import HEADER_BITS, check_rate_fits

__all__ = [
    "CODER_IDS",
    "CODER_NAMES",
    "density_k",
    "expect_body_bits",
    "frame_bits",
    "kept_body_bits",
    "kept_count",
    "largest_fitting",
    "read_kept_values",
    "read_scale",
    "read_values",
    "to_f32",
    "topk_sorted",
    "value_code",
    "write_kept_values",
]

# Wire ids of the index coders of wire/index_coding.py.
CODER_IDS = {"fixed": 0, "elias_fano": 1}
CODER_NAMES = {v: k for k, v in CODER_IDS.items()}


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


# -- the "k values and a flag" body of randk and seedproj --------------------------------------------------
# k u32, value_bits u8, a 0/1 flag u8, an f32 scale unless value_bits == 32, then k value codes.
KEPT_HEAD_BITS = 32 + 8 + 8


def kept_body_bits(k: np.ndarray | int, value_bits: int) -> np.ndarray | int:
    """Bits of a kept-values body with ``k`` values of ``value_bits`` bits (before byte padding)."""
    return KEPT_HEAD_BITS + (0 if value_bits == 32 else 32) + k * value_bits


def kept_count(name: str, density: float, rate: float | None, value_bits: int, d: int, pool: int) -> int:
    """How many values a kept-values body holds: ``density`` of the ``pool`` candidates, or under ``rate``
    the largest count whose frame fits ``floor(rate * d)`` bits (:func:`largest_fitting`).

    ``pool`` is what the values are drawn from: ``d`` itself for randk, the padded transform length for
    seedproj; the budget is always counted on ``d``, the parameters the frame stands for.
    """
    if rate is None:
        return density_k(density, pool)
    kmax = min(pool, int(rate * d) // value_bits + 1)
    return largest_fitting(name, np.asarray(kept_body_bits(np.arange(kmax + 1), value_bits)), rate, d)


def write_kept_values(vals: np.ndarray, value_bits: int, flag: bool) -> bytes:
    """Code ``vals`` (float64) with :func:`value_code` into a kept-values body."""
    scale, codes = value_code(vals, value_bits)
    w = BitWriter()
    w.write_uint(vals.size, 32)
    w.write_uint(value_bits, 8)
    w.write_uint(int(flag), 8)
    if value_bits != 32:
        w.write_f32(scale)
    w.write_uints(codes, value_bits)
    return w.getvalue()


def read_kept_values(
    name: str, body: bytes, kmax: int, kmax_name: str, allowed_bits: tuple[int, ...], flag_name: str
) -> tuple[np.ndarray, bool]:
    """Inverse of :func:`write_kept_values`: ``(values, flag)``.

    Every header field is checked before anything of size ``k`` is read: ``k <= kmax``, a width in
    ``allowed_bits``, a 0/1 flag, the exact body length and a valid scale; a violation is a
    :class:`PayloadError` naming the codec.
    """
    r = BitReader(body)
    k = r.read_uint(32, "k")
    vb = r.read_uint(8, "value_bits")
    flag = r.read_uint(8, flag_name)
    if k > kmax:
        raise PayloadError(f"{name}: k={k} exceeds {kmax_name}={kmax}")
    if vb not in allowed_bits:
        raise PayloadError(f"{name}: invalid value_bits {vb}")
    if flag not in (0, 1):
        raise PayloadError(f"{name}: invalid {flag_name} flag {flag}")
    expect_body_bits(name, body, int(kept_body_bits(k, vb)))
    scale = read_scale(r, name) if vb != 32 else 0.0
    vals = read_values(r.read_uints(k, vb, "values"), vb, scale)
    r.expect_end()
    return vals, bool(flag)

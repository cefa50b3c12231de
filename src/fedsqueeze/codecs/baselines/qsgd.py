"""``qsgd``: bucketed QSGD (Alistarh et al., arXiv:1610.02132) with fixed-width or Elias-gamma coding.

Per bucket of ``bucket`` consecutive values a float32 norm ``n`` (``"max"``: max |v|, the default, or
``"l2"``: the paper's ‖v‖₂), then each value becomes ``n · sign · level / s`` with ``level ∈ {0..s}`` drawn by
seeded stochastic rounding of ``s · |v| / n`` (unbiased). Max-normalisation is the default because L2 over a
bucket drives most levels to 0 and inflates the variance (``tests/test_qsgd.py``: relative error 1.27 at
s = 8, B = 512).

Body layout (MSB-first bit fields, zero-padded to a byte)::

    bucket   u32    values per norm, 1..2**24
    levels   u16    s, 1..65535
    norm     u8     0 = max, 1 = l2 (informative; decoding is the same)
    coding   u8     0 = fixed, 1 = elias
    norms    f32 × ceil(d / bucket)
    fixed:   d codes of 1 + bitlen(s) bits: sign bit then level
    elias:   nnz u32, ulen u32, then the Elias-gamma codes of (gap to the next nonzero, level) for each
             nonzero, split into two streams of the same total length as interleaved gamma codes so decoding
             is vectorized: ``ulen`` unary-prefix bits (N zeros then a one per code), then the N low bits of
             every code, then one sign bit per nonzero.

With ``rate`` set, ``levels`` is ignored and s is the largest level count whose whole frame fits
``floor(rate * d)`` bits; a rate too small for s = 1 raises :class:`~fedsqueeze.ConfigError` at encode time
(fixed coding needs about ``2 + 32 / bucket`` bits per parameter).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError, PayloadError
from ...spec import UpdateSpec
from ...wire.bitpack import BitReader, BitWriter, pack_uints, unpack_uints
from ..base import FP32_MAX, Codec
from ..budget import check_one_budget, check_rate
from ..registry import register
from ._util import (
    expect_body_bits,
    frame_bits,
    largest_fitting,
    to_f32,
)

__all__ = ["QSGD"]

_HEAD_BITS = 32 + 16 + 8 + 8
MAX_LEVELS = 65535
MAX_BUCKET = 2**24
_NORMS = ("max", "l2")
_CODINGS = ("fixed", "elias")
_CHUNK = 1 << 16  # values per step of the quantizer and the fixed-coding decoder (cache-sized temporaries)


def _bitlen(x: np.ndarray) -> np.ndarray:
    """Bit length of positive integers below 2**53 (exact via frexp)."""
    return np.frexp(x.astype(np.float64))[1].astype(np.int64)


def _gamma_stream(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interleaved (gap, level) values >= 1 of the nonzeros, their N = bitlen - 1, and the nonzero indices."""
    nz = np.flatnonzero(levels)
    gaps = np.diff(nz, prepend=-1)
    vals = np.empty(2 * nz.size, dtype=np.int64)
    vals[0::2] = gaps
    vals[1::2] = levels[nz]
    return vals, _bitlen(vals) - 1, nz


def _elias_bits(levels: np.ndarray) -> int:
    _, n, nz = _gamma_stream(levels)
    return 64 + int((2 * n + 1).sum()) + nz.size


@register
@dataclasses.dataclass(frozen=True)
class QSGD(Codec):
    """Bucketed stochastic quantization with s levels (unbiased).

    Parameters
    ----------
    bucket
        Values per norm (the paper's bucket size).
    levels
        s, the number of nonzero magnitude levels. Replaced by ``rate`` when set (then leave it at 8).
    norm
        ``"max"`` (default, lower variance) or ``"l2"`` (the paper's).
    coding
        ``"fixed"``: ``1 + ceil(log2(s + 1))`` bits per entry; ``"elias"``: Elias-gamma codes of the gaps
        between nonzeros and of their levels, plus a sign bit each.
    rate
        Target bits per parameter of the whole frame; picks the largest ``s`` that fits.
    """

    name: ClassVar[str] = "qsgd"
    codec_id: ClassVar[int] = 12
    summary: ClassVar[str] = "QSGD: bucket norms, s stochastic levels + sign, fixed or Elias-gamma coded"
    rate_option: ClassVar[str | None] = "rate"

    bucket: int = 128
    levels: int = 8
    norm: str = "max"
    coding: str = "fixed"
    rate: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.bucket, int) and 1 <= self.bucket <= MAX_BUCKET):
            raise ConfigError(f"qsgd: bucket must be an int in 1..{MAX_BUCKET}, got {self.bucket!r}")
        if not (isinstance(self.levels, int) and 1 <= self.levels <= MAX_LEVELS):
            raise ConfigError(f"qsgd: levels must be an int in 1..{MAX_LEVELS}, got {self.levels!r}")
        if self.norm not in _NORMS:
            raise ConfigError(f"qsgd: norm must be one of {_NORMS}, got {self.norm!r}")
        if self.coding not in _CODINGS:
            raise ConfigError(f"qsgd: coding must be one of {_CODINGS}, got {self.coding!r}")
        check_rate(self.name, self.rate)
        check_one_budget(self, "levels")

    # -- quantization -------------------------------------------------------------------------------------
    def _norms(self, x: np.ndarray) -> np.ndarray:
        """Float32 bucket norms of the float32 values ``x``.

        Rows of buckets are reduced a chunk at a time in float64 (the max is exact in any precision; the L2
        sum is numpy's per-row float64 sum, the same whatever the chunk), never a d-sized float64 copy.
        """
        d, b = x.size, self.bucket
        nb = -(-d // b)
        n = np.empty(nb, dtype=np.float64)
        rows = max(1, _CHUNK // b)
        for r0 in range(0, nb, rows):
            r1 = min(nb, r0 + rows)
            part = np.abs(x[r0 * b : r1 * b].astype(np.float64))
            if part.size < (r1 - r0) * b:  # zero-pad the short last bucket
                part = np.concatenate([part, np.zeros((r1 - r0) * b - part.size)])
            part = part.reshape(r1 - r0, b)
            n[r0:r1] = part.max(axis=1) if self.norm == "max" else np.sqrt((part * part).sum(axis=1))
        return np.minimum(n, FP32_MAX).astype(np.float32)

    def _ratio(self, x: np.ndarray, norms: np.ndarray, a: int, e: int) -> np.ndarray:
        """``min(|x| / norm, 1)`` in float64 for the values ``[a, e)`` (``a`` on a bucket boundary)."""
        b = self.bucket
        ax = np.abs(x[a:e].astype(np.float64))
        per = np.repeat(norms[a // b : -(-e // b)].astype(np.float64), b)[: e - a]
        return np.minimum(np.divide(ax, per, out=np.zeros(e - a), where=per > 0), 1.0)

    def _fixed_levels(self, x: np.ndarray, norms: np.ndarray, s: int, seed: int) -> np.ndarray:
        """Fixed-coding words ``sign << width | level`` (uint8, ``1 + bitlen(s) <= 8``), a chunk at a time.

        The uniform draws are taken in order, chunk after chunk, so they are those of one ``random(d)``.
        """
        d, width = x.size, int(s).bit_length()
        rng = np.random.default_rng(seed)
        words = np.empty(d, dtype=np.uint8)
        step = max(1, _CHUNK // self.bucket) * self.bucket
        for a in range(0, d, step):
            e = min(d, a + step)
            lev = np.clip(np.floor(s * self._ratio(x, norms, a, e) + rng.random(e - a)), 0, s)
            words[a:e] = ((x[a:e] < 0) << width) | lev.astype(np.uint8)
        return words

    def _choose_levels(self, ratio: np.ndarray, u: np.ndarray, fixed_bits: int, d: int) -> int:
        assert self.rate is not None
        if self.coding == "fixed":
            widths = np.arange(1, 17)
            w = 1 + largest_fitting(self.name, fixed_bits + d * (1 + widths), self.rate, d)
            return min((1 << w) - 1, MAX_LEVELS)

        def size(s: int) -> int:
            return fixed_bits + _elias_bits(np.floor(s * ratio + u).astype(np.int64))

        largest_fitting(self.name, np.array([size(1)]), self.rate, d)  # raises when even s = 1 is too big
        budget = int(self.rate * d)
        lo, hi = 1, MAX_LEVELS  # sizes grow with s (levels are monotone in s for fixed dither u)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if frame_bits(size(mid)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        d = spec.numel
        xf = flat.numpy()
        norms = self._norms(xf)
        fixed_bits = _HEAD_BITS + 32 * norms.size
        if self.coding == "fixed":
            s = (
                self.levels
                if self.rate is None
                else self._choose_levels(np.zeros(0), np.zeros(0), fixed_bits, d)
            )
            width = int(s).bit_length()
            if 1 + width <= 8:  # byte-friendly words: packed 8 at a time (same bytes as the bit writer)
                head = np.array([self.bucket], ">u4").tobytes() + np.array([s], ">u2").tobytes()
                head += bytes([_NORMS.index(self.norm), _CODINGS.index(self.coding)])
                words = self._fixed_levels(xf, norms, s, seed)
                return head + norms.astype(">f4").tobytes() + pack_uints(words, 1 + width)
        x = xf.astype(np.float64)
        ax = np.abs(x)
        per = np.repeat(norms.astype(np.float64), self.bucket)[:d]
        ratio = np.minimum(np.divide(ax, per, out=np.zeros(d), where=per > 0), 1.0)
        u = np.random.default_rng(seed).random(d)
        s = self.levels if self.rate is None else self._choose_levels(ratio, u, fixed_bits, d)
        lev = np.clip(np.floor(s * ratio + u), 0, s).astype(np.int64)
        w = BitWriter()
        w.write_uint(self.bucket, 32)
        w.write_uint(s, 16)
        w.write_uint(_NORMS.index(self.norm), 8)
        w.write_uint(_CODINGS.index(self.coding), 8)
        w.write_f32(norms)
        sign = (x < 0).astype(np.uint64)
        if self.coding == "fixed":
            width = int(s).bit_length()
            w.write_uints((sign << np.uint64(width)) | lev.astype(np.uint64), 1 + width)
            return w.getvalue()
        vals, n, nz = _gamma_stream(lev)
        ones = np.cumsum(n + 1) - 1
        unary = np.zeros(int(ones[-1]) + 1 if ones.size else 0, dtype=np.uint8)
        unary[ones] = 1
        w.write_uint(nz.size, 32)
        w.write_uint(unary.size, 32)
        w.write_bits(unary)
        w.write_uints((vals - (np.int64(1) << n)).astype(np.uint64), n)
        w.write_bits(sign[nz].astype(np.uint8))
        return w.getvalue()

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        d = spec.numel
        r = BitReader(body)
        bucket = r.read_uint(32, "bucket")
        s = r.read_uint(16, "levels")
        norm_id = r.read_uint(8, "norm")
        coding_id = r.read_uint(8, "coding")
        if not 1 <= bucket <= MAX_BUCKET or not 1 <= s <= MAX_LEVELS:
            raise PayloadError(f"qsgd: invalid bucket {bucket} or levels {s}")
        if norm_id >= len(_NORMS) or coding_id >= len(_CODINGS):
            raise PayloadError(f"qsgd: invalid norm id {norm_id} or coding id {coding_id}")
        nb = -(-d // bucket)
        fixed_bits = _HEAD_BITS + 32 * nb
        width = s.bit_length()
        if coding_id == 0:
            expect_body_bits(cls.name, body, fixed_bits + d * (1 + width))
        with np.errstate(invalid="ignore"):  # signalling NaNs are rejected just below
            norms = r.read_f32(nb, "norms").astype(np.float64)
        if not (np.all(np.isfinite(norms)) and np.all(norms >= 0)):
            raise PayloadError("qsgd: bucket norms must be finite and non-negative")
        if coding_id == 0 and 1 + width <= 8:
            return cls._decode_fixed_narrow(body, norms, d, bucket, s, fixed_bits)
        if coding_id == 0:
            codes = r.read_uints(d, 1 + width, "entries")
            lev = (codes & np.uint64((1 << width) - 1)).astype(np.int64)
            neg = (codes >> np.uint64(width)).astype(bool)
            idx = np.arange(d)
        else:
            idx, lev, neg = cls._read_elias(r, body, d, s, fixed_bits)
        r.expect_end()
        if lev.size and lev.max() > s:
            raise PayloadError(f"qsgd: level above s={s}")
        mag = norms[idx // bucket] * (lev / s)
        out = np.zeros(d, dtype=np.float64)
        out[idx] = np.where(neg, -mag, mag)
        return to_f32(out)

    @classmethod
    def _decode_fixed_narrow(
        cls, body: bytes, norms: np.ndarray, d: int, bucket: int, s: int, fixed_bits: int
    ) -> torch.Tensor:
        """Fixed coding with ``1 + bitlen(s) <= 8``-bit words (the body length is already checked).

        Same values as the generic path (``norm * (level / s)`` in float64, clipped, then float32), computed
        a chunk at a time from a table of ``level / s`` into a float32 output.
        """
        width = s.bit_length()
        w = 1 + width
        start = fixed_bits // 8  # header and norms are whole bytes
        words = unpack_uints(body[start:], d, w) if d else np.zeros(0, dtype=np.uint64)
        tail_bits = (-(d * w)) % 8
        if tail_bits and body[-1] & ((1 << tail_bits) - 1):
            raise PayloadError("non-zero padding bits at the end of the payload")
        words = words.astype(np.uint8)
        lev = words & np.uint8((1 << width) - 1)
        if lev.size and int(lev.max()) > s:
            raise PayloadError(f"qsgd: level above s={s}")
        table = np.arange(s + 1) / s  # == level / s elementwise
        out = np.empty(d, dtype=np.float32)
        step = max(1, _CHUNK // bucket) * bucket
        for a in range(0, d, step):
            e = min(d, a + step)
            per = np.repeat(norms[a // bucket : -(-e // bucket)], bucket)[: e - a]
            mag = per * table[lev[a:e]]
            val = np.where(words[a:e] >> np.uint8(width) != 0, -mag, mag)
            out[a:e] = np.clip(val, -FP32_MAX, FP32_MAX)
        return torch.from_numpy(out)

    @classmethod
    def _read_elias(
        cls, r: BitReader, body: bytes, d: int, s: int, fixed_bits: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nnz = r.read_uint(32, "nonzero count")
        ulen = r.read_uint(32, "unary length")
        if nnz > d or ulen < 2 * nnz or (nnz == 0) != (ulen == 0):
            raise PayloadError(f"qsgd: invalid nonzero count {nnz} or unary length {ulen} for d={d}")
        unary = r.read_bits(ulen, "unary prefixes")
        ones = np.flatnonzero(unary)
        if ones.size != 2 * nnz or (ulen and ones[-1] != ulen - 1):
            raise PayloadError("qsgd: malformed Elias-gamma prefixes")
        n = np.diff(ones, prepend=-1) - 1
        if n.size and n.max() > 40:
            raise PayloadError("qsgd: Elias-gamma code too long")
        expect_body_bits(cls.name, body, fixed_bits + 64 + ulen + int(n.sum()) + nnz)
        vals = (np.int64(1) << n) | r.read_uints(2 * nnz, n, "gamma bits").astype(np.int64)
        gaps, lev = vals[0::2], vals[1::2]
        if gaps.size and gaps.max() > d:
            raise PayloadError("qsgd: gap beyond the vector")
        idx = np.cumsum(gaps) - 1
        if idx.size and idx[-1] >= d:
            raise PayloadError("qsgd: nonzero index beyond the vector")
        neg = r.read_bits(nnz, "signs").astype(bool)
        return idx, lev, neg

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        d = spec.numel
        # Worst case over options: bucket 1 (a norm per value); elias at s = 65535 with every value nonzero
        # (gap codes 1 bit, level codes <= 33 bits, sign 1) is larger than fixed (17 bits per value).
        return (_HEAD_BITS + 64 + d * (32 + 1 + 33 + 1) + 7) // 8

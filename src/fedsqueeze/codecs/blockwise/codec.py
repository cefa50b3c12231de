"""``blockwise8``, ``nf4`` and ``fp4``: blockwise absmax quantization as bitsandbytes ships it (pure numpy).

Each tensor of the spec is cut into blocks of ``block`` consecutive values in flat order (the last block of a
tensor may be shorter; blocks never straddle two tensors, so LoRA's A and B keep their own scales). A block's
scale is its float32 ``absmax = max |v|``; each value is sent as a code of ``r = v / absmax`` (0 when the
block is all zeros), so ``|r| <= 1`` and the block's largest value is a level exactly.

* ``blockwise8``: 8-bit codes on the symmetric *linear* grid ``q = sign(r) · ⌊|r| · 127 + ½⌋`` in
  ``-127..127`` (two's complement byte; -128 is never written), decoded as ``q · absmax / 127``. This is not
  bitsandbytes' default dynamic (non-linear) 8-bit map; the error is at most half a step, ``absmax / 254``.
* ``nf4``: the nearest of the 16 QLoRA NormalFloat levels (``_levels.NF4_CODES``, code = index).
* ``fp4``: the nearest of bitsandbytes' 15 FP4 (e2m1) levels (``_levels.FP4_CODES``, bitsandbytes' codes).

Both 4-bit codecs decode a code ``c`` as ``level[c] · absmax``; ties between two levels go to the lower one.
Fixed rate: ``bits · d + 32 · Σ_t ⌈n_t / block⌉ + 32`` body bits plus the frame header (no ``rate`` option).

Body layout (MSB-first bit fields, zero-padded to a byte)::

    block    u32           values per scale, 1..2**24
    scales   f32 × nb      absmax of each block, tensor by tensor in spec order, nb = Σ_t ⌈n_t / block⌉
    codes    bits × d      8-bit (blockwise8) or 4-bit (nf4, fp4) codes in flat order

Every field is byte-aligned, so the body is written and read as numpy arrays (big-endian ``>u4``/``>f4``,
bytes, nibbles), in pieces of at most ``_levels.CHUNK`` values whose scratch stays in cache. The float32
fast path and its exact float64 fix-ups are described in ``_levels``; the bytes are those of the definitions
above (``tests/test_blockwise.py`` compares them with the first, float64 implementation in
``tests/support/blockwise_reference.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from abc import abstractmethod
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError, PayloadError
from ...spec import UpdateSpec
from ..base import Codec
from ..registry import register
from ._levels import (
    BIN_OFFSET,
    CHUNK,
    FP4_CODES,
    MAX_BLOCK,
    NF4_CODES,
    TINY_SCALE,
    Layout,
    LevelTable,
    bin_table,
    layout,
    num_blocks,
)

__all__ = ["FP4", "NF4", "Blockwise8"]

_HEAD_BITS = 32
# Below this many values per piece on average, the pieces' Python overhead dominates: vectorize over the
# whole vector instead (many tensors shorter than a block, say).
_MIN_MEAN_PIECE = 256


def _by_pieces(lay: Layout, d: int) -> bool:
    """True when the chunked loop is worth its per-piece overhead for this layout."""
    return len(lay.pieces) <= 16 or len(lay.pieces) * _MIN_MEAN_PIECE <= d


@dataclasses.dataclass(frozen=True)
class _Blockwise(Codec):
    """Per-block absmax scales, then one fixed-width code per value (the subclasses' quantizer)."""

    bits: ClassVar[int]
    # ``K`` of the bin index ``t = K · v / absmax + BIN_OFFSET``, and the table's "not one code" marker.
    bin_scale: ClassVar[float]
    mark: ClassVar[int]

    block: int = 64

    def __post_init__(self) -> None:
        if not (
            isinstance(self.block, int) and not isinstance(self.block, bool) and 1 <= self.block <= MAX_BLOCK
        ):
            raise ConfigError(f"{self.name}: block must be an int in 1..{MAX_BLOCK}, got {self.block!r}")

    # -- the quantizer of a subclass ----------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def _exact(cls, r: np.ndarray) -> np.ndarray:
        """Codes (uint8, below ``2**bits``) of float64 values ``r`` in ``[-1, 1]``: the definition.

        numpy, not torch: on a loaded 2-core machine a small multi-threaded torch op can wait tens of ms
        for its second thread.
        """

    @classmethod
    @abstractmethod
    def _check_codes(cls, codes: np.ndarray, d: int) -> None:
        """Raise PayloadError on a code the encoder never writes or on non-zero padding bits."""

    @classmethod
    @abstractmethod
    def _dequantize(
        cls, codes: np.ndarray, scales: np.ndarray, lay: Layout, d: int, pieces: bool
    ) -> np.ndarray:
        """float32 values of checked code bytes at their blocks' float32 scales."""

    # -- sizes --------------------------------------------------------------------------------------------
    @classmethod
    def _body_bits(cls, spec: UpdateSpec, block: int) -> int:
        return _HEAD_BITS + 32 * num_blocks(spec, block) + cls.bits * spec.numel

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        # block 1 (a scale per value) is the largest valid body
        return (cls._body_bits(spec, 1) + 7) // 8

    # -- encoding -----------------------------------------------------------------------------------------
    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        x = flat.detach().to("cpu", torch.float32).contiguous().numpy()  # no copy on the engine's path
        d, block = spec.numel, self.block
        nb = num_blocks(spec, block)
        lay = layout(spec.sizes, block)
        body = bytearray((self._body_bits(spec, block) + 7) // 8)
        raw = np.frombuffer(body, dtype=np.uint8)
        raw[:4].view(">u4")[0] = block
        absmax = np.zeros(nb, dtype=np.float32)
        codes = raw[4 + 4 * nb :] if self.bits == 8 else np.empty(d, dtype=np.uint8)
        if _by_pieces(lay, d):
            self._quantize_pieces(x, lay, absmax, codes)
        else:
            self._quantize_whole(x, lay, absmax, codes)
        # values in bins that are not one code (and tiny blocks): the exact float64 definition
        again = np.flatnonzero(codes == self.mark)
        if again.size:
            a = np.maximum(absmax[lay.block_of(again)].astype(np.float64), 1e-300)
            codes[again] = self._exact(x[again].astype(np.float64) / a)
        raw[4 : 4 + 4 * nb].view(">f4")[:] = absmax
        if self.bits == 4:
            _pack_nibbles(codes, raw[4 + 4 * nb :])
        return bytes(body)

    @classmethod
    def _factors(cls, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``s = K / absmax`` (0 for an all-zero block) and the mask of tiny blocks (exact path)."""
        a64 = a.astype(np.float64)
        big = a64 >= TINY_SCALE
        s = np.where(big, cls.bin_scale / np.where(big, a64, 1.0), 0.0).astype(np.float32)
        return s, (a64 > 0) & ~big

    def _quantize_pieces(self, x: np.ndarray, lay: Layout, absmax: np.ndarray, codes: np.ndarray) -> None:
        """Absmax and table codes piece by piece (the scratch of a piece stays in cache)."""
        bins = _bins(type(self))
        off = np.float32(BIN_OFFSET)
        ft = np.empty(CHUNK, dtype=np.float32)
        it = np.empty(CHUNK, dtype=np.int32)
        for v0, _, length, b0, whole in lay.pieces:  # a block longer than CHUNK: its absmax first
            if not whole:
                absmax[b0] = max(absmax[b0], np.abs(x[v0 : v0 + length]).max())
        for v0, rows, length, b0, whole in lay.pieces:
            n = rows * length
            xc = x[v0 : v0 + n].reshape(rows, length)
            t = ft[:n].reshape(rows, length)
            if whole:
                np.abs(xc, out=t)
                t.max(axis=1, out=absmax[b0 : b0 + rows])
            s, tiny = self._factors(absmax[b0 : b0 + rows])
            np.multiply(xc, s[:, None], out=t)
            t += off
            i = it[:n].reshape(rows, length)
            np.copyto(i, t, casting="unsafe")  # t > 0: truncation is the floor
            out = codes[v0 : v0 + n].reshape(rows, length)
            np.take(bins, i, out=out, mode="clip")
            if tiny.any():
                out[tiny] = self.mark

    def _quantize_whole(self, x: np.ndarray, lay: Layout, absmax: np.ndarray, codes: np.ndarray) -> None:
        """The same codes vectorized over the whole vector (per-value factors: for many short pieces)."""
        if x.size == 0:
            return
        lengths = lay.block_lengths()
        absmax[:] = np.maximum.reduceat(np.abs(x), np.cumsum(lengths) - lengths)
        s, tiny = self._factors(absmax)
        t = x * np.repeat(s, lengths)
        t += np.float32(BIN_OFFSET)
        np.take(_bins(type(self)), t.astype(np.int32), out=codes, mode="clip")
        if tiny.any():
            codes[np.repeat(tiny, lengths)] = self.mark

    # -- decoding -----------------------------------------------------------------------------------------
    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        if len(body) < 4:
            raise PayloadError(f"truncated payload: block needs 32 bits, {8 * len(body)} left")
        raw = np.frombuffer(body, dtype=np.uint8)
        block = int(raw[:4].view(">u4")[0])
        if not 1 <= block <= MAX_BLOCK:
            raise PayloadError(f"{cls.name}: block {block} is outside 1..{MAX_BLOCK}")
        want = (cls._body_bits(spec, block) + 7) // 8
        if len(body) != want:
            raise PayloadError(f"{cls.name}: body has {len(body)} bytes, block {block} implies {want}")
        nb = num_blocks(spec, block)
        with np.errstate(invalid="ignore"):  # signalling NaNs are rejected just below
            scales = raw[4 : 4 + 4 * nb].view(">f4").astype(np.float32)
        if not (np.all(np.isfinite(scales)) and np.all(scales >= 0)):
            raise PayloadError(f"{cls.name}: block scales must be finite and non-negative")
        codes = raw[4 + 4 * nb :]
        cls._check_codes(codes, spec.numel)
        lay = layout(spec.sizes, block)
        # |level| <= 1, so every value is within its finite float32 scale: no overflow, no NaN
        out = cls._dequantize(codes, scales, lay, spec.numel, _by_pieces(lay, spec.numel))
        return torch.from_numpy(out)


@functools.cache
def _bins(cls: type[_Blockwise]) -> np.ndarray:
    """The bin table of a codec class (built on first use, about 10 ms)."""
    return bin_table(cls._exact, cls.bin_scale, cls.mark)


def _pack_nibbles(codes: np.ndarray, out: np.ndarray) -> None:
    """Two 4-bit codes per byte, the first in the high nibble; an odd last code gets a zero low nibble."""
    half = codes.size // 2
    pairs = codes[: 2 * half].reshape(half, 2)
    np.left_shift(pairs[:, 0], 4, out=out[:half])
    np.bitwise_or(out[:half], pairs[:, 1], out=out[:half])
    if codes.size % 2:
        out[half] = codes[-1] << 4


@register
@dataclasses.dataclass(frozen=True)
class Blockwise8(_Blockwise):
    """Blockwise int8: a float32 absmax per block, values on 255 symmetric linear levels (-127..127).

    Parameters
    ----------
    block
        Values per scale (bitsandbytes' blocksize); blocks restart at every tensor, so a tensor's last block
        may be shorter. Each block costs 32 bits of scale on top of 8 bits per value.
    """

    name: ClassVar[str] = "blockwise8"
    codec_id: ClassVar[int] = 50
    summary: ClassVar[str] = "blockwise int8 (linear -127..127), f32 absmax per block: 8 bits/param + scales"
    bits: ClassVar[int] = 8
    bin_scale: ClassVar[float] = 127.0 * 256  # 256 bins per level step: a level boundary mid-bin
    mark: ClassVar[int] = 0x80  # -128, never written

    @classmethod
    def _exact(cls, r: np.ndarray) -> np.ndarray:
        q = np.sign(r) * np.floor(np.abs(r) * 127 + 0.5)
        return q.astype(np.int8).view(np.uint8)

    @classmethod
    def _check_codes(cls, codes: np.ndarray, d: int) -> None:
        if bool((codes == 0x80).any()):
            raise PayloadError(f"{cls.name}: code -128 is outside the levels -127..127")

    @classmethod
    def _dequantize(
        cls, codes: np.ndarray, scales: np.ndarray, lay: Layout, d: int, pieces: bool
    ) -> np.ndarray:
        # q · absmax is exact in float64, then one division and one rounding to float32
        q, a = codes.view(np.int8), scales.astype(np.float64)
        out = np.empty(d, dtype=np.float32)
        if not pieces:
            np.divide(q * np.repeat(a, lay.block_lengths()), 127.0, out=out, casting="same_kind")
            return out
        f64 = np.empty(CHUNK, dtype=np.float64)
        for v0, rows, length, b0, _ in lay.pieces:
            n = rows * length
            tmp = f64[:n].reshape(rows, length)
            np.multiply(q[v0 : v0 + n].reshape(rows, length), a[b0 : b0 + rows, None], out=tmp)
            np.divide(tmp, 127.0, out=out[v0 : v0 + n].reshape(rows, length), casting="same_kind")
        return out


@dataclasses.dataclass(frozen=True)
class _Table4(_Blockwise):
    """4-bit codes into a 16-entry level table, two codes per byte (the first one in the high nibble)."""

    bits: ClassVar[int] = 4
    bin_scale: ClassVar[float] = 32768.0
    mark: ClassVar[int] = 0xFF  # not a 4-bit code
    table: ClassVar[LevelTable]

    @classmethod
    def _exact(cls, r: np.ndarray) -> np.ndarray:
        return cls.table.encode(r)

    @classmethod
    def _check_codes(cls, codes: np.ndarray, d: int) -> None:
        if d % 2 and codes[-1] & 0x0F:
            raise PayloadError("non-zero padding bits at the end of the payload")
        for c in cls.table.invalid:  # the padding nibble is 0 now, a code the encoder writes
            if bool(((codes >> 4) == c).any()) or bool(((codes & 0x0F) == c).any()):
                raise PayloadError(f"{cls.name}: a code the encoder never writes")

    @classmethod
    def _dequantize(
        cls, codes: np.ndarray, scales: np.ndarray, lay: Layout, d: int, pieces: bool
    ) -> np.ndarray:
        # level × absmax in float32 is one correctly rounded product: the float64 product rounded once
        out = np.empty(d, dtype=np.float32)
        if not pieces:
            levels = np.take(cls.table.pairs, codes, axis=0).reshape(-1)[:d]
            np.multiply(levels, np.repeat(scales, lay.block_lengths()), out=out)
            return out
        pb = np.empty((CHUNK // 2 + 1, 2), dtype=np.float32)
        for v0, rows, length, b0, _ in lay.pieces:
            n = rows * length
            lo, hi = v0 // 2, (v0 + n + 1) // 2
            np.take(cls.table.pairs, codes[lo:hi], axis=0, out=pb[: hi - lo], mode="clip")
            levels = pb.reshape(-1)[v0 - 2 * lo : v0 - 2 * lo + n].reshape(rows, length)
            np.multiply(levels, scales[b0 : b0 + rows, None], out=out[v0 : v0 + n].reshape(rows, length))
        return out


@register
@dataclasses.dataclass(frozen=True)
class NF4(_Table4):
    """4-bit NormalFloat (QLoRA): a float32 absmax per block, each value the nearest of 16 NF4 levels.

    Parameters
    ----------
    block
        Values per scale (bitsandbytes' blocksize); blocks restart at every tensor, so a tensor's last block
        may be shorter. Each block costs 32 bits of scale on top of 4 bits per value.
    """

    name: ClassVar[str] = "nf4"
    codec_id: ClassVar[int] = 51
    summary: ClassVar[str] = "QLoRA NF4: 16 NormalFloat levels, f32 absmax per block: 4 bits/param + scales"
    table: ClassVar[LevelTable] = LevelTable(NF4_CODES)


@register
@dataclasses.dataclass(frozen=True)
class FP4(_Table4):
    """bitsandbytes FP4 (e2m1): a float32 absmax per block, each value the nearest of 15 FP4 levels.

    Parameters
    ----------
    block
        Values per scale (bitsandbytes' blocksize); blocks restart at every tensor, so a tensor's last block
        may be shorter. Each block costs 32 bits of scale on top of 4 bits per value.
    """

    name: ClassVar[str] = "fp4"
    codec_id: ClassVar[int] = 52
    summary: ClassVar[str] = "bitsandbytes FP4 (e2m1), f32 absmax per block: 4 bits/param + scales"
    table: ClassVar[LevelTable] = LevelTable(FP4_CODES)

"""``blockwise8``, ``nf4`` and ``fp4``: blockwise absmax quantization as bitsandbytes ships it (pure torch).

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
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError, PayloadError
from ...spec import UpdateSpec
from ...wire.bitpack import BitReader, BitWriter
from ..base import Codec
from ..registry import register
from ._levels import FP4_CODES, MAX_BLOCK, NF4_CODES, LevelTable, block_lengths, num_blocks

__all__ = ["FP4", "NF4", "Blockwise8"]

_HEAD_BITS = 32


@dataclasses.dataclass(frozen=True)
class _Blockwise(Codec):
    """Per-block absmax scales, then one fixed-width code per value (the subclasses' quantizer)."""

    bits: ClassVar[int]

    block: int = 64

    def __post_init__(self) -> None:
        if not (
            isinstance(self.block, int) and not isinstance(self.block, bool) and 1 <= self.block <= MAX_BLOCK
        ):
            raise ConfigError(f"{self.name}: block must be an int in 1..{MAX_BLOCK}, got {self.block!r}")

    # -- the quantizer of a subclass ----------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def _codes(cls, r: torch.Tensor) -> torch.Tensor:
        """Codes (uint8, below ``2**bits``) of float64 values ``r`` in ``[-1, 1]``."""

    @classmethod
    @abstractmethod
    def _values(cls, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """float64 values of int64 ``codes`` at their blocks' float64 scales; PayloadError on a bad code."""

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
        lengths = block_lengths(spec, self.block)
        owner = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        absmax = torch.zeros(lengths.numel(), dtype=torch.float32)
        absmax.scatter_reduce_(0, owner, flat.abs(), reduce="amax")
        # an all-zero block has absmax 0 and all its values are 0: any positive divisor gives r = 0
        r = flat.double() / absmax.double().clamp_min(1e-300)[owner]
        w = BitWriter()
        w.write_uint(self.block, 32)
        w.write_f32(absmax.numpy())
        w.write_uints(self._codes(r).numpy(), self.bits)
        return w.getvalue()

    # -- decoding -----------------------------------------------------------------------------------------
    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        r = BitReader(body)
        block = r.read_uint(32, "block")
        if not 1 <= block <= MAX_BLOCK:
            raise PayloadError(f"{cls.name}: block {block} is outside 1..{MAX_BLOCK}")
        want = (cls._body_bits(spec, block) + 7) // 8
        if len(body) != want:
            raise PayloadError(f"{cls.name}: body has {len(body)} bytes, block {block} implies {want}")
        with np.errstate(invalid="ignore"):  # signalling NaNs are rejected just below
            scales = r.read_f32(num_blocks(spec, block), "scales").astype(np.float64)
        if not (np.all(np.isfinite(scales)) and np.all(scales >= 0)):
            raise PayloadError(f"{cls.name}: block scales must be finite and non-negative")
        codes = torch.from_numpy(r.read_uints(spec.numel, cls.bits, "codes").astype(np.int64))
        r.expect_end()
        scale = torch.repeat_interleave(torch.from_numpy(scales), block_lengths(spec, block))
        # |level| <= 1, so every value is within its finite float32 scale: no overflow, no NaN
        return cls._values(codes, scale).to(torch.float32)


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

    @classmethod
    def _codes(cls, r: torch.Tensor) -> torch.Tensor:
        q = torch.sign(r) * torch.floor(r.abs() * 127 + 0.5)
        return q.to(torch.int8).view(torch.uint8)

    @classmethod
    def _values(cls, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        q = torch.where(codes >= 128, codes - 256, codes)
        if bool((q == -128).any()):
            raise PayloadError(f"{cls.name}: code -128 is outside the levels -127..127")
        return q.double() * scale / 127  # the product is exact in float64, then one division


@dataclasses.dataclass(frozen=True)
class _Table4(_Blockwise):
    """4-bit codes into a 16-entry level table, two codes per byte (the first one in the high nibble)."""

    bits: ClassVar[int] = 4
    table: ClassVar[LevelTable]

    @classmethod
    def _codes(cls, r: torch.Tensor) -> torch.Tensor:
        return cls.table.encode(r)

    @classmethod
    def _values(cls, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if not cls.table.valid(codes):
            raise PayloadError(f"{cls.name}: a code the encoder never writes")
        return cls.table.decode(codes) * scale  # float32 × float32: exact in float64


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

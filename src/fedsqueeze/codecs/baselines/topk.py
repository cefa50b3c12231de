"""``topk``: the papers' vanilla TopK — keep the k largest magnitudes of the whole flat update.

Body layout (MSB-first bit fields, zero-padded to a byte)::

    k            u32    kept entries, <= d
    value_bits   u8     32 (fp32), 16 (fp16 of v/scale) or 2..15 (sign + (b-1)-bit magnitude)
    coder        u8     0 = fixed ceil(log2 d)-bit indices, 1 = Elias–Fano
    scale        f32    only when value_bits != 32: max |kept value|
    indices             k sorted indices (wire/index_coding.py)
    values              k codes of value_bits bits, in index order

With ``rate`` set, k is the largest count whose whole frame fits ``floor(rate * d)`` bits; a rate too small
for even ``k = 0`` raises :class:`~fedsqueeze.ConfigError` at encode time.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError, PayloadError
from ...spec import UpdateSpec
from ...wire.bitpack import BitReader, BitWriter
from ...wire.index_coding import INDEX_CODERS, fixed_width, index_bits, read_indices, write_indices
from ..base import Codec
from ..budget import check_density, check_one_budget, check_rate
from ..registry import register
from ._util import (
    CODER_IDS,
    CODER_NAMES,
    density_k,
    expect_body_bits,
    frame_bits,
    largest_fitting,
    read_scale,
    read_values,
    to_f32,
    topk_sorted,
    value_code,
)

__all__ = ["TopK", "index_bits_for_all_k"]

_HEAD_BITS = 32 + 8 + 8
_ROUNDINGS = ("nearest", "stochastic")


def _valid_value_bits(b: int) -> bool:
    return b == 32 or 2 <= b <= 16


def index_bits_for_all_k(coder: str, d: int, kmax: int) -> np.ndarray:
    """Exact index bits for every ``k`` in ``0..kmax`` (vectorized, for the rate search)."""
    k = np.arange(kmax + 1, dtype=np.int64)
    if coder == "fixed":
        return k * fixed_width(d)
    # Elias–Fano: l = floor(log2(d / k)) low bits (k < d), k*l + k + ((d-1) >> l) + 1 bits; 0 for k = 0.
    # Same float expression as wire/index_coding.py; callers re-check the chosen k with index_bits().
    with np.errstate(divide="ignore"):
        low = np.floor(np.log2(d / np.maximum(k, 1))).astype(np.int64)
    low = np.where(k >= d, 0, np.maximum(low, 0))
    bits = k * low + k + ((d - 1) >> low) + 1
    return np.where(k == 0, 0, bits)


@register
@dataclasses.dataclass(frozen=True)
class TopK(Codec):
    """Global TopK over the flat update with configurable value precision and position coding.

    Parameters
    ----------
    density
        Kept fraction: ``k = floor(density * d)`` (at least 1). Replaced by ``rate`` when set (then leave
        it at its default).
    rate
        Target bits per parameter of the whole frame; picks the largest ``k`` that fits.
    value_bits
        32 = fp32, 16 = fp16 of ``v / max|v|``, 2..15 = sign + uniform magnitude levels on ``[0, max|v|]``.
    positions
        ``"fixed"`` (``ceil(log2 d)`` bits per index) or ``"elias_fano"``.
    rounding
        ``"nearest"`` or ``"stochastic"`` (seeded, unbiased) for quantized values (2..15 bits).
    """

    name: ClassVar[str] = "topk"
    codec_id: ClassVar[int] = 10
    summary: ClassVar[str] = "vanilla global TopK: fp32/fp16/b-bit values, fixed or Elias-Fano indices"
    rate_option: ClassVar[str | None] = "rate"

    density: float = 0.02
    rate: float | None = None
    value_bits: int = 32
    positions: str = "fixed"
    rounding: str = "nearest"

    def __post_init__(self) -> None:
        check_density(self.name, self.density)
        check_rate(self.name, self.rate)
        check_one_budget(self)
        if not (isinstance(self.value_bits, int) and _valid_value_bits(self.value_bits)):
            raise ConfigError(f"topk: value_bits must be 32, 16 or 2..15, got {self.value_bits!r}")
        if self.positions not in INDEX_CODERS:
            raise ConfigError(f"topk: positions must be one of {INDEX_CODERS}, got {self.positions!r}")
        if self.rounding not in _ROUNDINGS:
            raise ConfigError(f"topk: rounding must be one of {_ROUNDINGS}, got {self.rounding!r}")

    # -- sizes ---------------------------------------------------------------------------------------------
    def _fixed_bits(self) -> int:
        return _HEAD_BITS + (0 if self.value_bits == 32 else 32)

    def choose_k(self, d: int) -> int:
        """Kept count for a vector of length ``d`` (from ``density`` or the ``rate`` search)."""
        if self.rate is None:
            return density_k(self.density, d)
        vb = self.value_bits
        kmax = min(d, int(self.rate * d) // vb + 1)
        sizes = self._fixed_bits() + index_bits_for_all_k(self.positions, d, kmax) + np.arange(kmax + 1) * vb
        k = largest_fitting(self.name, sizes, self.rate, d)
        while k > 0 and not self._fits(d, k):  # float-log guard: trust the exact coder size
            k -= 1
        return k

    def _fits(self, d: int, k: int) -> bool:
        bits = self._fixed_bits() + index_bits(self.positions, d, k) + k * self.value_bits
        return bool(frame_bits(bits) <= int(self.rate * d)) if self.rate is not None else True

    # -- codec ----------------------------------------------------------------------------------------------
    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        d = spec.numel
        k = self.choose_k(d)
        idx = topk_sorted(flat, k)
        vals = flat.numpy()[idx].astype(np.float64)
        rng = np.random.default_rng(seed) if self.rounding == "stochastic" else None
        scale, codes = value_code(vals, self.value_bits, stochastic=rng is not None, rng=rng)
        w = BitWriter()
        w.write_uint(k, 32)
        w.write_uint(self.value_bits, 8)
        w.write_uint(CODER_IDS[self.positions], 8)
        if self.value_bits != 32:
            w.write_f32(scale)
        write_indices(w, idx, d, self.positions)
        w.write_uints(codes, self.value_bits)
        return w.getvalue()

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        d = spec.numel
        r = BitReader(body)
        k = r.read_uint(32, "k")
        vb = r.read_uint(8, "value_bits")
        coder_id = r.read_uint(8, "coder")
        if k > d:
            raise PayloadError(f"topk: k={k} exceeds d={d}")
        if not _valid_value_bits(vb):
            raise PayloadError(f"topk: invalid value_bits {vb}")
        if coder_id not in CODER_NAMES:
            raise PayloadError(f"topk: unknown index coder id {coder_id}")
        coder = CODER_NAMES[coder_id]
        head = _HEAD_BITS + (0 if vb == 32 else 32)
        expect_body_bits(cls.name, body, head + index_bits(coder, d, k) + k * vb)
        scale = 0.0
        if vb != 32:
            scale = read_scale(r, cls.name)
        idx = read_indices(r, k, d, coder)
        vals = read_values(r.read_uints(k, vb, "values"), vb, scale)
        r.expect_end()
        out = np.zeros(d, dtype=np.float64)
        out[idx] = vals
        return to_f32(out)

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        d = spec.numel
        worst_index = max(d * fixed_width(d), 2 * d + 1)
        return (_HEAD_BITS + 32 + worst_index + 32 * d + 7) // 8

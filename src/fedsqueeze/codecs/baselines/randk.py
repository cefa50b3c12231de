"""``randk``: k coordinates drawn from the frame's seed; only their values travel.

The mask is ``sort(numpy.random.default_rng(seed).choice(d, k, replace=False))``, recomputed by the decoder
from the seed in the frame header, so no positions are sent.

Body layout (MSB-first bit fields, zero-padded to a byte)::

    k            u32    kept entries, <= d
    value_bits   u8     32 (fp32) or 16 (fp16 of v/scale)
    unbiased     u8     1: the decoder scales by d/k (unbiased RandK), 0: plain sparsification
    scale        f32    only when value_bits == 16: max |kept value|
    values              k codes of value_bits bits, in index order

With ``rate`` set, k is the largest count whose whole frame fits ``floor(rate * d)`` bits; a rate too small
for even ``k = 0`` raises :class:`~fedsqueeze.ConfigError` at encode time.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError
from ...spec import UpdateSpec
from ..base import Codec
from ..budget import check_density, check_one_budget, check_rate
from ..registry import register
from ._util import kept_body_bits, kept_count, read_kept_values, to_f32, write_kept_values

__all__ = ["RandK", "randk_indices"]


def randk_indices(d: int, k: int, seed: int) -> np.ndarray:
    """The sorted mask of ``k`` of ``d`` coordinates for ``seed`` (shared by encoder and decoder)."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= d:
        return np.arange(d, dtype=np.int64)
    idx = np.random.default_rng(seed).choice(d, size=k, replace=False).astype(np.int64)
    idx.sort()
    return idx


@register
@dataclasses.dataclass(frozen=True)
class RandK(Codec):
    """Random-k sparsification with a seed-derived mask.

    Parameters
    ----------
    density
        Kept fraction: ``k = floor(density * d)`` (at least 1). Replaced by ``rate`` when set (then leave
        it at its default).
    rate
        Target bits per parameter of the whole frame; picks the largest ``k`` that fits.
    value_bits
        32 (fp32) or 16 (fp16 of ``v / max|v|`` with an fp32 scale).
    unbiased
        Scale the decoded values by ``d / k`` (unbiased, variance ``d/k - 1``); use the biased form with
        error feedback.
    """

    name: ClassVar[str] = "randk"
    codec_id: ClassVar[int] = 11
    summary: ClassVar[str] = "RandK: k seeded random coordinates (no indices sent), optional d/k scaling"
    rate_option: ClassVar[str | None] = "rate"

    density: float = 0.02
    rate: float | None = None
    value_bits: int = 32
    unbiased: bool = False

    def __post_init__(self) -> None:
        check_density(self.name, self.density)
        check_rate(self.name, self.rate)
        check_one_budget(self)
        if self.value_bits not in (16, 32):
            raise ConfigError(f"randk: value_bits must be 32 or 16, got {self.value_bits!r}")
        if not isinstance(self.unbiased, bool):
            raise ConfigError(f"randk: unbiased must be True or False, got {self.unbiased!r}")

    def choose_k(self, d: int) -> int:
        """Kept count for a vector of length ``d`` (from ``density`` or the ``rate`` search)."""
        return kept_count(self.name, self.density, self.rate, self.value_bits, d, pool=d)

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        d = spec.numel
        k = self.choose_k(d)
        idx = randk_indices(d, k, seed)
        return write_kept_values(flat.numpy()[idx].astype(np.float64), self.value_bits, self.unbiased)

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        d = spec.numel
        vals, unbiased = read_kept_values(cls.name, body, d, "d", (16, 32), "unbiased")
        k = vals.size
        if unbiased and k:
            vals = vals * (d / k)
        out = np.zeros(d, dtype=np.float64)
        out[randk_indices(d, k, seed)] = vals
        return to_f32(out)

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        return (int(kept_body_bits(spec.numel, 32)) + 32 + 7) // 8

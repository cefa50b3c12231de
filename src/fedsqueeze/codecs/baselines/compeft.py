"""``compeft``: ComPEFT (Yadav et al., arXiv:2311.13171) adapted to federated uplinks.

TopK mask of the update, then every kept entry becomes ``c · sign(v)``: one sign bit per kept entry plus
one fp32 scale. ComPEFT's scale is ``α · σ(τ)`` with α tuned on validation data; an FL server has no
validation set, so here ``c = alpha · mean |kept|``, which for ``alpha = 1`` is the MSE-optimal scale (it
minimises ``‖v − c · sign(v)‖²`` over the kept entries). ``alpha`` stays available as an "update gain"
(α > 1 acts like a server learning-rate multiplier). The original is one-shot; use
:class:`~fedsqueeze.ErrorFeedback` in FL.

Body layout (MSB-first bit fields, zero-padded to a byte)::

    k        u32    kept entries, <= d
    coder    u8     0 = fixed ceil(log2 d)-bit indices, 1 = Elias–Fano
    c        f32    the common magnitude, finite and >= 0
    indices         k sorted indices (wire/index_coding.py)
    signs    k bits 1 = negative, in index order

With ``rate`` set, k is the largest count whose whole frame fits ``floor(rate * d)`` bits; a rate too small
for even ``k = 0`` raises :class:`~fedsqueeze.ConfigError` at encode time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError, PayloadError
from ...spec import UpdateSpec
from ...wire.bitpack import BitReader, BitWriter
from ...wire.index_coding import INDEX_CODERS, fixed_width, index_bits, read_indices, write_indices
from ..base import FP32_MAX, Codec
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
    topk_sorted,
)
from .topk import index_bits_for_all_k

__all__ = ["ComPEFT"]

_HEAD_BITS = 32 + 8 + 32


@register
@dataclasses.dataclass(frozen=True)
class ComPEFT(Codec):
    """TopK mask plus a single shared magnitude: ``c · sign(v)`` on the kept entries.

    Parameters
    ----------
    density
        Kept fraction: ``k = floor(density * d)`` (at least 1). Replaced by ``rate`` when set (then leave
        it at its default).
    rate
        Target bits per parameter of the whole frame; picks the ``k`` of least error among those that fit
        (the largest, unless a single magnitude fits fewer entries better).
    positions
        ``"elias_fano"`` (default) or ``"fixed"``.
    alpha
        Gain on the MSE-optimal scale ``mean |kept|``.
    """

    name: ClassVar[str] = "compeft"
    codec_id: ClassVar[int] = 15
    summary: ClassVar[str] = "ComPEFT: TopK mask, c*sign values (c = alpha*mean|kept|), sign bit + position"
    rate_option: ClassVar[str | None] = "rate"

    density: float = 0.02
    rate: float | None = None
    positions: str = "elias_fano"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_density(self.name, self.density)
        check_rate(self.name, self.rate)
        check_one_budget(self)
        if self.positions not in INDEX_CODERS:
            raise ConfigError(f"compeft: positions must be one of {INDEX_CODERS}, got {self.positions!r}")
        if not (isinstance(self.alpha, int | float) and self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"compeft: alpha must be a positive finite gain, got {self.alpha!r}")

    def choose_k(self, d: int) -> int:
        """Kept count for a vector of length ``d`` (from ``density`` or the ``rate`` search)."""
        if self.rate is None:
            return density_k(self.density, d)
        kmax = min(d, int(self.rate * d) + 1)
        sizes = _HEAD_BITS + index_bits_for_all_k(self.positions, d, kmax) + np.arange(kmax + 1)
        k = largest_fitting(self.name, sizes, self.rate, d)
        # The vectorized size uses a float log like the coder; trust the coder's exact size.
        while k > 0 and frame_bits(_HEAD_BITS + index_bits(self.positions, d, k) + k) > int(self.rate * d):
            k -= 1
        return k

    def best_k(self, flat: torch.Tensor, k_max: int) -> int:
        """The ``k <= k_max`` of least squared error (one shared magnitude over more entries can lose).

        With ``c = alpha * S_k / k`` (``S_k`` the sum of the ``k`` largest magnitudes) the error is
        ``||x||^2 - (2 alpha - alpha^2) S_k^2 / k``, so a larger budget never gives a larger error.
        """
        if k_max <= 1:
            return k_max
        top = torch.topk(flat.abs().to(torch.float64), k_max, sorted=True).values
        s = torch.cumsum(top, 0)
        gain = (2 * self.alpha - self.alpha**2) * s * s / torch.arange(1, k_max + 1, dtype=torch.float64)
        return int(torch.argmax(gain)) + 1

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        d = spec.numel
        k = self.choose_k(d)
        if self.rate is not None:
            k = self.best_k(flat, k)
        idx = topk_sorted(flat, k)
        vals = flat.numpy()[idx].astype(np.float64)
        c = min(FP32_MAX, self.alpha * float(np.abs(vals).mean())) if k else 0.0
        w = BitWriter()
        w.write_uint(k, 32)
        w.write_uint(CODER_IDS[self.positions], 8)
        w.write_f32(c)
        write_indices(w, idx, d, self.positions)
        w.write_bits((vals < 0).astype(np.uint8))
        return w.getvalue()

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        d = spec.numel
        r = BitReader(body)
        k = r.read_uint(32, "k")
        coder_id = r.read_uint(8, "coder")
        if k > d:
            raise PayloadError(f"compeft: k={k} exceeds d={d}")
        if coder_id not in CODER_NAMES:
            raise PayloadError(f"compeft: unknown index coder id {coder_id}")
        coder = CODER_NAMES[coder_id]
        expect_body_bits(cls.name, body, _HEAD_BITS + index_bits(coder, d, k) + k)
        c = read_scale(r, cls.name)
        idx = read_indices(r, k, d, coder)
        neg = r.read_bits(k, "signs").astype(bool)
        r.expect_end()
        # c is a finite float32 value, so writing +-c into a float32 vector equals the float64 path + clamp.
        # numpy, not torch: no thread hand-off for these two small steps (erratic on a busy 2-core host).
        out = np.zeros(d, dtype=np.float32)
        out[idx] = np.where(neg, np.float32(-c), np.float32(c))
        return torch.from_numpy(out)

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        d = spec.numel
        return (_HEAD_BITS + max(d * fixed_width(d), 2 * d + 1) + d + 7) // 8

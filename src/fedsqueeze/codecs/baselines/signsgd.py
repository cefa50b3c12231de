"""``signsgd``: the EF-signSGD compressor, ``(‖p‖₁ / n) · sign(p)`` per tensor of the spec.

Karimireddy et al. 2019 (arXiv:1901.09847): one scale per tensor (per LoRA matrix, not global, since A and B
differ in scale) and one sign bit per entry; ``sign(0)`` is ``+``. Meant to run under
:class:`~fedsqueeze.ErrorFeedback`. Fixed rate: ``d + 32 · tensors`` bits plus the frame header.

Body layout::

    scales   f32 × tensors   mean |p| of each tensor, in spec order (an empty tensor gets 0)
    signs    1 bit × d       1 = negative, in flat order; zero-padded to a byte
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from ...errors import PayloadError
from ...spec import UpdateSpec
from ...wire.bitpack import BitReader, BitWriter
from ..base import Codec
from ..registry import register
from ._util import (
    expect_body_bits,
    to_f32,
)

__all__ = ["SignSGD"]


def _body_bits(spec: UpdateSpec) -> int:
    return 32 * len(spec) + spec.numel


@register
@dataclasses.dataclass(frozen=True)
class SignSGD(Codec):
    """Scaled sign compression (EF-signSGD); no options, about 1 bit per parameter."""

    name: ClassVar[str] = "signsgd"
    codec_id: ClassVar[int] = 13
    summary: ClassVar[str] = "EF-signSGD: per-tensor mean|p| times sign, 1 bit/param + 32 bits/tensor"

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        x = flat.numpy()
        sizes = np.asarray(spec.sizes, dtype=np.int64)
        # Per-tensor L1 norms in float64 (no overflow for huge values), as one vectorized segment sum.
        owner = np.repeat(np.arange(len(spec)), sizes)
        l1 = np.bincount(owner, weights=np.abs(x.astype(np.float64)), minlength=len(spec))
        scales = np.where(sizes > 0, l1 / np.maximum(sizes, 1), 0.0)
        w = BitWriter()
        w.write_f32(scales.astype(np.float32))
        w.write_bits((x < 0).astype(np.uint8))
        return w.getvalue()

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        expect_body_bits(cls.name, body, _body_bits(spec))
        r = BitReader(body)
        with np.errstate(invalid="ignore"):  # signalling NaNs are rejected just below
            scales = r.read_f32(len(spec), "scales").astype(np.float64)
        if not (np.all(np.isfinite(scales)) and np.all(scales >= 0)):
            raise PayloadError("signsgd: tensor scales must be finite and non-negative")
        neg = r.read_bits(spec.numel, "signs").astype(bool)
        r.expect_end()
        mag = np.repeat(scales, np.asarray(spec.sizes, dtype=np.int64))
        return to_f32(np.where(neg, -mag, mag))

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        return (_body_bits(spec) + 7) // 8

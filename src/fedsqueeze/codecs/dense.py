"""Dense codecs: ``identity`` (fp32, lossless), ``fp16`` and ``bf16``.

Body: the d values in spec order, little-endian, nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from ..errors import PayloadError
from ..spec import UpdateSpec
from .base import Codec
from .registry import register

__all__ = ["BF16", "FP16", "Identity"]


@dataclasses.dataclass(frozen=True)
class _Dense(Codec):
    dtype: ClassVar[torch.dtype]
    width: ClassVar[int]

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        if self.dtype is torch.float16:
            # Clamp to the finite fp16 range so huge values saturate instead of turning into Inf.
            flat = flat.clamp(-65504.0, 65504.0)
        ints = flat.to(self.dtype).view(torch.int32 if self.width == 4 else torch.int16)
        return ints.numpy().astype(f"<i{self.width}", copy=False).tobytes()

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        if len(body) != cls.width * spec.numel:
            raise PayloadError(f"{cls.name} body has {len(body)} bytes, expected {cls.width * spec.numel}")
        raw = np.frombuffer(body, dtype=f"<i{cls.width}").astype(f"=i{cls.width}")
        ints = torch.from_numpy(raw.copy())
        return ints.view(cls.dtype).to(torch.float32)

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        return cls.width * spec.numel


@register
@dataclasses.dataclass(frozen=True)
class Identity(_Dense):
    """Dense fp32: the uncompressed baseline, bit-exact."""

    name: ClassVar[str] = "identity"
    codec_id: ClassVar[int] = 1
    summary: ClassVar[str] = "dense fp32, lossless (32 bits/param)"
    dtype: ClassVar[torch.dtype] = torch.float32
    width: ClassVar[int] = 4


@register
@dataclasses.dataclass(frozen=True)
class FP16(_Dense):
    """Dense IEEE half precision (values beyond ±65504 saturate)."""

    name: ClassVar[str] = "fp16"
    codec_id: ClassVar[int] = 2
    summary: ClassVar[str] = "dense IEEE fp16, round to nearest (16 bits/param)"
    dtype: ClassVar[torch.dtype] = torch.float16
    width: ClassVar[int] = 2


@register
@dataclasses.dataclass(frozen=True)
class BF16(_Dense):
    """Dense bfloat16."""

    name: ClassVar[str] = "bf16"
    codec_id: ClassVar[int] = 3
    summary: ClassVar[str] = "dense bfloat16, round to nearest (16 bits/param)"
    dtype: ClassVar[torch.dtype] = torch.bfloat16
    width: ClassVar[int] = 2

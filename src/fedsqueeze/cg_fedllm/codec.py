"""``cg_fedllm`` (id 30): CG-FedLLM, paper-faithful — a ResNet-3 autoencoder over the factor stack.

The client lays its LoRA factors out as one ``[1, H, W]`` image (:mod:`fedsqueeze.cg_fedllm.layout`), runs the
encoder of a TGAP-trained autoencoder and sends the latent (1/64 of the padded image with the paper's depth
6) as fp32 (0.5 bit/param of the image) or fp16. The server runs the decoder. No quantisation, no entropy
coding, and no error feedback by default (set ``fl.error_feedback = false`` for the paper's setting).

Body (little-endian)::

    B     version (1)
    8s    fingerprint of the autoencoder (8 bytes of SHA-256 of its config and weights)
    B     latent dtype: 0 fp32, 1 fp16
    f32×k normalisation scales (k from the model: 0, 1 or one per tensor)
    C·h·w latent values in the named dtype, (C, h, w) row-major

The decoder finds the model by fingerprint (``fedsqueeze.decode(blob, spec, models={fp_hex: model})`` or
the process-wide store, :mod:`fedsqueeze.cg_fedllm.store`); an unknown fingerprint is a
:class:`~fedsqueeze.PayloadError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from ..codecs.base import ModelSource
from ..codecs.registry import register as register_codec
from ..errors import ConfigError, PayloadError
from ..spec import UpdateSpec
from .autoencoder import CGAutoEncoder
from .codec_base import TrainedModelCodec
from .codec_util import (
    PREFIX,
    check_trained_spec,
    codec_model,
    max_body,
    read_floats,
    read_prefix_byte,
    scales_count,
)
from .store import register, resolve
from .transform import analyse, layout_for, synthesise

__all__ = ["CGFedLLM"]

_VERSION = 1
_DTYPES = {"fp32": (0, "f4"), "fp16": (1, "f2")}
_BY_CODE = {code: (name, np_t) for name, (code, np_t) in _DTYPES.items()}


@register_codec
@dataclasses.dataclass(frozen=True)
class CGFedLLM(TrainedModelCodec):
    """CG-FedLLM with a frozen, pre-trained autoencoder (see the module docstring).

    Parameters
    ----------
    model_path
        A ``.safetensors`` file written by ``fedsqueeze tgap`` (with its ``.json`` sidecar).
    latent_dtype
        ``fp32`` (0.5 bit per image element at depth 6) or ``fp16`` (0.25).
    model_fingerprint
        Set by :meth:`from_model` for an in-memory model; otherwise ``None``.
    """

    name: ClassVar[str] = "cg_fedllm"
    codec_id: ClassVar[int] = 30
    summary: ClassVar[str] = "CG-FedLLM: ResNet-3 autoencoder latent (fp32/fp16), needs a TGAP-trained model"
    training_variant: ClassVar[str] = "paper"  # the paper's TGAP recipe is the default for the paper's codec
    needs_trained_model: ClassVar[bool] = True  # no model, no latent: encode_flat cannot run without one

    model_path: str | None = None
    latent_dtype: str = "fp32"
    model_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.latent_dtype not in _DTYPES:
            raise ConfigError(f"cg_fedllm latent_dtype must be fp32 or fp16, got {self.latent_dtype!r}")

    @classmethod
    def from_model(cls, model: CGAutoEncoder, **options: Any) -> CGFedLLM:
        """A codec using the in-memory ``model`` (registered in the store, so decoding finds it)."""
        return cls(model_fingerprint=register(model), **options)

    def model(self) -> CGAutoEncoder:
        return codec_model(self.model_fingerprint, self.model_path, self.name)

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        model = self.model()
        check_trained_spec(model, spec, self.name)
        latent, scales = analyse(model, flat, spec)
        code, np_t = _DTYPES[self.latent_dtype]
        z = latent.numpy().astype(np.float32)
        if np_t == "f2":  # saturate instead of overflowing to Inf
            z = np.clip(z, -65504.0, 65504.0)
        return b"".join(
            (
                PREFIX.pack(_VERSION, model.fingerprint()),
                bytes([code]),
                scales.numpy().astype("<f4").tobytes(),
                z.astype(f"<{np_t}").tobytes(),
            )
        )

    @classmethod
    def decode_flat(
        cls, body: bytes, spec: UpdateSpec, *, seed: int, models: ModelSource = None
    ) -> torch.Tensor:
        fp, code = read_prefix_byte(body, _VERSION, cls.name, "the latent dtype")
        if code not in _BY_CODE:
            raise PayloadError(f"cg_fedllm latent dtype code {code} is unknown")
        np_t = _BY_CODE[code][1]
        model = resolve(fp, models)
        c, h, w = model.latent_shape(*_image_hw(model, spec))
        k = scales_count(spec, model)
        off = PREFIX.size + 1
        expected = off + 4 * k + np.dtype(np_t).itemsize * c * h * w
        if len(body) != expected:
            raise PayloadError(f"cg_fedllm body has {len(body)} bytes, this model and spec need {expected}")
        scales = read_floats(body, off, k, "f4", cls.name)
        if (scales < 0).any():
            raise PayloadError("cg_fedllm normalisation scales must be >= 0")
        z = read_floats(body, off + 4 * k, c * h * w, np_t, cls.name).reshape(c, h, w)
        out = synthesise(model, torch.from_numpy(z), torch.from_numpy(scales), spec)
        if not bool(torch.isfinite(out).all()):
            raise PayloadError("cg_fedllm latent decodes to NaN or Inf")
        return out

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        return max_body(spec, 4, PREFIX.size + 1)


def _image_hw(model: CGAutoEncoder, spec: UpdateSpec) -> tuple[int, int]:
    lay = layout_for(model, spec)
    return lay.height, lay.width

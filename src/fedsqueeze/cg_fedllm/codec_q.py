"""``cg_fedllm_q`` (id 31): CG-FedLLM made sound — normalised deltas, quantised and entropy-coded latent.

The "sound variant" of ``docs/cg-fedllm.md``: the client encodes its per-round delta (with the engine's error
feedback, which wraps every codec), each tensor is normalised by its RMS (the scales travel as fp32 side
information, when the model was trained with ``normalize = "tensor_rms"``), the autoencoder's latent is
quantised with a uniform step and entropy-coded with rANS (constriction) under a per-channel Laplace model
whose scales travel as 8-bit log codes. ``rate`` (bits per parameter of the whole frame) picks the step by
bisection so the frame fits; without ``rate`` the latent is quantised to ``bits`` bits over its range.

With no model (``model_path`` and ``from_model`` unset) the transform is a fixed, untrained one: per-tensor
RMS normalisation and orthonormal 8×8 block means of the factor stack (1/64 of the inputs, the paper's ratio).
It needs no training, so ``fedsqueeze bench rd`` can trace its curve; it is the "dimension reduction without
learning" reference, not CG-FedLLM.

Body (little-endian)::

    B     version (1)
    8s    fingerprint (of the autoencoder; 8 × 0x00 for the block-mean fallback)
    B     kind: 0 = all-zero update (nothing follows), 1 = latent
    f32   quantiser step (> 0)
    B     bits b (2..16): symbols lie in [-(2^(b-1)-1), 2^(b-1)-1]
    f32×k normalisation scales
    u8×C  per-channel Laplace scale codes: scale = 2^((code-128)/8) steps
    u32…  rANS words (the rest of the body)
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, ClassVar

import numpy as np
import torch

from ..codecs.base import ModelSource
from ..codecs.budget import check_rate, check_rate_fits
from ..codecs.registry import register as register_codec
from ..errors import ConfigError, PayloadError
from ..spec import UpdateSpec
from ..wire.frame import HEADER_SIZE
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
from .transform import (
    analyse,
    blockmean_analyse,
    blockmean_latent_shape,
    blockmean_synthesise,
    layout_for,
    synthesise,
)

__all__ = ["FALLBACK_FINGERPRINT", "CGFedLLMQ"]

_VERSION = 1
FALLBACK_FINGERPRINT = bytes(8)
_HEAD = struct.Struct("<fB")  # step, bits


@register_codec
@dataclasses.dataclass(frozen=True)
class CGFedLLMQ(TrainedModelCodec):
    """CG-FedLLM with a quantised, entropy-coded latent (see the module docstring).

    Parameters
    ----------
    rate
        Target bits per parameter of the whole frame (header included); ``None``: fixed ``bits``.
    bits
        Quantiser range in bits (without ``rate``: the latent's max maps to the top level).
    model_path, model_fingerprint
        The trained autoencoder (as for ``cg_fedllm``); both unset selects the untrained block-mean
        transform.
    """

    name: ClassVar[str] = "cg_fedllm_q"
    codec_id: ClassVar[int] = 31
    summary: ClassVar[str] = (
        "CG-FedLLM sound variant: normalised, quantised, rANS-coded latent (rate-tunable)"
    )
    rate_option: ClassVar[str | None] = "rate"
    needs_trained_model: ClassVar[bool] = False  # without a model it codes the block-mean transform

    rate: float | None = None
    bits: int = 8
    model_path: str | None = None
    model_fingerprint: str | None = None

    def __post_init__(self) -> None:
        check_rate(self.name, self.rate)
        if not 2 <= self.bits <= 16:
            raise ConfigError(f"cg_fedllm_q bits must be in 2..16, got {self.bits}")

    @classmethod
    def from_model(cls, model: CGAutoEncoder, **options: Any) -> CGFedLLMQ:
        """A codec using the in-memory ``model`` (registered in the store, so decoding finds it)."""
        return cls(model_fingerprint=register(model), **options)

    def _model(self) -> CGAutoEncoder | None:
        if self.model_fingerprint is None and self.model_path is None:
            return None
        return codec_model(self.model_fingerprint, self.model_path, self.name)

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        model = self._model()
        if model is None:
            latent, scales = blockmean_analyse(flat, spec)
            fp = FALLBACK_FINGERPRINT
        else:
            check_trained_spec(model, spec, self.name)
            latent, scales = analyse(model, flat, spec)
            fp = model.fingerprint()
        z = latent.numpy().astype(np.float64)
        prefix = PREFIX.pack(_VERSION, fp)
        zero_body = prefix + b"\x00"
        peak = float(np.abs(z).max()) if z.size else 0.0
        if peak == 0.0 or not np.isfinite(peak):
            return zero_body
        top = 2 ** (self.bits - 1) - 1
        side = scales.numpy().astype("<f4").tobytes()
        fine = peak / top

        def body_for(step: float) -> bytes:
            return prefix + b"\x01" + _HEAD.pack(step, self.bits) + side + _code(z, step, top)

        if self.rate is None:
            return body_for(fine)
        check_rate_fits(self.name, self.rate, spec.numel)
        budget = int(self.rate * spec.numel) // 8 - HEADER_SIZE
        if len(body_for(fine)) <= budget:
            return body_for(fine)
        lo, hi = np.log(fine), np.log(4.0 * peak)  # at 4·peak every symbol is 0: the smallest latent body
        best = body_for(float(np.exp(hi)))
        if len(best) > budget:  # not even an all-zero latent fits: say so rather than overrun or send nothing
            raise ConfigError(
                f"cg_fedllm_q: a budget of {int(self.rate * spec.numel)} bits for d={spec.numel} cannot hold "
                f"the latent's side information ({8 * (len(best) + HEADER_SIZE)} bits at the coarsest step); "
                "raise the rate"
            )
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            cand = body_for(float(np.exp(mid)))
            if len(cand) <= budget:
                best, hi = cand, mid
            else:
                lo = mid
        return best

    @classmethod
    def decode_flat(
        cls, body: bytes, spec: UpdateSpec, *, seed: int, models: ModelSource = None
    ) -> torch.Tensor:
        fp, kind = read_prefix_byte(body, _VERSION, cls.name, "its kind byte")
        off = PREFIX.size + 1
        if kind == 0:
            if len(body) != off:
                raise PayloadError("cg_fedllm_q zero-update body has trailing bytes")
            return torch.zeros(spec.numel)
        if kind != 1:
            raise PayloadError(f"cg_fedllm_q body kind {kind} is unknown")
        if len(body) < off + _HEAD.size:
            raise PayloadError("cg_fedllm_q body truncated in its quantiser header")
        step, bits = _HEAD.unpack_from(body, off)
        off += _HEAD.size
        if not (np.isfinite(step) and step > 0) or not 2 <= bits <= 16:
            raise PayloadError(f"cg_fedllm_q quantiser step {step} / bits {bits} out of range")
        model: CGAutoEncoder | None = None
        if bytes.fromhex(fp) == FALLBACK_FINGERPRINT:
            k, shape = len(spec.entries), blockmean_latent_shape(spec)
        else:
            model = resolve(fp, models)
            k = scales_count(spec, model)
            lay = layout_for(model, spec)
            shape = model.latent_shape(lay.height, lay.width)
        scales = read_floats(body, off, k, "f4", cls.name)
        if (scales < 0).any():
            raise PayloadError("cg_fedllm_q normalisation scales must be >= 0")
        off += 4 * k
        c = shape[0]
        if len(body) < off + c or (len(body) - off - c) % 4:
            raise PayloadError("cg_fedllm_q body has a truncated scale table or a partial rANS word")
        codes = np.frombuffer(body, dtype=np.uint8, count=c, offset=off)
        words = np.frombuffer(body, dtype="<u4", offset=off + c).astype(np.uint32)
        q = _decode(words, codes, shape, 2 ** (bits - 1) - 1)
        latent = torch.from_numpy((q.astype(np.float64) * step).astype(np.float32))
        if model is None:
            out = blockmean_synthesise(latent, torch.from_numpy(scales), spec)
        else:
            out = synthesise(model, latent, torch.from_numpy(scales), spec)
        if not bool(torch.isfinite(out).all()):
            raise PayloadError("cg_fedllm_q latent decodes to NaN or Inf")
        return out

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        # rANS of b <= 16-bit symbols under a model with scales >= 2^-16 steps stays below 4 bytes/symbol.
        return max_body(spec, 5, PREFIX.size + 1 + _HEAD.size)


def _laplace_scales(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel Laplace MLE scale (mean |q|) in steps → 8-bit log codes and the decoded scales."""
    b = np.abs(q).reshape(q.shape[0], -1).mean(axis=1)
    codes = np.clip(np.round(8 * np.log2(np.maximum(b, 2.0**-16)) + 128), 0, 255).astype(np.uint8)
    return codes, _code_scale(codes)


def _code_scale(codes: np.ndarray) -> np.ndarray:
    # floor at 0.05 steps: constriction needs a positive scale, and the code's finest value is 2^-16
    return np.maximum(2.0 ** ((codes.astype(np.float64) - 128) / 8), 0.05)


def _model(top: int) -> Any:
    import constriction

    return constriction.stream.model.QuantizedLaplace(-top, top)


def _code(z: np.ndarray, step: float, top: int) -> bytes:
    import constriction

    q = np.clip(np.round(z / step), -top, top).astype(np.int32)
    codes, scales = _laplace_scales(q)
    per = np.repeat(scales, q[0].size)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(q.reshape(-1), _model(top), np.zeros_like(per), per)
    return codes.tobytes() + coder.get_compressed().astype("<u4").tobytes()


def _decode(words: np.ndarray, codes: np.ndarray, shape: tuple[int, int, int], top: int) -> np.ndarray:
    import constriction

    per = np.repeat(_code_scale(codes), shape[1] * shape[2])
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        q = coder.decode(_model(top), np.zeros_like(per), per)
    except Exception as exc:  # constriction raises its own types on corrupt streams
        raise PayloadError(f"cg_fedllm_q rANS stream is corrupt ({type(exc).__name__}: {exc})") from None
    return np.asarray(q, dtype=np.int64).reshape(shape)

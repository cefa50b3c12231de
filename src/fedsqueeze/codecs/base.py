"""The codec contract.

A codec is a frozen dataclass whose fields are its options. It turns a flat float32 update into a *body* of
bytes; :meth:`Codec.encode` wraps the body in a frame (see ``wire/SPEC.md``). Decoding is a classmethod of the
body alone: every parameter the decoder needs travels in the body, so the server needs no codec options.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, UpdateError
from ..spec import UpdateSpec
from ..wire.frame import HEADER_SIZE, pack_frame

__all__ = ["FP32_MAX", "Codec", "ModelSource", "Reference", "all_finite"]

# What a decoder of a trained-model codec may be given to find its model by fingerprint: a mapping
# ``{fingerprint_hex: model or path}`` or any object with ``resolve(fingerprint_hex) -> model | None``
# (e.g. :class:`fedsqueeze.cg_fedllm.store.ModelStore`); ``None`` means the process-wide store.
ModelSource = Any
# What a codec that predicts from a reference (``uses_reference``) is given on both ends: a mapping with the
# update's names and shapes, or a flat tensor of its length. Every codec accepts one; plain codecs ignore it.
Reference = Mapping[str, torch.Tensor] | torch.Tensor
# Largest finite float32: decoders saturate reconstructed values to it so a decoded update stays finite.
FP32_MAX = float(torch.finfo(torch.float32).max)


def all_finite(t: torch.Tensor) -> bool:
    """True when every element of a float32 (or narrower) tensor is finite, without a d-sized mask.

    A float64 sum of finite float32 values cannot overflow (d * 3.4e38 << 1.8e308 for any d we accept), and
    NaN or ±Inf propagate through the sum (Inf + -Inf gives NaN), so the sum is finite exactly when all are.
    """
    if t.dtype == torch.float64:
        return bool(torch.isfinite(t).all())
    flat = t.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float16):
        # NumPy casts to float64 through a small buffer (no d-sized copy) and needs no thread handoff, which
        # costs torch's many chunked sums ~16 ms each on a busy 2-core machine.
        total = float(np.sum(flat.numpy(), dtype=np.float64))
        return math.isfinite(total)
    # Summed in chunks: torch's float64 reduction of a float32 tensor converts it whole first (2x its size).
    chunk = 1 << 16
    total = 0.0
    for start in range(0, flat.numel(), chunk):
        total += float(flat[start : start + chunk].sum(dtype=torch.float64))
    return math.isfinite(total)


@dataclasses.dataclass(frozen=True)
class Codec(ABC):
    """Base class of every codec.

    Subclasses set ``name``, ``codec_id`` (unique byte on the wire) and ``summary`` (one line for
    ``fedsqueeze codecs``), declare options as dataclass fields, validate them in ``__post_init__`` by raising
    :class:`~fedsqueeze.ConfigError`, and implement :meth:`encode_flat` and :meth:`decode_flat`.

    The contract is one signature for every codec: :meth:`encode` / :meth:`encode_with_spec` take
    ``reference=None`` and :meth:`decode_body` (what :func:`fedsqueeze.decode` calls) takes ``reference=None``
    and ``models=None``. A plain codec ignores both and implements only the two plain hooks; a codec that
    uses a reference or a trained model overrides :meth:`encode_with_spec` / :meth:`decode_body` to use
    them (the capability flags below say which, for callers that need to know, e.g. to refuse a predictive
    downlink).

    Attributes
    ----------
    rate_option
        Name of the field that sets the target rate in bits per parameter (whole frame included), or ``None``
        when the codec's rate is fixed. Benchmarks use it to compare codecs at equal measured bits.
    stateful
        True when the client-side instance keeps state across rounds (e.g. PowerSGD's warm start); such
        state lives in :attr:`state` and round-trips through :meth:`state_dict`.
    uses_trained_model
        True when the codec encodes and decodes with a trained model (e.g. CG-FedLLM's autoencoder) that a
        run can train before its first round (TGAP pre-training) and hand to the codec. Capability
        information only: every codec's :meth:`decode_body` takes ``models`` (a :data:`ModelSource`, the one
        seam by which a decoder receives a trained model) and the others ignore it.
    uses_reference
        True when the codec predicts the update from a *reference* both ends hold (``predictive``: the
        previous round's global step). Capability information only: every codec's :meth:`encode`,
        :meth:`encode_with_spec` and :meth:`decode_body` take ``reference`` and the others ignore it.
    needs_trained_model
        True when the codec cannot encode at all without such a model (it implies
        ``uses_trained_model``). A codec that uses a model but falls back to a fixed transform without
        one (``cg_fedllm_q``) sets only ``uses_trained_model``.
    trained_by
        Name of the run phase that trains the model (``"tgap"`` for the CG-FedLLM codecs), or ``None``. A
        run with that phase enabled builds it from :func:`fedsqueeze.fl.hooks.register_phase`'s registry
        and hands the trained model to the codec.
    training_variant
        The variant of that phase the codec is trained with when the run says ``auto`` (``"paper"`` for
        the paper's ``cg_fedllm``, ``"sound"`` otherwise).
    """

    name: ClassVar[str]
    codec_id: ClassVar[int]
    summary: ClassVar[str]
    rate_option: ClassVar[str | None] = None
    stateful: ClassVar[bool] = False
    uses_trained_model: ClassVar[bool] = False
    uses_reference: ClassVar[bool] = False
    needs_trained_model: ClassVar[bool] = False
    trained_by: ClassVar[str | None] = None

    @classmethod
    def rate_path(cls, options: Mapping[str, Any]) -> tuple[str, ...] | None:
        """Where a target rate goes in this codec's ``options``: a path of keys, or ``None`` (fixed rate).

        ``(rate_option,)`` for a codec with a rate option. A wrapper whose rate is its inner codec's
        (``predictive``) returns the path into the inner codec's options. Rate sweeps (the study's
        ``rates``) set the rate through it.
        """
        return (cls.rate_option,) if cls.rate_option else None

    training_variant: ClassVar[str] = "sound"

    state: dict[str, Any] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    # -- encoding -----------------------------------------------------------------------------------
    def encode(
        self, update: Mapping[str, torch.Tensor], *, seed: int = 0, reference: Reference | None = None
    ) -> bytes:
        """Encode ``update`` into a framed payload.

        Parameters
        ----------
        update
            Named tensors of one client's update; their order and shapes define the spec.
        seed
            Seed of every random choice (stochastic rounding, masks); stored in the frame header.
        reference
            What a codec that predicts from a reference (``uses_reference``) codes the update against: a
            mapping with the update's names and shapes, or a flat tensor of its length; ``None`` codes against
            zero. Plain codecs ignore it.

        Returns
        -------
        bytes
            The frame; its length is the exact uplink cost.

        Raises
        ------
        UpdateError
            ``update`` is not a mapping of names to tensors, or holds NaN or Inf values.
        """
        spec = UpdateSpec.from_tensors(update)
        return self.encode_with_spec(spec.flatten(update), spec, seed=seed, reference=reference)

    def encode_with_spec(
        self,
        flat: torch.Tensor,
        spec: UpdateSpec,
        *,
        seed: int = 0,
        reference: Reference | None = None,
    ) -> bytes:
        """Encode a flat float32 vector of ``spec`` (skips building the spec from a mapping).

        ``reference`` is ignored here (plain codecs); see :meth:`encode`.
        """
        flat = self._checked_flat(flat, spec)
        body = self.encode_flat(flat, spec, seed=seed)
        return pack_frame(self.codec_id, spec, seed, body)

    @staticmethod
    def _checked_flat(flat: torch.Tensor, spec: UpdateSpec) -> torch.Tensor:
        """``flat`` as a contiguous float32 CPU vector of ``spec``, checked to be finite."""
        if not torch.is_tensor(flat):
            raise UpdateError(f"a flat update is a 1-D torch.Tensor, got {type(flat).__name__}")
        if flat.ndim != 1 or flat.numel() != spec.numel:
            raise ConfigError(f"flat update has shape {tuple(flat.shape)}, the spec needs ({spec.numel},)")
        flat = flat.detach().to("cpu", torch.float32).contiguous()
        if not all_finite(flat):
            raise UpdateError("update contains NaN or Inf; refusing to encode it")
        return flat

    @abstractmethod
    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        """Encode a finite float32 vector of length ``spec.numel`` into a body."""

    # -- decoding -----------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        """Decode a body into a float32 vector of length ``spec.numel``.

        Must raise :class:`~fedsqueeze.PayloadError` for any malformed body and validate every count and
        width against ``spec`` before allocating.
        """

    @classmethod
    def decode_body(
        cls,
        body: bytes,
        spec: UpdateSpec,
        *,
        seed: int,
        reference: Reference | None = None,
        models: ModelSource = None,
    ) -> torch.Tensor:
        """Decode a body with everything the receiver holds: what :func:`fedsqueeze.decode` calls.

        Parameters
        ----------
        body
            The frame's body (the frame without its header).
        spec
            The receiver's spec.
        seed
            The seed from the frame header.
        reference
            The receiver's copy of the reference (codecs with ``uses_reference``); plain codecs ignore it.
        models
            Where a codec with a trained model (``uses_trained_model``) finds it by fingerprint; plain
            codecs ignore it.

        Notes
        -----
        The default ignores ``reference`` and ``models`` and calls :meth:`decode_flat`.
        """
        return cls.decode_flat(body, spec, seed=seed)

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        """Upper bound on a valid body for ``spec``; larger frames are refused before decoding."""
        return 8 * spec.numel + 4096

    # -- budgets --------------------------------------------------------------------------------------
    @staticmethod
    def header_bits() -> int:
        """Bits of the frame header, which every budget includes."""
        return 8 * HEADER_SIZE

    # -- state ----------------------------------------------------------------------------------------
    def fresh(self) -> Codec:
        """A copy with the same options and empty state (one per client)."""
        return dataclasses.replace(self)

    def state_dict(self) -> dict[str, Any]:
        """Client-side state to checkpoint (empty for stateless codecs)."""
        return dict(self.state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state.clear()
        self.state.update(state)

    def options(self) -> dict[str, Any]:
        """The codec's options as a plain dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

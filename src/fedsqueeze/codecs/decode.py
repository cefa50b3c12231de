"""``fedsqueeze.decode``: decode any codec's frame against the receiver's spec."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import PayloadError, UsageError
from ..spec import UpdateSpec
from ..wire.frame import HEADER, HEADER_SIZE, parse_frame
from .base import ModelSource, Reference, all_finite
from .registry import by_id

__all__ = ["decode", "decode_flat"]


def decode_flat(
    blob: bytes,
    spec: UpdateSpec,
    *,
    models: ModelSource = None,
    reference: Reference | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode a frame into a flat float32 vector of ``spec.numel`` values (on ``device``, default the CPU).

    Raises
    ------
    PayloadError
        Malformed, truncated, extended, oversized, corrupted, of another spec, of an unknown codec, or
        decoding to non-finite values; a predictive frame without its reference (or with another one).

    ``models`` and ``reference`` go to every codec's :meth:`~fedsqueeze.codecs.Codec.decode_body`; codecs
    that use neither ignore them (see :func:`decode`).
    """
    _check_spec(spec)
    if isinstance(blob, bytes | bytearray | memoryview) and len(blob) >= HEADER_SIZE:
        codec_id = HEADER.unpack_from(bytes(blob[:HEADER_SIZE]))[2]
        cls = by_id(codec_id)
        if cls is None:
            raise PayloadError(f"unknown codec id {codec_id}")
        limit = cls.max_body_bytes(spec)
    else:
        cls, limit = None, None
    header, body = parse_frame(blob, spec, max_body=limit)
    assert cls is not None
    try:
        flat = cls.decode_body(body, spec, seed=header.seed, reference=reference, models=models)
    except PayloadError:
        raise
    except (ValueError, IndexError, OverflowError, RuntimeError) as exc:
        # Defence in depth: a decoder bug on hostile input still surfaces as PayloadError.
        raise PayloadError(f"{cls.name}: malformed body ({type(exc).__name__}: {exc})") from exc
    if flat.dtype != torch.float32 or flat.shape != (spec.numel,):
        raise PayloadError(
            f"{cls.name} decoded to {flat.dtype} {tuple(flat.shape)}, expected ({spec.numel},)"
        )
    if not all_finite(flat):
        raise PayloadError(f"{cls.name} payload decodes to NaN or Inf")
    return flat if device is None else flat.to(device)


def _check_spec(spec: object) -> None:
    """A one-line error for the common mistake of passing the update itself instead of its spec."""
    if not isinstance(spec, UpdateSpec):
        hint = (
            " (build it with fedsqueeze.UpdateSpec.from_tensors(update))" if isinstance(spec, Mapping) else ""
        )
        raise UsageError(f"decode needs an UpdateSpec as its spec, got {type(spec).__name__}{hint}")


def decode(
    blob: bytes,
    spec: UpdateSpec,
    *,
    models: ModelSource = None,
    reference: Reference | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Decode a frame made by any registered codec into named tensors of ``spec``.

    Parameters
    ----------
    blob
        The payload exactly as received.
    spec
        The receiver's :class:`~fedsqueeze.UpdateSpec`; a payload for another spec is refused.
    models
        Where codecs with a trained model (``uses_trained_model``: CG-FedLLM) find it by the fingerprint in
        the frame: ``{fingerprint_hex: model or path}``, or an object with ``resolve(fingerprint_hex)``.
        ``None`` (default) looks in the process-wide store, which holds every model saved, loaded or used
        in this process. Other codecs ignore it.
    reference
        What a predictive frame (``uses_reference``: :class:`~fedsqueeze.Predictive`) was predicted from:
        the receiver's copy of the reference, as a mapping of ``spec``'s tensors or a flat tensor of its
        length. A predictive frame without it, with one of another spec or with another one than the frame
        names (8-byte hash) is refused with :class:`~fedsqueeze.PayloadError`. Other frames ignore it, so a
        server can pass it for every frame.
    device
        Where the decoded tensors go (e.g. ``"cuda"``); decoding itself runs on the CPU, so the values are
        those of a CPU decode on every device. Default: the CPU.

    Raises
    ------
    PayloadError
        See :func:`decode_flat`.
    UsageError
        ``spec`` is not an :class:`~fedsqueeze.UpdateSpec` (e.g. the update itself).
    """
    _check_spec(spec)
    return spec.unflatten(decode_flat(blob, spec, models=models, reference=reference, device=device))

"""Conversions between fedsqueeze values and Flower records (imports ``flwr``).

Raw bytes (a node's saved state in ``context.state``) travel as ``Array("uint8", (n,), "raw-bytes", data)``
inside an ``ArrayRecord``: Flower keeps the bytes unchanged (content-addressed 5 MiB chunks) and, unlike a
``ConfigRecord``, does not re-deflate them on every access; frames use the same form with their own ``stype``.
Per-client state (error-feedback residual + codec state) is a ``torch.save`` blob of the
:func:`fedsqueeze.fl.checkpoint.pack_state`-ed state dict, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import Array, ArrayRecord

from ..errors import PayloadError
from ..fl.checkpoint import pack_state, unpack_state

__all__ = ["array_bytes", "blob_to_state", "bytes_array", "sha256", "state_to_blob"]

STYPE = "raw-bytes"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bytes_array(data: bytes) -> Array:
    """Raw bytes as a 1-D ``uint8`` Flower Array (the payload itself, no re-encoding)."""
    return Array(dtype="uint8", shape=(len(data),), stype=STYPE, data=bytes(data))


def array_bytes(record: ArrayRecord, key: str, *, stype: str = STYPE, what: str = "reply") -> bytes:
    """The bytes of ``record[key]``; :class:`~fedsqueeze.PayloadError` if missing or not a byte array.

    ``stype`` is the storage type the array must carry (the downlink's frames use their own), ``what`` names
    the record in the error.
    """
    if key not in record:
        raise PayloadError(f"the {what} has no {key!r} array")
    arr = record[key]
    if arr.dtype != "uint8" or arr.stype != stype or tuple(arr.shape) != (len(arr.data),):
        raise PayloadError(f"{key!r} is not a raw uint8 byte array of stype {stype!r} in the {what} "
                           f"(dtype {arr.dtype}, stype {arr.stype})")  # fmt: skip
    return bytes(arr.data)


def state_to_blob(state: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(pack_state(dict(state)), buf)
    return buf.getvalue()


def blob_to_state(blob: bytes) -> dict[str, Any]:
    return unpack_state(torch.load(io.BytesIO(blob), weights_only=True))

"""The frame around every codec body: a fixed 32-byte header, then the body.

Layout (big-endian, see SPEC.md)::

    0   4s  magic  b"FSQZ"
    4   B   version (1)
    5   B   codec id (registry)
    6   H   flags (must be 0 in version 1)
    8   8s  spec digest (UpdateSpec.digest)
    16  Q   seed (uint64)
    24  I   body length in bytes
    28  I   CRC-32 of the body (zlib.crc32)
    32  ... body
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import PayloadError, SpecMismatchError, UsageError
from ..spec import UpdateSpec

__all__ = ["HEADER", "HEADER_SIZE", "MAGIC", "VERSION", "FrameHeader", "pack_frame", "parse_frame"]

MAGIC = b"FSQZ"
VERSION = 1
HEADER = struct.Struct(">4sBBH8sQII")
HEADER_SIZE = HEADER.size  # 32
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class FrameHeader:
    """Parsed frame header."""

    codec_id: int
    seed: int
    body_length: int


def pack_frame(codec_id: int, spec: UpdateSpec, seed: int, body: bytes) -> bytes:
    """Prepend the header to ``body``."""
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"seed must be in [0, 2**64), got {seed}")
    if len(body) >= 2**32:
        raise UsageError("body too large for the frame format")
    head = HEADER.pack(MAGIC, VERSION, codec_id, 0, spec.digest, seed, len(body), zlib.crc32(body))
    return head + body


def parse_frame(blob: bytes, spec: UpdateSpec, max_body: int | None = None) -> tuple[FrameHeader, bytes]:
    """Validate the header and checksum; return the header and a view of the body.

    Raises
    ------
    PayloadError
        Too short, wrong magic/version/flags, a length that disagrees with the blob, a body larger than
        ``max_body``, or a bad CRC.
    SpecMismatchError
        The digest names another spec.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise PayloadError(f"payload must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < HEADER_SIZE:
        raise PayloadError(f"payload of {len(blob)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, codec_id, flags, digest, seed, length, crc = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise PayloadError(f"bad magic {magic!r}: not a fedsqueeze frame")
    if version != VERSION:
        raise PayloadError(f"unsupported frame version {version} (this build reads {VERSION})")
    if flags != 0:
        raise PayloadError(f"unknown frame flags 0x{flags:04x}")
    if digest != spec.digest:
        raise SpecMismatchError(
            f"payload was made for spec {digest.hex()}, the receiver's spec is {spec.digest.hex()} "
            f"({len(spec)} tensors, {spec.numel} values): the sender's tensor names, shapes or their order "
            "differ (both ends must build the spec from the same tensors in the same order)"
        )
    if length != len(blob) - HEADER_SIZE:
        kind = "truncated" if length > len(blob) - HEADER_SIZE else "extended"
        raise PayloadError(
            f"{kind} payload: header says {length} body bytes, {len(blob) - HEADER_SIZE} present"
        )
    if max_body is not None and length > max_body:
        raise PayloadError(
            f"body of {length} bytes exceeds the {max_body}-byte limit for this codec and spec"
        )
    body = blob[HEADER_SIZE:]
    if zlib.crc32(body) != crc:
        raise PayloadError("CRC-32 mismatch: the payload was corrupted")
    return FrameHeader(codec_id=codec_id, seed=seed, body_length=length), body

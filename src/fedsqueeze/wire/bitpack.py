"""Vectorized bit packing: MSB-first fields of fixed or per-element widths.

:class:`BitWriter` collects fields and emits bytes; :class:`BitReader` reads them back and checks every read
against the bytes left *before* allocating, so a hostile length can never cause a large allocation.
"""

from __future__ import annotations

import numpy as np

from ..errors import PayloadError, UsageError

__all__ = ["BitReader", "BitWriter", "pack_uints", "unpack_uints"]


def _container_bytes(w: int) -> int:
    """Smallest of 1, 2, 4, 8 bytes that holds ``w`` bits."""
    return 1 if w <= 8 else 2 if w <= 16 else 4 if w <= 32 else 8


def _to_bit_array(values: np.ndarray, widths: int | np.ndarray) -> np.ndarray:
    """Expand unsigned ints into a uint8 array of bits, MSB first."""
    v = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    if np.isscalar(widths) or np.ndim(widths) == 0:
        w = int(widths)
        if w == 0 or v.size == 0:
            return np.zeros(0, dtype=np.uint8)
        if w < 64 and v.size and int(v.max()) >> w:
            raise UsageError(f"value does not fit in {w} bits")
        # Big-endian bytes of the smallest standard width, unpacked: one byte per bit, no (n, w) uint64 temp.
        nb = _container_bytes(w)
        as_bytes = v.astype(f">u{nb}").view(np.uint8).reshape(-1, nb)
        return np.unpackbits(as_bytes, axis=1)[:, 8 * nb - w :].reshape(-1)
    wa = np.asarray(widths, dtype=np.int64).reshape(-1)
    if wa.shape != v.shape:
        raise UsageError("widths and values differ in length")
    total = int(wa.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint8)
    owner = np.repeat(np.arange(v.size), wa)
    starts = np.cumsum(wa) - wa
    pos = np.arange(total, dtype=np.int64) - starts[owner]
    shift = (wa[owner] - 1 - pos).astype(np.uint64)
    return ((v[owner] >> shift) & np.uint64(1)).astype(np.uint8)


_GROUP_CHUNK = 1 << 17  # groups of 8 values per step of the narrow-width packer (bounds its temporaries)


def _pack_narrow(v: np.ndarray, w: int) -> bytes:
    """MSB-first packing of ``w <= 8``-bit values: 8 values make ``w`` whole bytes (no array of bits)."""
    n = v.size
    groups = -(-n // 8)
    out = np.empty((groups, w), dtype=np.uint8)
    shifts = (np.uint64(w) * np.arange(7, -1, -1, dtype=np.uint64))[None, :]
    for g0 in range(0, groups, _GROUP_CHUNK):
        g1 = min(groups, g0 + _GROUP_CHUNK)
        part = v[8 * g0 : 8 * g1]
        if part.size < 8 * (g1 - g0):  # zero values pad the last group: zero padding bits, as the bit packer
            part = np.concatenate([part, np.zeros(8 * (g1 - g0) - part.size, dtype=np.uint64)])
        acc = np.bitwise_or.reduce(part.reshape(-1, 8) << shifts, axis=1)  # 8 w <= 64 bits per group
        out[g0:g1] = acc.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - w :]
    return out.reshape(-1)[: (n * w + 7) // 8].tobytes()


def _unpack_narrow(buf: np.ndarray, count: int, w: int) -> np.ndarray:
    """Inverse of :func:`_pack_narrow` on ``ceil(count w / 8)`` bytes; uint64 values."""
    groups = -(-count // 8)
    out = np.empty(groups * 8, dtype=np.uint64)
    shifts = (np.uint64(w) * np.arange(7, -1, -1, dtype=np.uint64))[None, :]
    mask = np.uint64((1 << w) - 1)
    for g0 in range(0, groups, _GROUP_CHUNK):
        g1 = min(groups, g0 + _GROUP_CHUNK)
        raw = buf[w * g0 : w * g1]
        words = np.zeros((g1 - g0, 8), dtype=np.uint8)
        if raw.size < w * (g1 - g0):  # the last group may be short
            raw = np.concatenate([raw, np.zeros(w * (g1 - g0) - raw.size, dtype=np.uint8)])
        words[:, 8 - w :] = raw.reshape(-1, w)
        acc = words.view(">u8").astype(np.uint64)  # (groups, 1) big-endian words
        out[8 * g0 : 8 * g1] = ((acc >> shifts) & mask).reshape(-1)
    return out[:count]


def pack_uints(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned ints of a fixed ``width`` (0–64 bits) MSB first, zero-padded to a byte."""
    if 1 <= width <= 8:
        v = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
        if v.size and int(v.max()) >> width:
            raise UsageError(f"value does not fit in {width} bits")
        return _pack_narrow(v, width) if v.size else b""
    return np.packbits(_to_bit_array(values, width)).tobytes()


def unpack_uints(data: bytes, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uints`; raises :class:`PayloadError` when ``data`` is too short.

    Bits after the last value are not checked (see :meth:`BitReader.expect_end` for that).
    """
    if 1 <= width <= 8 and count > 0:
        need = (count * width + 7) // 8
        if need > len(data):
            raise PayloadError(f"truncated payload: field needs {count * width} bits, {8 * len(data)} left")
        return _unpack_narrow(np.frombuffer(data, dtype=np.uint8, count=need), count, width)
    reader = BitReader(data)
    return reader.read_uints(count, width)


class BitWriter:
    """Accumulates bit fields; :meth:`getvalue` returns them packed MSB first."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._nbits = 0

    @property
    def nbits(self) -> int:
        """Bits written so far."""
        return self._nbits

    def write_uint(self, value: int, width: int) -> None:
        """Write one unsigned int in ``width`` bits."""
        if value < 0 or (width < 64 and value >> width):
            raise UsageError(f"{value} does not fit in {width} bits")
        self.write_uints(np.array([value], dtype=np.uint64), width)

    def write_uints(self, values: np.ndarray, width: int | np.ndarray) -> None:
        """Write unsigned ints, each in ``width`` bits (a scalar or one width per value)."""
        bits = _to_bit_array(values, width)
        self._chunks.append(bits)
        self._nbits += bits.size

    def write_bits(self, bits: np.ndarray) -> None:
        """Write a 0/1 array as is."""
        b = np.ascontiguousarray(bits, dtype=np.uint8).reshape(-1)
        self._chunks.append(b)
        self._nbits += b.size

    def write_f32(self, values: np.ndarray | float) -> None:
        """Write float32 values as their IEEE bit patterns (big-endian bit order)."""
        arr = np.asarray(values, dtype=np.float32).reshape(-1)
        self.write_uints(arr.view(np.uint32).astype(np.uint64), 32)

    def write_f16(self, values: np.ndarray | float) -> None:
        arr = np.asarray(values, dtype=np.float16).reshape(-1)
        self.write_uints(arr.view(np.uint16).astype(np.uint64), 16)

    def align(self) -> None:
        """Pad with zero bits to the next byte boundary."""
        pad = (-self._nbits) % 8
        if pad:
            self.write_bits(np.zeros(pad, dtype=np.uint8))

    def getvalue(self) -> bytes:
        if not self._chunks:
            return b""
        return np.packbits(np.concatenate(self._chunks)).tobytes()


class BitReader:
    """Reads MSB-first bit fields from ``data`` with bounds checks before every allocation."""

    def __init__(self, data: bytes) -> None:
        self._buf = np.frombuffer(data, dtype=np.uint8)
        self._total = self._buf.size * 8
        self._pos = 0

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        """Bits not yet read."""
        return self._total - self._pos

    def _take(self, nbits: int, what: str) -> np.ndarray:
        if nbits < 0 or nbits > self.remaining:
            raise PayloadError(f"truncated payload: {what} needs {nbits} bits, {self.remaining} left")
        a, b = self._pos, self._pos + nbits
        chunk = np.unpackbits(self._buf[a // 8 : (b + 7) // 8])
        self._pos = b
        return chunk[a % 8 : a % 8 + nbits]

    def read_uints(self, count: int, width: int | np.ndarray, what: str = "field") -> np.ndarray:
        """Read ``count`` unsigned ints of ``width`` bits each (scalar or per-value array)."""
        if np.ndim(width) == 0:
            w = int(width)
            if count < 0 or w < 0 or w > 64:
                raise PayloadError(f"invalid {what}: count {count}, width {w}")
            if w == 0 or count == 0:
                return np.zeros(count, dtype=np.uint64)
            bits = self._take(count * w, what).reshape(count, w)
            nb = _container_bytes(w)
            if w == 8 * nb:
                padded = bits
            else:  # right-align each value's bits in a standard-width container, then pack
                padded = np.zeros((count, 8 * nb), dtype=np.uint8)
                padded[:, 8 * nb - w :] = bits
            return np.packbits(padded, axis=1).reshape(-1).view(f">u{nb}").astype(np.uint64)
        wa = np.asarray(width, dtype=np.int64).reshape(-1)
        if wa.size != count or (wa.size and (wa.min() < 0 or wa.max() > 64)):
            raise PayloadError(f"invalid {what}: widths out of range")
        total = int(wa.sum())
        bits = self._take(total, what).astype(np.uint64)
        if count == 0:
            return np.zeros(0, dtype=np.uint64)
        owner = np.repeat(np.arange(count), wa)
        ends = np.cumsum(wa)
        pos = np.arange(total, dtype=np.int64)
        shift = (ends[owner] - 1 - pos).astype(np.uint64)
        out = np.zeros(count, dtype=np.uint64)
        np.add.at(out, owner, bits << shift)
        return out

    def read_uint(self, width: int, what: str = "field") -> int:
        return int(self.read_uints(1, width, what)[0])

    def read_bits(self, nbits: int, what: str = "bits") -> np.ndarray:
        return self._take(nbits, what).copy()

    def read_f32(self, count: int, what: str = "float32") -> np.ndarray:
        return self.read_uints(count, 32, what).astype(np.uint32).view(np.float32)

    def read_f16(self, count: int, what: str = "float16") -> np.ndarray:
        return self.read_uints(count, 16, what).astype(np.uint16).view(np.float16)

    def align(self) -> None:
        """Skip to the next byte boundary; padding bits must be zero (one canonical encoding per payload)."""
        pad = (-self._pos) % 8  # <= remaining: the buffer is whole bytes
        if pad and self._take(pad, "padding").any():
            raise PayloadError("non-zero padding bits")

    def expect_end(self) -> None:
        """Raise unless at most 7 zero padding bits are left."""
        if self.remaining >= 8:
            raise PayloadError(f"payload has {self.remaining // 8} trailing bytes")
        if self.remaining and self._take(self.remaining, "padding").any():
            raise PayloadError("non-zero padding bits at the end of the payload")

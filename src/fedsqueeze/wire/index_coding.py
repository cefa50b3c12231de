"""Position coding for sorted, unique indices in ``[0, d)``.

Two coders, both vectorized:

* ``fixed``: every index in ``ceil(log2 d)`` bits (the papers' accounting for vanilla TopK).
* ``elias_fano``: ``l = floor(log2(d / k))`` low bits per index plus a unary-coded high part,
  exactly ``k * l + k + ((d - 1) >> l) + 1`` bits, at most ``k * (l + 3)`` (about ``k * (l + 2)`` when
  ``d / k`` is a power of two), within about 0.6 bit per index of the entropy ``log2 C(d, k)``.

The count ``k`` is not written here; the caller writes it (codecs know their own header layout).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, PayloadError
from .bitpack import BitReader, BitWriter

__all__ = [
    "INDEX_CODERS",
    "elias_fano_bits",
    "fixed_width",
    "read_indices",
    "write_indices",
]

INDEX_CODERS = ("fixed", "elias_fano")


def fixed_width(d: int) -> int:
    """Bits of one index in ``[0, d)`` with fixed-width coding (``ceil(log2 d)``, at least 1)."""
    return max(1, math.ceil(math.log2(d))) if d > 1 else 1


def _ef_low_bits(d: int, k: int) -> int:
    if k <= 0 or d <= k:
        return 0
    return max(0, math.floor(math.log2(d / k)))


def elias_fano_bits(d: int, k: int) -> int:
    """Exact size in bits of the Elias–Fano code of ``k`` indices in ``[0, d)``."""
    if k == 0:
        return 0
    low = _ef_low_bits(d, k)
    return k * low + k + ((d - 1) >> low) + 1


def index_bits(coder: str, d: int, k: int) -> int:
    """Exact bits spent on ``k`` indices by ``coder``."""
    if coder == "fixed":
        return k * fixed_width(d)
    if coder == "elias_fano":
        return elias_fano_bits(d, k)
    raise ConfigError(f"unknown index coder {coder!r}; choose one of {INDEX_CODERS}")


def write_indices(w: BitWriter, idx: np.ndarray, d: int, coder: str) -> None:
    """Write sorted unique indices (``int64``) with ``coder``."""
    idx = np.asarray(idx, dtype=np.int64)
    k = idx.size
    if coder == "fixed":
        w.write_uints(idx.astype(np.uint64), fixed_width(d))
        return
    if coder != "elias_fano":
        raise ConfigError(f"unknown index coder {coder!r}; choose one of {INDEX_CODERS}")
    if k == 0:
        return
    low = _ef_low_bits(d, k)
    if low:
        w.write_uints((idx & ((1 << low) - 1)).astype(np.uint64), low)
    high = idx >> low
    upper = np.zeros(k + ((d - 1) >> low) + 1, dtype=np.uint8)
    upper[high + np.arange(k)] = 1
    w.write_bits(upper)


def read_indices(r: BitReader, k: int, d: int, coder: str) -> np.ndarray:
    """Read ``k`` indices written by :func:`write_indices`; validates range and strict order."""
    if k < 0 or k > d:
        raise PayloadError(f"index count {k} outside [0, {d}]")
    if coder == "fixed":
        idx = r.read_uints(k, fixed_width(d), "indices").astype(np.int64)
    elif coder == "elias_fano":
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        low = _ef_low_bits(d, k)
        lows = r.read_uints(k, low, "index low bits").astype(np.int64)
        upper = r.read_bits(k + ((d - 1) >> low) + 1, "index high bits")
        ones = np.flatnonzero(upper)
        if ones.size != k:
            raise PayloadError(f"Elias–Fano high part has {ones.size} ones, expected {k}")
        idx = ((ones - np.arange(k)) << low) | lows
    else:
        raise PayloadError(f"unknown index coder {coder!r}")
    if k and (idx[-1] >= d or idx[0] < 0 or (k > 1 and np.any(np.diff(idx) <= 0))):
        raise PayloadError("indices out of range or not strictly increasing")
    return idx

"""Parts shared by the blockwise codecs: the 4-bit level tables, the block layout and the bin tables.

Not a codec module (leading underscore). The tables are the 16-entry code books of bitsandbytes' 4-bit types,
indexed by the 4-bit code: NF4 from the QLoRA paper (Dettmers et al. 2023, arXiv:2305.14314), FP4 the e2m1
values ``{0, 0.0625, 2, 3, 4, 6, 8, 12}`` with a sign bit, divided by 12, in bitsandbytes' code order.

Speed without changing a byte
-----------------------------
The codes are *defined* by float64 arithmetic on ``r = fl64(v / absmax)`` (the ``exact`` quantizers below).
The fast path never evaluates it for most values: it computes ``t = fl32(fl32(v · s) + 32768.5)`` with the
per-block float32 factor ``s = fl32(K / absmax)`` and looks the code up in a 65,537-entry table indexed by
``⌊t⌋`` (:func:`bin_table`). ``t`` is within 0.008 of the exact ``K · v / absmax + 32768.5`` (two float32
roundings of a value ≤ 32768 in magnitude, one of a value < 2^17), and a bin's entry is the exact code only
when that code is the same over the whole bin widened by :data:`MARGIN` = 0.02 on both sides (the exact
codes are monotone in ``r``, so equal codes at both ends mean one code throughout). Every other bin holds a
marker, and its values are re-quantized with the exact float64 formula afterwards. So the table answer and
the exact answer agree for every value, not only on average.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ...spec import UpdateSpec

__all__ = [
    "BIN_OFFSET",
    "CHUNK",
    "FP4_CODES",
    "MARGIN",
    "MAX_BLOCK",
    "NF4_CODES",
    "TINY_SCALE",
    "Layout",
    "LevelTable",
    "bin_table",
    "layout",
    "num_blocks",
]

# Largest block option; a body claiming more is refused.
MAX_BLOCK = 2**24

# Values per piece of the chunked loops: a piece's float32 and int32 scratch stay in the L2 cache.
CHUNK = 1 << 15

# ``t = v · s + BIN_OFFSET`` maps ``r ∈ [-1, 1]`` to ``[0.5, 65536.5]`` (``K = 32768``); exact in float32.
BIN_OFFSET = 32768.5
NUM_BINS = 65537
# Widening of every bin on both sides when its code is decided (4× the estimate's worst error, 0.008).
MARGIN = 0.02
# Blocks with 0 < absmax below this would overflow ``s`` in float32: they take the exact path whole.
TINY_SCALE = 2.0**-96

# Code c decodes to NF4_CODES[c] * absmax (ascending: code 0 is -1, code 7 is 0, code 15 is +1).
NF4_CODES = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)

# bitsandbytes' FP4: bit 3 is the sign, bits 2..0 the e2m1 magnitude code; normalised by the largest (12) in
# float32 as bitsandbytes does. Code 8 (-0) duplicates code 0: the encoder never writes it.
FP4_CODES = np.array(
    [0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=np.float32
) / np.float32(12)


class LevelTable:
    """Nearest-level quantization onto a 16-entry code book of values in ``[-1, 1]``.

    :meth:`encode` maps normalised float64 values to the code of the nearest level (ties go to the lower
    level, as bitsandbytes' decision trees do); a level that several codes share is written as its smallest
    code, and the others (``invalid``) are refused by the decoder. ``pairs`` is the decoder's table: the
    float32 levels of the two codes in a byte, high nibble first.
    """

    def __init__(self, codes: np.ndarray) -> None:
        distinct = sorted({float(v) for v in codes})  # -0.0 and 0.0 are one level
        canonical = [min(c for c in range(codes.size) if float(codes[c]) == v) for v in distinct]
        lv = np.array(distinct, dtype=np.float64)
        self.midpoints = (lv[1:] + lv[:-1]) / 2  # exact in float64: the levels are float32
        self.code_of_rank = np.array(canonical, dtype=np.uint8)
        self.invalid = tuple(c for c in range(codes.size) if c not in canonical)
        levels = codes.astype(np.float32)
        byte = np.arange(256)
        self.pairs = np.stack([levels[byte >> 4], levels[byte & 15]], axis=1)  # (256, 2) float32

    def encode(self, r: np.ndarray) -> np.ndarray:
        """uint8 codes of float64 values ``r`` in ``[-1, 1]`` (the definition the fast path reproduces).

        The rank is the number of midpoints strictly below ``r`` (``torch.bucketize``'s default side).
        """
        return self.code_of_rank[np.searchsorted(self.midpoints, r, side="left")]


def num_blocks(spec: UpdateSpec, block: int) -> int:
    """``Σ ⌈n_t / block⌉`` over the spec's tensors: blocks restart at every tensor."""
    return sum(-(-n // block) for n in spec.sizes)


class Layout(NamedTuple):
    """Where the blocks of a spec lie in the flat vector.

    ``starts``, ``rows``, ``lengths``, ``firsts``: the runs of equal-length blocks in flat order (first
    value, blocks, block length, index of the first block; consecutive tensors whose sizes are multiples of
    the block form one run, a tensor's short last block is a run of its own). ``pieces``: the same values
    cut into ``(first value, rows, row length, first block, whole)`` pieces of at most :data:`CHUNK` values
    each; a block longer than that is cut into several pieces with ``whole`` false (its absmax is taken
    first).
    """

    starts: np.ndarray
    rows: np.ndarray
    lengths: np.ndarray
    firsts: np.ndarray
    pieces: tuple[tuple[int, int, int, int, bool], ...]

    def block_of(self, index: np.ndarray) -> np.ndarray:
        """Index of the block that holds each flat position in ``index`` (int64)."""
        run = np.searchsorted(self.starts, index, side="right") - 1
        return self.firsts[run] + (index - self.starts[run]) // self.lengths[run]

    def block_lengths(self) -> np.ndarray:
        """int64 length of every block in flat order."""
        return np.repeat(self.lengths, self.rows)


@functools.lru_cache(maxsize=32)
def layout(sizes: tuple[int, ...], block: int) -> Layout:
    """The :class:`Layout` of tensors of ``sizes`` values cut into blocks of ``block``."""
    runs: list[list[int]] = []  # [first value, rows, row length, first block]
    v = b = 0
    for n in sizes:
        full, tail = divmod(n, block)
        if full:
            last = runs[-1] if runs else None
            if last is not None and last[2] == block and last[0] + last[1] * block == v:
                last[1] += full
            else:
                runs.append([v, full, block, b])
        if tail:
            runs.append([v + full * block, 1, tail, b + full])
        v += n
        b += full + (tail > 0)
    pieces: list[tuple[int, int, int, int, bool]] = []
    for v0, rows, length, b0 in runs:
        if length > CHUNK:
            for row in range(rows):
                for c in range(0, length, CHUNK):
                    pieces.append((v0 + row * length + c, 1, min(CHUNK, length - c), b0 + row, False))
        else:
            step = max(1, CHUNK // length)
            for row in range(0, rows, step):
                pieces.append((v0 + row * length, min(step, rows - row), length, b0 + row, True))
    cols = np.array(runs, dtype=np.int64).reshape(-1, 4).T
    return Layout(cols[0], cols[1], cols[2], cols[3], tuple(pieces))


def bin_table(exact: Callable[[np.ndarray], np.ndarray], scale: float, mark: int) -> np.ndarray:
    """The code of every bin ``⌊t⌋`` of ``t = r · scale + BIN_OFFSET``, or ``mark`` where it is not one code.

    ``exact`` maps float64 ``r`` in ``[-1, 1]`` to uint8 codes and must be monotone in ``r`` up to a
    relabelling of the codes (equal codes at two points imply the same code between them).
    """
    k = np.arange(NUM_BINS, dtype=np.float64)

    def codes_at(t: np.ndarray) -> np.ndarray:
        r = np.clip((t - BIN_OFFSET) / scale, -1.0, 1.0)
        return exact(r)

    lo, mid, hi = codes_at(k - MARGIN), codes_at(k + 0.5), codes_at(k + 1 + MARGIN)
    return np.where(lo == hi, mid, mark).astype(np.uint8)

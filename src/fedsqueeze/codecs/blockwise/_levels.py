"""Parts shared by the blockwise codecs: the 4-bit level tables and the per-tensor block layout.

Not a codec module (leading underscore). The tables are the 16-entry code books of bitsandbytes' 4-bit types,
indexed by the 4-bit code: NF4 from the QLoRA paper (Dettmers et al. 2023, arXiv:2305.14314), FP4 the e2m1
values ``{0, 0.0625, 2, 3, 4, 6, 8, 12}`` with a sign bit, divided by 12, in bitsandbytes' code order.
"""

from __future__ import annotations

import numpy as np
import torch

from ...spec import UpdateSpec

__all__ = ["FP4_CODES", "MAX_BLOCK", "NF4_CODES", "LevelTable", "block_lengths", "num_blocks"]

# Largest block option; a body claiming more is refused.
MAX_BLOCK = 2**24

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

    ``encode`` maps normalised values to the code of the nearest level (ties go to the lower level, as
    bitsandbytes' decision trees do); a level that several codes share is written as its smallest code and
    the others are refused by :meth:`valid`. ``decode`` maps codes back to the float32 levels (as float64).
    """

    def __init__(self, codes: np.ndarray) -> None:
        self.values = torch.from_numpy(codes.astype(np.float64))
        distinct = sorted({float(v) for v in codes})  # -0.0 and 0.0 are one level
        canonical = [min(c for c in range(codes.size) if float(codes[c]) == v) for v in distinct]
        lv = torch.tensor(distinct, dtype=torch.float64)
        self.midpoints = (lv[1:] + lv[:-1]) / 2  # exact in float64: the levels are float32
        self.code_of_rank = torch.tensor(canonical, dtype=torch.uint8)
        self.canonical = torch.zeros(codes.size, dtype=torch.bool)
        self.canonical[self.code_of_rank.long()] = True

    def encode(self, r: torch.Tensor) -> torch.Tensor:
        """uint8 codes of float64 values ``r`` in ``[-1, 1]``."""
        return self.code_of_rank[torch.bucketize(r, self.midpoints)]

    def valid(self, codes: torch.Tensor) -> bool:
        """True when every code (int64) is one the encoder writes."""
        return bool(self.canonical[codes].all())

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """float64 levels of int64 codes."""
        return self.values[codes]


def num_blocks(spec: UpdateSpec, block: int) -> int:
    """``Σ ⌈n_t / block⌉`` over the spec's tensors: blocks restart at every tensor."""
    return sum(-(-n // block) for n in spec.sizes)


def block_lengths(spec: UpdateSpec, block: int) -> torch.Tensor:
    """int64 length of every block in flat order: ``block``, except the last block of each tensor."""
    sizes = torch.tensor(spec.sizes, dtype=torch.int64)
    counts = (sizes + block - 1) // block
    lengths = torch.full((int(counts.sum()),), block, dtype=torch.int64)
    has = counts > 0
    last = torch.cumsum(counts, 0)[has] - 1
    lengths[last] = sizes[has] - (counts[has] - 1) * block
    return lengths

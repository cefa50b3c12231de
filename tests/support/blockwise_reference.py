"""The first (slow, obviously correct) implementation of blockwise8, nf4 and fp4 bodies, kept as a reference.

The codecs in :mod:`fedsqueeze.codecs.blockwise` were rewritten for speed (byte-aligned fields written
directly, float32 arithmetic with exact fix-ups); their bodies must stay byte-identical to what this code
writes, and they must decode every body this code accepts to the same values. This is the earlier code, in
float64 through the generic bit packer, unchanged except that it is written as functions.
"""

from __future__ import annotations

import numpy as np
import torch

from fedsqueeze.codecs.blockwise._levels import FP4_CODES, NF4_CODES
from fedsqueeze.errors import PayloadError
from fedsqueeze.spec import UpdateSpec
from fedsqueeze.wire.bitpack import BitReader, BitWriter

__all__ = ["BITS", "decode_body", "encode_body"]

BITS = {"blockwise8": 8, "nf4": 4, "fp4": 4}
MAX_BLOCK = 2**24


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


class _LevelTable:
    """Nearest-level quantization onto a 16-entry code book (ties to the lower level), in float64."""

    def __init__(self, codes: np.ndarray) -> None:
        self.values = torch.from_numpy(codes.astype(np.float64))
        distinct = sorted({float(v) for v in codes})
        canonical = [min(c for c in range(codes.size) if float(codes[c]) == v) for v in distinct]
        lv = torch.tensor(distinct, dtype=torch.float64)
        self.midpoints = (lv[1:] + lv[:-1]) / 2
        self.code_of_rank = torch.tensor(canonical, dtype=torch.uint8)
        self.canonical = torch.zeros(codes.size, dtype=torch.bool)
        self.canonical[self.code_of_rank.long()] = True


_TABLES = {"nf4": _LevelTable(NF4_CODES), "fp4": _LevelTable(FP4_CODES)}


def _codes(name: str, r: torch.Tensor) -> torch.Tensor:
    if name == "blockwise8":
        q = torch.sign(r) * torch.floor(r.abs() * 127 + 0.5)
        return q.to(torch.int8).view(torch.uint8)
    t = _TABLES[name]
    return t.code_of_rank[torch.bucketize(r, t.midpoints)]


def _values(name: str, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if name == "blockwise8":
        q = torch.where(codes >= 128, codes - 256, codes)
        if bool((q == -128).any()):
            raise PayloadError(f"{name}: code -128 is outside the levels -127..127")
        return q.double() * scale / 127
    t = _TABLES[name]
    if not bool(t.canonical[codes].all()):
        raise PayloadError(f"{name}: a code the encoder never writes")
    return t.values[codes] * scale


def _body_bits(name: str, spec: UpdateSpec, block: int) -> int:
    return 32 + 32 * num_blocks(spec, block) + BITS[name] * spec.numel


def encode_body(name: str, flat: torch.Tensor, spec: UpdateSpec, block: int) -> bytes:
    """The body the first implementation wrote for the finite float32 vector ``flat``."""
    lengths = block_lengths(spec, block)
    owner = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    absmax = torch.zeros(lengths.numel(), dtype=torch.float32)
    absmax.scatter_reduce_(0, owner, flat.abs(), reduce="amax")
    r = flat.double() / absmax.double().clamp_min(1e-300)[owner]
    w = BitWriter()
    w.write_uint(block, 32)
    w.write_f32(absmax.numpy())
    w.write_uints(_codes(name, r).numpy(), BITS[name])
    return w.getvalue()


def decode_body(name: str, body: bytes, spec: UpdateSpec) -> torch.Tensor:
    """The first implementation's decoding of ``body`` (float32), or its PayloadError."""
    r = BitReader(body)
    block = r.read_uint(32, "block")
    if not 1 <= block <= MAX_BLOCK:
        raise PayloadError(f"{name}: block {block} is outside 1..{MAX_BLOCK}")
    want = (_body_bits(name, spec, block) + 7) // 8
    if len(body) != want:
        raise PayloadError(f"{name}: body has {len(body)} bytes, block {block} implies {want}")
    with np.errstate(invalid="ignore"):
        scales = r.read_f32(num_blocks(spec, block), "scales").astype(np.float64)
    if not (np.all(np.isfinite(scales)) and np.all(scales >= 0)):
        raise PayloadError(f"{name}: block scales must be finite and non-negative")
    codes = torch.from_numpy(r.read_uints(spec.numel, BITS[name], "codes").astype(np.int64))
    r.expect_end()
    scale = torch.repeat_interleave(torch.from_numpy(scales), block_lengths(spec, block))
    return _values(name, codes, scale).to(torch.float32)

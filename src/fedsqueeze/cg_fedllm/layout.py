"""The factor-stack layout: every LoRA factor of an update as a column block of one 2-D "image".

CG-FedLLM (``docs/cg-fedllm.md``, "The factor-stack layout") stacks the factors of all layers into a single
``[1, H, W]`` image: each module contributes ``Aᵀ`` (``d_in × r``) and ``B`` (``d_out × r``) as ``r``-column
blocks along the width. Here every tensor is viewed as 2-D (``shape[0] × rest``), turned so that its long side
runs along the height, and placed at the top of its own column block; ``H`` and ``W`` are rounded up to a
multiple of ``2**depth`` and the rest is zero padding, so any hidden size works (MiniLM 384, SmolLM2 576 with
192-row ``v_proj`` B blocks). Blocks are ordered by a natural sort of the tensor names (``layer.2`` before
``layer.10``), so the layout does not depend on the order of a spec's entries.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..spec import UpdateSpec

__all__ = ["FactorLayout", "natural_key"]


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key treating digit runs as numbers (``layer.2`` < ``layer.10``)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


@dataclass(frozen=True)
class _Block:
    index: int  # position of the tensor in the spec
    rows: int
    cols: int
    col0: int  # first column in the image
    transpose: bool  # the 2-D view (shape[0], rest) is transposed before placing


@dataclass(frozen=True)
class FactorLayout:
    """Where each tensor of ``spec`` sits in the ``[H, W]`` image.

    Build it with :meth:`from_spec`; ``height`` and ``width`` are multiples of ``multiple``.
    """

    spec: UpdateSpec
    multiple: int
    height: int
    width: int
    blocks: tuple[_Block, ...]

    @classmethod
    def from_spec(cls, spec: UpdateSpec, multiple: int = 64) -> FactorLayout:
        """Lay out ``spec`` (see the module docstring); ``multiple`` is ``2**depth`` of the autoencoder."""
        if multiple < 1:
            raise ConfigError(f"layout multiple must be >= 1, got {multiple}")
        if spec.numel == 0:
            raise ConfigError("cg_fedllm needs a non-empty update spec")
        dims = []
        for i, (_name, shape) in enumerate(spec.entries):
            a = shape[0] if shape else 1
            b = math.prod(shape[1:]) if len(shape) > 1 else 1
            dims.append((i, max(a, b), min(a, b), b > a))
        height = _round_up(max(rows for _, rows, _, _ in dims), multiple)
        blocks, col = [], 0
        order = sorted(range(len(dims)), key=lambda i: natural_key(spec.entries[i][0]))
        for i in order:
            _, rows, cols, transpose = dims[i]
            if rows * cols == 0:
                continue
            blocks.append(_Block(i, rows, cols, col, transpose))
            col += cols
        width = _round_up(max(col, 1), multiple)
        return cls(spec, multiple, height, width, tuple(blocks))

    @property
    def image_numel(self) -> int:
        return self.height * self.width

    def mask(self) -> torch.Tensor:
        """``[H, W]`` float mask: 1 where a real parameter sits, 0 on padding."""
        m = torch.zeros(self.height, self.width)
        for blk in self.blocks:
            m[: blk.rows, blk.col0 : blk.col0 + blk.cols] = 1.0
        return m

    def to_images(self, flats: torch.Tensor) -> torch.Tensor:
        """``(N, d)`` (or ``(d,)``) flat updates to ``(N, 1, H, W)`` images (zero padded)."""
        flats = flats.reshape(-1, self.spec.numel)
        out = torch.zeros(flats.shape[0], 1, self.height, self.width, dtype=flats.dtype)
        offs = self.spec.offsets
        for blk in self.blocks:
            seg = flats[:, offs[blk.index] : offs[blk.index + 1]]
            if blk.transpose:  # stored (cols, rows): the long side is the second axis
                seg = seg.reshape(-1, blk.cols, blk.rows).transpose(1, 2)
            else:
                seg = seg.reshape(-1, blk.rows, blk.cols)
            out[:, 0, : blk.rows, blk.col0 : blk.col0 + blk.cols] = seg
        return out

    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_images`: ``(N, 1, H, W)`` to ``(N, d)`` (padding dropped)."""
        images = images.reshape(-1, self.height, self.width)
        out = torch.zeros(images.shape[0], self.spec.numel, dtype=images.dtype)
        offs = self.spec.offsets
        for blk in self.blocks:
            seg = images[:, : blk.rows, blk.col0 : blk.col0 + blk.cols]
            if blk.transpose:
                seg = seg.transpose(1, 2)
            out[:, offs[blk.index] : offs[blk.index + 1]] = seg.reshape(images.shape[0], -1)
        return out


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m

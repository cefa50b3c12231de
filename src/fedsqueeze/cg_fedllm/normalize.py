"""Input normalisation of the autoencoder, with the scales sent as side information.

``none``
    The paper's setting (no normalisation is stated): the autoencoder sees the raw values.
``global_rms``
    One fp32 scale per update: its RMS.
``tensor_rms``
    One fp32 scale per tensor (the "sound" variant's per-tensor normalisation).

A zero scale (an all-zero tensor) divides by one, so a zero block stays zero and decodes to zero.
"""

from __future__ import annotations

import itertools

import torch

from ..errors import ConfigError
from ..spec import UpdateSpec

__all__ = ["MODES", "compute_scales", "normalize", "num_scales"]

MODES = ("none", "global_rms", "tensor_rms")


def num_scales(spec: UpdateSpec, mode: str) -> int:
    """How many fp32 scales travel with each update."""
    if mode == "none":
        return 0
    if mode == "global_rms":
        return 1
    if mode == "tensor_rms":
        return len(spec.entries)
    raise ConfigError(f"normalize must be one of {', '.join(MODES)}, got {mode!r}")


def compute_scales(flats: torch.Tensor, spec: UpdateSpec, mode: str) -> torch.Tensor:
    """``(N, num_scales)`` float32 RMS scales of ``(N, d)`` updates."""
    flats = flats.reshape(-1, spec.numel).to(torch.float64)
    k = num_scales(spec, mode)
    if k == 0:
        return torch.zeros(flats.shape[0], 0)
    if mode == "global_rms":
        return flats.pow(2).mean(dim=1, keepdim=True).sqrt().to(torch.float32)
    offs = spec.offsets
    cols = [
        flats[:, a:b].pow(2).mean(dim=1).sqrt() if b > a else torch.zeros(flats.shape[0], dtype=torch.float64)
        for a, b in itertools.pairwise(offs)
    ]
    return torch.stack(cols, dim=1).to(torch.float32)


def _per_element(scales: torch.Tensor, spec: UpdateSpec, mode: str) -> torch.Tensor:
    if mode == "global_rms":
        return scales[:, :1].expand(-1, spec.numel)
    sizes = torch.tensor(spec.sizes, dtype=torch.long)
    return torch.repeat_interleave(scales, sizes, dim=1)


def normalize(
    flats: torch.Tensor, scales: torch.Tensor, spec: UpdateSpec, mode: str, *, inverse: bool = False
) -> torch.Tensor:
    """Divide ``(N, d)`` updates by their scales (or multiply back with ``inverse=True``)."""
    flats = flats.reshape(-1, spec.numel)
    if mode == "none":
        return flats
    s = _per_element(scales.to(flats.dtype), spec, mode)
    if inverse:
        return flats * s
    return flats / torch.where(s > 0, s, torch.ones_like(s))

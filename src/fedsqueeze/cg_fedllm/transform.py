"""Update ↔ latent through an autoencoder: normalise, lay out, encode; decode, un-layout, de-normalise.

Shared by the ``cg_fedllm`` and ``cg_fedllm_q`` codecs, TGAP and the evaluation script.
"""

from __future__ import annotations

import torch

from ..spec import UpdateSpec
from .autoencoder import CGAutoEncoder
from .layout import FactorLayout
from .normalize import compute_scales, normalize

__all__ = ["analyse", "layout_for", "prepare_images", "synthesise"]


def layout_for(model: CGAutoEncoder, spec: UpdateSpec) -> FactorLayout:
    return FactorLayout.from_spec(spec, model.config.multiple)


def prepare_images(
    flats: torch.Tensor, spec: UpdateSpec, model_or_mode: CGAutoEncoder | str, multiple: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, FactorLayout]:
    """``(N, d)`` updates → normalised ``(N, 1, H, W)`` float32 images, ``(N, k)`` scales, the layout."""
    if isinstance(model_or_mode, CGAutoEncoder):
        mode, multiple = model_or_mode.config.normalize, model_or_mode.config.multiple
    else:
        mode = model_or_mode
    flats = flats.reshape(-1, spec.numel).to(torch.float32)
    scales = compute_scales(flats, spec, mode)
    lay = FactorLayout.from_spec(spec, multiple or 64)
    return lay.to_images(normalize(flats, scales, spec, mode)), scales, lay


@torch.no_grad()
def analyse(model: CGAutoEncoder, flat: torch.Tensor, spec: UpdateSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """One update ``(d,)`` → latent ``(C, h, w)`` and scales ``(k,)`` (float32)."""
    model.eval()
    images, scales, _ = prepare_images(flat, spec, model)
    return model.encode(images)[0].contiguous(), scales[0]


@torch.no_grad()
def synthesise(
    model: CGAutoEncoder, latent: torch.Tensor, scales: torch.Tensor, spec: UpdateSpec
) -> torch.Tensor:
    """Latent ``(C, h, w)`` and scales ``(k,)`` → update ``(d,)`` float32 (the server's reconstruction)."""
    model.eval()
    lay = layout_for(model, spec)
    img = model.decode(latent.to(torch.float32).unsqueeze(0))
    flat = lay.from_images(img)
    return normalize(flat, scales.reshape(1, -1), spec, model.config.normalize, inverse=True)[0].contiguous()


# -- the untrained fallback of cg_fedllm_q ---------------------------------------------------------------
BLOCK = 8  # 8×8 block means: a fixed 1/64 linear dimension reducer, the same ratio as the paper's latent


def blockmean_analyse(flat: torch.Tensor, spec: UpdateSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Untrained transform: per-tensor RMS normalisation, then orthonormal 8×8 block means of the stack.

    Returns a ``(1, H/8, W/8)`` latent and the ``(len(spec),)`` scales.
    """
    images, scales, _ = prepare_images(flat, spec, "tensor_rms", BLOCK)
    z = torch.nn.functional.avg_pool2d(images, BLOCK) * BLOCK  # orthonormal: sum / 8
    return z[0].contiguous(), scales[0]


def blockmean_synthesise(latent: torch.Tensor, scales: torch.Tensor, spec: UpdateSpec) -> torch.Tensor:
    """Inverse (least-squares) of :func:`blockmean_analyse`: spread each block mean over its block."""
    lay = FactorLayout.from_spec(spec, BLOCK)
    img = latent.to(torch.float32).unsqueeze(0).repeat_interleave(BLOCK, -2).repeat_interleave(BLOCK, -1)
    flat = lay.from_images(img / BLOCK)
    return normalize(flat, scales.reshape(1, -1), spec, "tensor_rms", inverse=True)[0].contiguous()


def blockmean_latent_shape(spec: UpdateSpec) -> tuple[int, int, int]:
    lay = FactorLayout.from_spec(spec, BLOCK)
    return (1, lay.height // BLOCK, lay.width // BLOCK)

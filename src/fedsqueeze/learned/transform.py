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
    """``(N, d)`` updates → normalised ``(N, 1, H, W)`` float32 images, their ``(N, k)`` scales, the layout."""
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

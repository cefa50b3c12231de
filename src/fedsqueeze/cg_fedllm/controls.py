"""The mandatory controls of a learned codec (``docs/cg-fedllm.md``) and the metrics they use.

An input-independent decoder (the independent reproduction's finding) is exposed by comparing the codec with
predictors that never look at the client's update: predicting zero, predicting the TGAP training mean, and
the input-shuffle ("shift") control that scores client j's reconstruction against client i's update. The
identity codec must be bitwise lossless.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..codecs import decode_flat, get
from ..spec import UpdateSpec

__all__ = [
    "factor_masks",
    "identity_is_exact",
    "score",
    "shuffle_control",
    "train_mean_predictor",
    "zero_predictor",
]


def score(targets: torch.Tensor, preds: torch.Tensor, spec: UpdateSpec | None = None) -> dict[str, float]:
    """Distortion of ``(N, d)`` predictions.

    Returns ``rel_error`` (Σ‖u−û‖² / Σ‖u‖² over the set), ``mean_rel_error`` (per snapshot, averaged),
    ``cosine`` (mean per-snapshot cosine; 0 for a zero prediction) and, with ``spec``, the pooled
    ``rel_error_A`` / ``rel_error_B`` over the ``lora_A`` / ``lora_B`` tensors.
    """
    t, p = targets.to(torch.float64), preds.to(torch.float64)
    err = (t - p).pow(2).sum(dim=1)
    energy = t.pow(2).sum(dim=1)
    norms = t.norm(dim=1) * p.norm(dim=1)
    cos = torch.where(norms > 0, (t * p).sum(dim=1) / torch.where(norms > 0, norms, 1.0), 0.0)
    out = {
        "rel_error": float(err.sum() / energy.sum()),
        "mean_rel_error": float((err / energy.clamp_min(1e-300)).mean()),
        "cosine": float(cos.mean()),
    }
    if spec is not None:
        for factor, mask in factor_masks(spec).items():
            if bool(mask.any()):
                e = float(t[:, mask].pow(2).sum())
                out[f"rel_error_{factor}"] = float((t - p)[:, mask].pow(2).sum()) / e if e > 0 else 0.0
    return out


def factor_masks(spec: UpdateSpec) -> dict[str, torch.Tensor]:
    """Boolean ``(d,)`` masks of the ``lora_A`` and ``lora_B`` tensors."""
    masks = {"A": torch.zeros(spec.numel, dtype=torch.bool), "B": torch.zeros(spec.numel, dtype=torch.bool)}
    for name, a, b in zip(spec.names, spec.offsets[:-1], spec.offsets[1:], strict=True):
        for factor in ("A", "B"):
            if f"lora_{factor}" in name:
                masks[factor][a:b] = True
    return masks


def zero_predictor(targets: torch.Tensor) -> torch.Tensor:
    """Predict zero for every update (rel_error 1, cosine 0)."""
    return torch.zeros_like(targets)


def train_mean_predictor(train: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Predict the mean of the TGAP training snapshots for every held-out update (input-independent)."""
    return train.to(torch.float64).mean(dim=0, keepdim=True).expand_as(targets).to(targets.dtype)


def shuffle_control(
    reconstruct: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor
) -> torch.Tensor:
    """Client ``j``'s reconstruction as the prediction of client ``i``'s update (``j = i + 1`` cyclically).

    A codec that carries information scores much worse here than matched; an input-independent one scores
    the same.
    """
    recon = torch.stack([reconstruct(u) for u in targets])
    return torch.roll(recon, shifts=-1, dims=0)


def identity_is_exact(targets: torch.Tensor, spec: UpdateSpec) -> bool:
    """The identity codec round-trips every update bit for bit."""
    codec = get("identity")
    return all(
        torch.equal(decode_flat(codec.encode_with_spec(u.to(torch.float32), spec), spec), u.to(torch.float32))
        for u in targets
    )

"""Faulty clients: screen the replies of a round, then aggregate what is left (optionally robustly).

Pure functions shared by the local loop (:mod:`fedsqueeze.fl.loop`) and the Flower server.

Screening (:func:`screen_replies`) drops a reply that

* fails to decode (:class:`~fedsqueeze.PayloadError`, a frame for another spec, an unknown codec, ...),
* decodes to NaN/Inf (the decoder already refuses them; checked again here in float64),
* has a non-finite or non-positive weight (``num_examples``),
* or has an L2 norm above ``norm_bound_factor × median`` of the round's decodable replies (a client that
  sends a scaled-up or exploded update). The median is robust: fewer than half of the clients cannot move
  it far. The check is skipped with fewer than 3 decodable replies (two cannot outvote each other) and
  when the median is 0.

Aggregation (:func:`aggregate`): ``"mean"`` is the sample-weighted FedAvg of
:func:`~fedsqueeze.fl.server.weighted_mean` (bit-identical to it); ``"median"`` the coordinate-wise median and
``"trimmed_mean"`` the coordinate-wise mean after dropping the ``trim_fraction`` largest and smallest values
of every coordinate. The two robust rules ignore the weights (they are order statistics over clients).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from ..codecs import decode_flat
from ..errors import ConfigError, FedsqueezeError
from ..spec import UpdateSpec
from .server import weighted_mean

__all__ = ["AGGREGATIONS", "aggregate", "merge_screens", "screen_replies"]

AGGREGATIONS = ("mean", "median", "trimmed_mean")

MIN_FOR_NORM_BOUND = 3


def screen_replies(
    payloads: Sequence[bytes],
    weights: Sequence[int | float],
    spec: UpdateSpec,
    *,
    norm_bound_factor: float | None = 10.0,
    clients: Sequence[int] | None = None,
    references: Sequence[torch.Tensor | None] | None = None,
) -> tuple[list[int], list[torch.Tensor], list[dict[str, Any]]]:
    """Decode every payload and drop the faulty ones.

    Parameters
    ----------
    payloads, weights
        One frame and one aggregation weight (e.g. ``num_examples``) per reply.
    spec
        The receiver's spec of these frames (an empty spec: every reply decodes to an empty vector).
    norm_bound_factor
        Drop a reply whose norm exceeds this many times the median norm of the round; ``None`` or ``0``
        disables the bound.
    clients
        Client ids for the ``dropped`` records (default: the reply indices).
    references
        Per payload, the reference a predictive frame is decoded against (``None``: none); plain frames
        ignore it, and a predictive frame without the right one is dropped as undecodable.

    Returns
    -------
    kept, decoded, dropped
        Indices (into ``payloads``) of the kept replies in their original order, their decoded flat float32
        vectors (same order), and one ``{"client", "reason"}`` record per dropped reply.
    """
    if len(payloads) != len(weights):
        raise ConfigError("screen_replies needs one weight per payload")
    ids = list(range(len(payloads))) if clients is None else list(clients)
    dropped: list[dict[str, Any]] = []
    ok: list[tuple[int, torch.Tensor, float]] = []
    for i, (blob, w) in enumerate(zip(payloads, weights, strict=True)):
        if not (isinstance(w, int | float) and math.isfinite(float(w)) and float(w) > 0):
            dropped.append({"client": ids[i], "reason": f"invalid weight {w!r}"})
            continue
        if spec.numel == 0:
            if len(blob):  # nothing is expected here (e.g. a fixed head): bytes mean a confused sender
                dropped.append({"client": ids[i], "reason": f"{len(blob)} bytes where nothing is expected"})
                continue
            ok.append((i, torch.zeros(0), 0.0))
            continue
        try:
            flat = decode_flat(blob, spec, reference=None if references is None else references[i])
        except FedsqueezeError as exc:  # PayloadError, SpecMismatchError
            dropped.append({"client": ids[i], "reason": f"undecodable: {exc}"})
            continue
        norm = float(flat.to(torch.float64).norm())
        if not math.isfinite(norm):
            dropped.append({"client": ids[i], "reason": "non-finite values"})
            continue
        ok.append((i, flat, norm))

    if norm_bound_factor and len(ok) >= MIN_FOR_NORM_BOUND:
        median = statistics.median(n for _, _, n in ok)
        bound = float(norm_bound_factor) * median
        if median > 0:
            for i, _, n in ok:
                if n > bound:
                    dropped.append(
                        {
                            "client": ids[i],
                            "reason": f"norm {n:.4g} > {norm_bound_factor:g} x median {median:.4g}",
                        }
                    )
            ok = [item for item in ok if item[2] <= bound]
    order = {c: k for k, c in enumerate(ids)}
    dropped.sort(key=lambda d: order.get(d["client"], 0))
    return [i for i, _, _ in ok], [f for _, f, _ in ok], dropped


def merge_screens(
    n: int,
    screens: Sequence[tuple[list[int], list[torch.Tensor], list[dict[str, Any]]]],
    clients: Sequence[int] | None = None,
) -> tuple[list[int], list[list[torch.Tensor]], list[dict[str, Any]]]:
    """Combine the screens of several parts of the same ``n`` replies (e.g. LoRA frame and head frame).

    A reply is kept only when every part kept it; a dropped reply is reported once, with the reasons of
    every part that dropped it joined by ``"; "``, in the order of ``clients`` (default: the indices).
    Returns the kept indices, the decoded vectors of each part restricted to them, and the dropped records.
    """
    kept = set(range(n))
    reasons: dict[Any, list[str]] = {}
    for idx, _, dropped in screens:
        kept &= set(idx)
        for d in dropped:
            reasons.setdefault(d["client"], []).append(d["reason"])
    final = sorted(kept)
    parts = [[vec for i, vec in zip(idx, dec, strict=True) if i in kept] for idx, dec, _ in screens]
    order = {c: k for k, c in enumerate(range(n) if clients is None else clients)}
    dropped_all = [
        {"client": c, "reason": "; ".join(r)} for c, r in sorted(reasons.items(), key=lambda cr: order[cr[0]])
    ]
    return final, parts, dropped_all


def aggregate(
    decoded: Sequence[torch.Tensor],
    weights: Sequence[int | float],
    method: str = "mean",
    trim_fraction: float = 0.1,
) -> torch.Tensor:
    """Aggregate decoded flat updates into one float64 vector.

    Parameters
    ----------
    decoded, weights
        The kept replies' vectors and weights (weights are used by ``"mean"`` only).
    method
        ``"mean"`` (weighted FedAvg), ``"median"`` (coordinate-wise; the mean of the two middle values for
        an even count) or ``"trimmed_mean"`` (drops ``floor(trim_fraction · n)`` values at each end of
        every coordinate).
    trim_fraction
        In ``[0, 0.5)``.
    """
    if method not in AGGREGATIONS:
        raise ConfigError(f"aggregation {method!r} is unknown; choose one of {', '.join(AGGREGATIONS)}")
    if not decoded:
        raise ConfigError("aggregate needs at least one update")
    if method == "mean":
        return weighted_mean(decoded, weights)
    stacked = torch.stack([v.to(torch.float64) for v in decoded])  # (n, d)
    n = stacked.shape[0]
    srt = torch.sort(stacked, dim=0).values
    if method == "median":
        lo, hi = (n - 1) // 2, n // 2
        return (srt[lo] + srt[hi]) / 2.0
    if not 0 <= trim_fraction < 0.5:
        raise ConfigError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    k = math.floor(trim_fraction * n)
    return srt[k : n - k].mean(dim=0)

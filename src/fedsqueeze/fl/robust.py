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

Aggregation (:func:`aggregate`, re-exported from :mod:`fedsqueeze.aggregation`, the one registry of the
rules) then combines what is left: ``"mean"``, ``"median"`` or ``"trimmed_mean"``.

The server's round (:func:`screen_and_aggregate`) does both without holding ``K`` decoded updates for
``"mean"``: each reply is decoded, screened (its norm computed during the decode; only the ``K`` norms are
kept) and added to an ``O(d)`` running sum (:class:`~fedsqueeze.aggregation.WeightedSum`). The norm bound
needs the median of all norms, so the pass adds every reply optimistically with the weights' total of all
replies; when every reply is kept (the usual round) that sum is final. When a reply is dropped, a second
pass decodes the kept replies again and sums them with the kept weights' total: the same float64 operations
in the same order as :func:`~fedsqueeze.aggregation.weighted_mean` over the kept list, so the result is
bit-identical to decoding everything first. ``"median"`` and ``"trimmed_mean"`` hold every decoded update
(``O(K·d)``) and are refused above ``fl.aggregation_memory_mb``
(:func:`~fedsqueeze.aggregation.check_memory`). Decoding can run on a thread pool (``workers``) with the
same result: the replies are still summed in order.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from ..aggregation import AGGREGATIONS, AGGREGATORS, Aggregator, WeightedSum, aggregate, check_memory, rule
from ..codecs import decode_flat
from ..errors import ConfigError, FedsqueezeError
from ..spec import UpdateSpec

__all__ = [
    "AGGREGATIONS",
    "AGGREGATORS",
    "Aggregator",
    "ReplyPart",
    "RoundAggregate",
    "aggregate",
    "merge_screens",
    "screen_and_aggregate",
    "screen_replies",
]

MIN_FOR_NORM_BOUND = 3

_T = TypeVar("_T")
_R = TypeVar("_R")


def _weight_error(w: Any) -> str | None:
    """Why ``w`` cannot weigh a reply (``None``: it can)."""
    if not (isinstance(w, int | float) and math.isfinite(float(w)) and float(w) > 0):
        return f"invalid weight {w!r}"
    return None


def _decode_checked(
    blob: bytes, spec: UpdateSpec, reference: torch.Tensor | None
) -> tuple[torch.Tensor | None, float, str | None]:
    """Decode one reply and measure it: ``(flat, norm, None)``, or ``(None, nan, reason)`` to drop it."""
    if spec.numel == 0:
        if len(blob):  # nothing is expected here (e.g. a fixed head): bytes mean a confused sender
            return None, math.nan, f"{len(blob)} bytes where nothing is expected"
        return torch.zeros(0), 0.0, None
    try:
        flat = decode_flat(blob, spec, reference=reference)
    except FedsqueezeError as exc:  # PayloadError, SpecMismatchError
        return None, math.nan, f"undecodable: {exc}"
    norm = float(flat.to(torch.float64).norm())
    if not math.isfinite(norm):
        return None, math.nan, "non-finite values"
    return flat, norm, None


def _norm_drops(norms: dict[int, float], factor: float | None) -> dict[int, str]:
    """The replies (of ``norms``: index -> norm, in reply order) above ``factor ×`` the median norm."""
    if not factor or len(norms) < MIN_FOR_NORM_BOUND:
        return {}
    median = statistics.median(norms.values())
    bound = float(factor) * median
    if not median > 0:
        return {}
    return {i: f"norm {n:.4g} > {factor:g} x median {median:.4g}" for i, n in norms.items() if n > bound}


def _in_order(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """``map(fn, items)``, computed by ``workers`` threads ahead of the consumer, yielded in order.

    At most ``workers + 1`` results exist at once (the one being consumed and those in flight), so memory
    stays bounded by the worker count, not by the number of items.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedsqueeze-decode") as pool:
        pending: collections.deque[Future[_R]] = collections.deque(
            pool.submit(fn, x) for x in itertools.islice(it, workers)
        )
        while pending:
            done = pending.popleft()
            for x in itertools.islice(it, 1):
                pending.append(pool.submit(fn, x))
            yield done.result()


def screen_replies(
    payloads: Sequence[bytes],
    weights: Sequence[int | float],
    spec: UpdateSpec,
    *,
    norm_bound_factor: float | None = 10.0,
    clients: Sequence[int] | None = None,
    references: Sequence[torch.Tensor | None] | None = None,
) -> tuple[list[int], list[torch.Tensor], list[dict[str, Any]]]:
    """Decode every payload and drop the faulty ones (keeps every decoded vector: ``O(K·d)``).

    The server's round uses :func:`screen_and_aggregate`, which applies the same screen in ``O(d)``.

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
    decoded: dict[int, torch.Tensor] = {}
    norms: dict[int, float] = {}
    for i, (blob, w) in enumerate(zip(payloads, weights, strict=True)):
        reason = _weight_error(w)
        if reason is None:
            flat, norm, reason = _decode_checked(blob, spec, None if references is None else references[i])
        if reason is not None:
            dropped.append({"client": ids[i], "reason": reason})
            continue
        assert flat is not None
        decoded[i], norms[i] = flat, norm
    for i, reason in _norm_drops(norms, norm_bound_factor).items():
        dropped.append({"client": ids[i], "reason": reason})
        del decoded[i]
    order = {c: k for k, c in enumerate(ids)}
    dropped.sort(key=lambda d: order.get(d["client"], 0))
    return list(decoded), list(decoded.values()), dropped


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


@dataclasses.dataclass(frozen=True)
class ReplyPart:
    """One part of every reply of a round (e.g. the LoRA frames, or the head frames).

    Attributes
    ----------
    payloads
        One frame per reply, in reply order.
    spec
        The receiver's spec of these frames (an empty spec: every frame must be empty).
    references
        Per reply, the reference a predictive frame is decoded against (``None``: none).
    """

    payloads: Sequence[bytes]
    spec: UpdateSpec
    references: Sequence[torch.Tensor | None] | None = None


@dataclasses.dataclass(frozen=True)
class RoundAggregate:
    """What :func:`screen_and_aggregate` returns.

    Attributes
    ----------
    kept
        Indices of the replies every part kept, ascending.
    means
        One float64 aggregate per part, or ``None`` when fewer than ``min_replies`` replies were kept.
    dropped
        One ``{"client", "reason"}`` record per dropped reply (the reasons of every part joined by ``"; "``),
        in reply order, as :func:`merge_screens` gives them.
    norms
        Per part, the L2 norm of each reply that decoded (``None`` where it did not): the only per-reply
        numbers the screen keeps.
    passes
        Decoding passes over the replies: 1, or 2 when a dropped reply made the optimistic sum of
        ``"mean"`` unusable and the kept replies were decoded again.
    """

    kept: list[int]
    means: list[torch.Tensor] | None
    dropped: list[dict[str, Any]]
    norms: list[list[float | None]]
    passes: int


def screen_and_aggregate(
    parts: Sequence[ReplyPart],
    weights: Sequence[int | float],
    *,
    method: str = "mean",
    trim_fraction: float = 0.1,
    norm_bound_factor: float | None = 10.0,
    clients: Sequence[int] | None = None,
    min_replies: int = 1,
    memory_mb: float | None = None,
    workers: int = 1,
) -> RoundAggregate:
    """The server's round: screen, decode and aggregate every part of the replies.

    The same kept replies, dropped records and aggregates (bit for bit) as :func:`screen_replies` on each
    part, :func:`merge_screens` and :func:`aggregate` on the kept vectors, without holding ``K`` decoded
    updates for ``"mean"`` (see the module docstring for the two-pass scheme).

    Parameters
    ----------
    parts
        The parts of the replies (each with one payload per weight).
    weights
        One aggregation weight per reply (``num_examples``).
    method, trim_fraction
        The aggregation rule of :data:`AGGREGATORS` and its trim fraction.
    norm_bound_factor
        As in :func:`screen_replies` (applied to each part's norms separately).
    clients
        Client ids for the ``dropped`` records (default: the reply indices).
    min_replies
        Kept replies needed to aggregate; with fewer, ``means`` is ``None``.
    memory_mb
        Budget of :func:`~fedsqueeze.aggregation.check_memory` for ``"median"`` / ``"trimmed_mean"``,
        checked before anything is decoded (``None``: no limit).
    workers
        Threads that decode replies in parallel (1: in the caller's thread). Each holds one decoded reply;
        the result does not depend on it.

    Raises
    ------
    ConfigError
        Unknown ``method``, a part without one payload per weight, or a robust rule above ``memory_mb``.
    """
    n = len(weights)
    chosen = rule(method)  # raises for an unknown name
    if any(len(p.payloads) != n for p in parts):
        raise ConfigError("screen_and_aggregate needs one payload per weight in every part")
    if workers < 1:
        raise ConfigError(f"decode workers must be >= 1, got {workers}")
    check_memory(method, n, sum(p.spec.numel for p in parts), memory_mb)
    ids = list(range(n)) if clients is None else list(clients)
    bad_weight = {i: r for i, w in enumerate(weights) if (r := _weight_error(w)) is not None}
    valid = [i for i in range(n) if i not in bad_weight]
    streaming = chosen.streams  # the weighted mean, summed reply by reply
    # The optimistic sum assumes every reply with a valid weight is kept; it is exact if that holds.
    sums: list[WeightedSum] | None = None
    if streaming and valid:
        total = float(sum(weights[i] for i in valid))
        sums = [WeightedSum(p.spec.numel, total) for p in parts] if total > 0 else None
    held: list[dict[int, torch.Tensor]] = [{} for _ in parts]  # decoded vectors (robust rules only)
    norms: list[list[float | None]] = [[None] * n for _ in parts]
    reasons: list[dict[int, str]] = []
    for k, part in enumerate(parts):
        why: dict[int, str] = {}
        for i, flat, norm, reason in _decode_all(part, valid, workers):
            if reason is not None:
                why[i] = reason
                sums = None  # a reply is lost: the optimistic sums are off
                continue
            assert flat is not None
            norms[k][i] = norm
            if sums is not None:
                sums[k].add(flat, weights[i])
            elif not streaming:
                held[k][i] = flat
            del flat
        decodable = {i: v for i, v in enumerate(norms[k]) if v is not None}
        why.update(_norm_drops(decodable, norm_bound_factor))
        if why.keys() - bad_weight.keys():
            sums = None
        reasons.append(why)

    kept = [i for i in valid if not any(i in why for why in reasons)]
    dropped = []
    for i in range(n):
        why_i = [bad_weight[i]] * len(parts) if i in bad_weight else [w[i] for w in reasons if i in w]
        if why_i:
            dropped.append({"client": ids[i], "reason": "; ".join(why_i)})
    if len(kept) < max(1, min_replies):
        return RoundAggregate(kept, None, dropped, norms, 1)
    kw = [weights[i] for i in kept]
    if not streaming:
        vecs = [[h[i] for i in kept] for h in held]
        del held
        means = [aggregate(v, kw, method, trim_fraction) for v in vecs]
        return RoundAggregate(kept, means, dropped, norms, 1)
    if sums is not None:  # every reply kept: the optimistic sums are the weighted means
        return RoundAggregate(kept, [s.sum for s in sums], dropped, norms, 1)
    total = float(sum(kw))
    means = []
    for part in parts:  # second pass: decode the kept replies again, summed with the kept weights' total
        acc = WeightedSum(part.spec.numel, total)
        for i, flat, _, reason in _decode_all(part, kept, workers):
            if reason is not None or flat is None:  # decoding is deterministic: cannot happen
                raise FedsqueezeError(f"reply {ids[i]} decoded once but not twice: {reason}")
            acc.add(flat, weights[i])
            del flat
        means.append(acc.sum)
    return RoundAggregate(kept, means, dropped, norms, 2)


def _decode_all(
    part: ReplyPart, indices: Sequence[int], workers: int
) -> Iterator[tuple[int, torch.Tensor | None, float, str | None]]:
    """``(i, *_decode_checked(...))`` of ``part``'s replies ``indices``, in order, on ``workers`` threads.

    Nothing here keeps a yielded vector: once the caller drops it, it is freed before the next decode.
    """
    refs = part.references

    def one(i: int) -> tuple[int, torch.Tensor | None, float, str | None]:
        return (i, *_decode_checked(part.payloads[i], part.spec, None if refs is None else refs[i]))

    return _in_order(one, indices, workers if part.spec.numel else 1)

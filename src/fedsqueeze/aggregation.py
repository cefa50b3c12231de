"""Aggregation rules: one registry, name -> function, that the round's aggregate and the config read.

``"mean"`` is the sample-weighted FedAvg (:func:`weighted_mean`, accumulated in float64 in the given order,
bit-reproducible); ``"median"`` the coordinate-wise median and ``"trimmed_mean"`` the coordinate-wise mean
after dropping the ``trim_fraction`` largest and smallest values of every coordinate. The two robust rules
ignore the weights (they are order statistics over clients). ``fl.aggregation`` is checked against
:data:`AGGREGATIONS`, the registry's names; :func:`aggregate` and the server's round
(:func:`fedsqueeze.fl.robust.screen_and_aggregate`) look the rule up in :data:`AGGREGATORS`, whose entries
(:class:`Rule`) also say whether the rule streams.

Memory
------
``"mean"`` is a running sum (:class:`WeightedSum`): the server adds each decoded reply as it arrives and
holds ``O(d)`` (the float64 sum and one reply), whatever the number of clients ``K``
(:func:`fedsqueeze.fl.robust.screen_and_aggregate` streams it). ``"median"`` and ``"trimmed_mean"`` are order
statistics over clients and need every decoded update at once, ``O(K·d)``: about
:data:`ROBUST_BYTES_PER_VALUE` bytes per value (the float32 decoded updates, their float64 stack, the sorted
float64 values and torch's int64 sort indices). :func:`check_memory` refuses them with a
:class:`~fedsqueeze.ConfigError` above a budget (``fl.aggregation_memory_mb``) rather than letting the
machine swap.

Pure functions of torch tensors: no codec, no config, no engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from .errors import ConfigError

__all__ = [
    "AGGREGATIONS",
    "AGGREGATORS",
    "ROBUST_BYTES_PER_VALUE",
    "Aggregator",
    "Rule",
    "WeightedSum",
    "aggregate",
    "aggregation_memory_bytes",
    "check_memory",
    "weighted_mean",
]

# Bytes per value (one client, one coordinate) that median / trimmed_mean hold at their peak: the float32
# decoded update (4), its float64 copy in the stack (8), the sorted float64 values (8), the int64 indices
# torch.sort returns beside them (8).
ROBUST_BYTES_PER_VALUE = 28

# An aggregation rule: (decoded flat updates, their weights, trim_fraction) -> one float64 vector.
Aggregator = Callable[[Sequence[torch.Tensor], Sequence[int | float], float], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """One registered aggregation rule; calling it calls ``fn``.

    Attributes
    ----------
    fn
        The rule: ``(decoded, weights, trim_fraction) -> float64 vector``.
    streams
        The rule is the sample-weighted mean, which the server accumulates reply by reply in ``O(d)``
        (:class:`WeightedSum`); ``False``: an order statistic over clients that holds every decoded update,
        ``O(K·d)``, within ``fl.aggregation_memory_mb``.
    """

    fn: Aggregator
    streams: bool = False

    def __call__(
        self, decoded: Sequence[torch.Tensor], weights: Sequence[int | float], trim_fraction: float
    ) -> torch.Tensor:
        return self.fn(decoded, weights, trim_fraction)


def rule(method: str) -> Rule:
    """The registered rule named ``method``; :class:`~fedsqueeze.ConfigError` naming the choices if none."""
    found = AGGREGATORS.get(method)
    if found is None:
        raise ConfigError(f"aggregation {method!r} is unknown; choose one of {', '.join(AGGREGATIONS)}")
    return found


class WeightedSum:
    """The running weighted mean ``Σ (w_i / total) · v_i`` in float64, one vector at a time: ``O(d)`` memory.

    :func:`weighted_mean` is this sum over a list, so adding the same vectors with the same weights in the
    same order gives the same bits: per vector, an exact float64 copy, one float64 multiply by ``w / total``
    and one add (the operations of ``sum += (w / total) * v.to(float64)``, done in a reused buffer, so adding
    allocates nothing; memory is two float64 vectors of ``d``).

    Parameters
    ----------
    d
        Length of the vectors.
    total
        ``float(sum(weights))`` of every vector that will be added (the weights must be known up front,
        e.g. the replies' ``num_examples``), ``> 0``.
    """

    def __init__(self, d: int, total: float) -> None:
        if not total > 0:
            raise ConfigError(f"weights must sum to > 0, got {total}")
        self.total = float(total)
        self.sum = torch.zeros(int(d), dtype=torch.float64)
        self._scaled = torch.empty(int(d), dtype=torch.float64)
        self.count = 0

    def add(self, vector: torch.Tensor, weight: int | float) -> None:
        """Add ``(weight / total) · vector`` (``vector`` of any float dtype, converted to float64 exactly)."""
        scaled = self._scaled
        scaled.copy_(vector.reshape(-1))  # float32 -> float64 is exact
        scaled.mul_(float(weight) / self.total)
        self.sum.add_(scaled)
        self.count += 1


def weighted_mean(vectors: Sequence[torch.Tensor], weights: Sequence[int | float]) -> torch.Tensor:
    """``Σ (w_i / Σw) · v_i`` in float64, accumulated in the given order (bit-reproducible).

    The same arithmetic as a :class:`WeightedSum` fed the vectors one by one (which is how the server
    streams it without holding the vectors).
    """
    if len(vectors) != len(weights) or not vectors:
        raise ConfigError("weighted_mean needs one weight per vector and at least one vector")
    acc = WeightedSum(vectors[0].numel(), float(sum(weights)))
    for v, w in zip(vectors, weights, strict=True):
        acc.add(v, w)
    return acc.sum


def aggregation_memory_bytes(method: str, n: int, d: int) -> int:
    """Bytes the rule ``method`` holds at its peak for ``n`` replies of ``d`` values (an estimate).

    ``"mean"`` streams: two float64 vectors (the sum and a scaled copy of one reply), one float32 reply and
    the float64 copy its norm is taken on, whatever ``n``. ``"median"`` / ``"trimmed_mean"``:
    :data:`ROBUST_BYTES_PER_VALUE` per value, ``O(n·d)``.
    """
    if rule(method).streams:
        return (3 * 8 + 4) * int(d)  # sum, scaled copy, norm's float64 copy; the float32 reply
    return ROBUST_BYTES_PER_VALUE * int(n) * int(d)


def check_memory(method: str, n: int, d: int, budget_mb: float | None) -> None:
    """Refuse a rule whose memory grows with the clients when ``n`` replies of ``d`` values exceed the budget.

    Parameters
    ----------
    method
        The aggregation rule; ``"mean"`` streams in ``O(d)`` and always passes.
    n, d
        Replies per round and values per reply (all parts together).
    budget_mb
        ``fl.aggregation_memory_mb`` in MiB; ``None``: no limit.

    Raises
    ------
    ConfigError
        ``median`` / ``trimmed_mean`` would need more than ``budget_mb``.
    """
    if budget_mb is None or rule(method).streams:
        return
    need = aggregation_memory_bytes(method, n, d)
    if need > float(budget_mb) * 2**20:
        raise ConfigError(
            f"fl.aggregation = {method!r} holds every decoded update (O(K·d)): {n} replies of {d:,} values "
            f"need about {need / 2**20:,.0f} MiB, above fl.aggregation_memory_mb = {budget_mb:g}; raise it, "
            "sample fewer clients, or use 'mean', which streams in O(d)"
        )


def _mean(
    decoded: Sequence[torch.Tensor], weights: Sequence[int | float], trim_fraction: float
) -> torch.Tensor:
    """Sample-weighted FedAvg (:func:`weighted_mean`); ignores ``trim_fraction``."""
    return weighted_mean(decoded, weights)


def _sorted(decoded: Sequence[torch.Tensor]) -> torch.Tensor:
    """The updates stacked to ``(n, d)`` float64 and sorted over clients, per coordinate."""
    return torch.sort(torch.stack([v.to(torch.float64) for v in decoded]), dim=0).values


def _median(
    decoded: Sequence[torch.Tensor], weights: Sequence[int | float], trim_fraction: float
) -> torch.Tensor:
    """Coordinate-wise median (the mean of the two middle values for an even count); ignores the weights.

    Needs every update at once: ``O(K·d)`` memory (see :func:`aggregation_memory_bytes`)."""
    srt = _sorted(decoded)
    n = srt.shape[0]
    lo, hi = (n - 1) // 2, n // 2
    return (srt[lo] + srt[hi]) / 2.0


def _trimmed_mean(
    decoded: Sequence[torch.Tensor], weights: Sequence[int | float], trim_fraction: float
) -> torch.Tensor:
    """Coordinate-wise mean after dropping ``floor(trim_fraction · n)`` values at each end; ignores the
    weights. Needs every update at once: ``O(K·d)`` memory (see :func:`aggregation_memory_bytes`)."""
    if not 0 <= trim_fraction < 0.5:
        raise ConfigError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    srt = _sorted(decoded)
    n = srt.shape[0]
    k = math.floor(trim_fraction * n)
    return srt[k : n - k].mean(dim=0)


# The aggregation rules by name: the one place a rule is defined (read-only; ``fl.aggregation`` is checked
# against its names, :data:`AGGREGATIONS`).
AGGREGATORS: Mapping[str, Rule] = MappingProxyType(
    {"mean": Rule(_mean, streams=True), "median": Rule(_median), "trimmed_mean": Rule(_trimmed_mean)}
)
AGGREGATIONS: tuple[str, ...] = tuple(AGGREGATORS)


def aggregate(
    decoded: Sequence[torch.Tensor],
    weights: Sequence[int | float],
    method: str = "mean",
    trim_fraction: float = 0.1,
    *,
    memory_mb: float | None = None,
) -> torch.Tensor:
    """Aggregate decoded flat updates into one float64 vector with the rule ``method`` of :data:`AGGREGATORS`.

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
    memory_mb
        Budget of :func:`check_memory` for the ``O(K·d)`` rules (``None``: no limit). The vectors are
        already decoded here; :func:`fedsqueeze.fl.robust.screen_and_aggregate` checks before decoding.

    Raises
    ------
    ConfigError
        Unknown ``method``, no updates, ``trim_fraction`` out of range for ``"trimmed_mean"``, or a robust
        rule above ``memory_mb``.
    """
    chosen = rule(method)
    if not decoded:
        raise ConfigError("aggregate needs at least one update")
    check_memory(method, len(decoded), decoded[0].numel(), memory_mb)
    return chosen(decoded, weights, trim_fraction)

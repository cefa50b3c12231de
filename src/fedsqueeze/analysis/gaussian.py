"""Gaussian model of TopK error per interval (``docs/flm-topk.md`` §4–5): predict before you run.

Entries of interval ``j`` are modelled as i.i.d. ``N(μ_j, σ_j²)``. Keeping the ``k = ρ L`` largest
magnitudes drops, per entry, ``σ² D(ρ)`` of energy with the closed form

    D(ρ) = (1 − ρ) − 2 z φ(z),   z = Φ⁻¹(1 − ρ/2),

(``D′(ρ) = −z²``, ``D″ > 0``: convex, so the allocation over intervals is a convex problem whose KKT point
is one common magnitude threshold when quantization noise is negligible). :func:`finite_interval_penalty`
adds the order-statistics correction for short intervals, :func:`general_mean_dropped` handles ``μ ≠ 0``
and :func:`optimal_allocation` solves the per-interval rates (``docs/flm-topk.md`` §5) by bisection on the
multiplier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from ..errors import ConfigError

__all__ = [
    "Allocation",
    "D",
    "finite_interval_kept",
    "finite_interval_penalty",
    "general_mean_dropped",
    "optimal_allocation",
    "predict_rel_error",
]


def D(rho: float | np.ndarray) -> float | np.ndarray:  # noqa: N802 - the paper's notation
    """Dropped energy per entry of a unit-variance zero-mean Gaussian keeping the top fraction ``rho``."""
    r = np.clip(np.asarray(rho, dtype=np.float64), 0.0, 1.0)
    z = stats.norm.isf(np.clip(r, 1e-300, 1.0) / 2)
    out = np.where(r <= 0, 1.0, np.where(r >= 1, 0.0, (1 - r) - 2 * z * stats.norm.pdf(z)))
    return float(out) if np.ndim(out) == 0 else out


def general_mean_dropped(rho: float, mu: float, sigma: float) -> float:
    """``E[u² 1{|u| ≤ t}]`` for ``u ~ N(μ, σ²)`` with ``t`` such that ``P(|u| > t) = ρ``."""
    if not 0 <= rho <= 1 or sigma <= 0:
        raise ConfigError("need 0 <= rho <= 1 and sigma > 0")
    if rho >= 1:
        return 0.0
    if rho <= 0:
        return mu * mu + sigma * sigma

    def tail(t: float) -> float:
        return 1 - (stats.norm.cdf((t - mu) / sigma) - stats.norm.cdf((-t - mu) / sigma)) - rho

    hi = abs(mu) + 40 * sigma
    t = optimize.brentq(tail, 0.0, hi, xtol=1e-14 * hi)
    a, b = (-t - mu) / sigma, (t - mu) / sigma
    phi, Phi = stats.norm.pdf, stats.norm.cdf
    return float(
        (mu**2 + sigma**2) * (Phi(b) - Phi(a))
        + 2 * mu * sigma * (phi(a) - phi(b))
        + sigma**2 * (a * phi(a) - b * phi(b))
    )


def finite_interval_kept(k: int, L: int, nodes: int = 400) -> float:
    """Expected kept energy (units of σ²) of the top ``k`` of ``L`` i.i.d. N(0, 1) entries (exact).

    ``Σ_{i≤k} E[Y_(i)]`` with ``E[Y_(i)] = ∫ (Φ⁻¹((1+v)/2))² Beta(v; L−i+1, i) dv``, integrated by the
    midpoint rule in the Beta quantile (``nodes`` points per order statistic).
    """
    if not 0 <= k <= L:
        raise ConfigError(f"need 0 <= k <= L, got k={k}, L={L}")
    if k == 0:
        return 0.0
    i = np.arange(1, k + 1, dtype=np.float64)[:, None]
    w = (np.arange(nodes) + 0.5) / nodes
    v = stats.beta.ppf(w[None, :], L - i + 1, i)
    y = stats.norm.isf((1 - v) / 2) ** 2
    return float(y.mean(axis=1).sum())


def finite_interval_penalty(rho: float, L: int) -> float:
    """``c(ρ, L)``: how much the asymptotic formula over-states kept energy per interval (units of σ²)."""
    k = round(rho * L)
    return L * (1 - float(D(k / L))) - finite_interval_kept(k, L)


@dataclass(frozen=True)
class Allocation:
    """Result of :func:`optimal_allocation`: counts ``k``, rates ``rho``, threshold and predicted error."""

    k: np.ndarray
    rho: np.ndarray
    threshold: float
    rel_error: float


def optimal_allocation(
    sigmas: Sequence[float],
    L: int,
    budget_bits: float,
    bits_per_entry: float,
    header_bits: float = 0.0,
    q: Sequence[float] | None = None,
) -> Allocation:
    """The KKT allocation: ``ρ_j = 2 Q(√(λ c_b + q_j) / σ_j)`` with ``Σ L ρ_j c_b + m h = B``.

    Derived in ``docs/flm-topk.md`` §5.

    Parameters
    ----------
    sigmas
        Per-interval standard deviations (``m`` intervals of ``L`` entries).
    budget_bits, bits_per_entry, header_bits
        Budget ``B``, cost ``c_b = b + s`` (+1 with a sign bit) of a kept entry, per-interval header ``h``.
    q
        Per-entry quantization variance of each interval (0 by default: one common threshold).
    """
    sig = np.asarray(sigmas, dtype=np.float64)
    m = sig.size
    qj = np.zeros(m) if q is None else np.asarray(q, dtype=np.float64)
    avail = budget_bits - m * header_bits
    if avail <= 0 or bits_per_entry <= 0 or (sig <= 0).any():
        raise ConfigError("need a budget above the headers, positive bits per entry and sigmas")

    def rho(lam: float) -> np.ndarray:
        return np.minimum(1.0, 2 * stats.norm.sf(np.sqrt(lam * bits_per_entry + qj) / sig))

    def spent(lam: float) -> float:
        return float(L * rho(lam).sum() * bits_per_entry) - avail

    if spent(0.0) <= 0:
        lam = 0.0
    else:
        hi = 1.0
        while spent(hi) > 0:
            hi *= 4
        lam = optimize.brentq(spent, 0.0, hi, xtol=1e-12 * hi)
    r = rho(lam)
    exact = r * L
    k = np.floor(exact).astype(np.int64)
    left = round(avail / bits_per_entry) - int(k.sum())
    if left > 0:  # largest-remainder rounding
        order = np.argsort(-(exact - k))[: min(left, m)]
        k[order] = np.minimum(L, k[order] + 1)
    err = float((sig**2 * L * D(k / L)).sum() / (sig**2 * L).sum())
    return Allocation(k=k, rho=k / L, threshold=math.sqrt(lam * bits_per_entry), rel_error=err)


def predict_rel_error(sigmas: Sequence[float], L: int, k: Sequence[int] | int) -> float:
    """Predicted ``‖u − û‖² / ‖u‖²`` of keeping ``k_j`` per interval (quantization noise excluded)."""
    sig = np.asarray(sigmas, dtype=np.float64)
    kk = np.broadcast_to(np.asarray(k, dtype=np.float64), sig.shape)
    return float((sig**2 * L * D(kk / L)).sum() / (sig**2 * L).sum())

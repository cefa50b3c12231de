"""Rate–distortion reference curves: Gaussian, reverse water-filling and the Shannon lower bound.

All distortions here are *relative*: squared error divided by the source's energy, the same normalisation as
the benchmark's ``rel_error = ‖u − û‖² / ‖u‖²``. Rates are bits per parameter averaged over the whole vector.

References (Cover & Thomas, *Elements of Information Theory*, 2nd ed.):

- Thm 10.3.2: an i.i.d. N(0, σ²) source has D(R) = σ²·2^(−2R). For any memoryless source of variance σ² this
  is *achievable* (the Gaussian is the hardest source), so it is a target that non-Gaussian data can beat.
- Thm 10.3.3: independent Gaussian blocks with variances σ_j² (sizes n_j): reverse water-filling,
  D(θ) = Σ n_j·min(θ, σ_j²), R(θ) = Σ n_j·max(0, ½·log2(σ_j²/θ)).
- Shannon lower bound: D(R) ≥ N(X)·2^(−2R) with entropy power N(X) = 2^(2h(X)) / (2πe) ≤ σ². For blocks with
  entropy powers N_j the per-block bounds combine into water-filling over the N_j (see :func:`slb_blocks`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special, stats

from ..errors import ConfigError, UsageError

__all__ = [
    "entropy_power_ratio",
    "entropy_power_ratio_closed_form",
    "gaussian_dr",
    "ggd_entropy_power_ratio",
    "ggd_fit_shape",
    "slb_blocks",
    "slb_dr",
    "waterfill_dr",
    "waterfill_rate",
    "waterfill_theta",
]

_BISECT_STEPS = 200  # on log2(θ): 200 halvings of a ≤ 2000-wide interval reach float64 resolution


def gaussian_dr(rate: float | np.ndarray) -> np.ndarray:
    """Relative distortion of the i.i.d. Gaussian source, ``2^(−2R)``."""
    r = np.asarray(rate, dtype=np.float64)
    return np.exp2(-2.0 * np.maximum(r, 0.0))


def _blocks(variances: Sequence[float] | np.ndarray, sizes: Sequence[int] | np.ndarray | None):
    var = np.asarray(variances, dtype=np.float64).reshape(-1)
    n = np.ones_like(var) if sizes is None else np.asarray(sizes, dtype=np.float64).reshape(-1)
    if var.shape != n.shape:
        raise ConfigError(f"{var.size} variances but {n.size} block sizes; give one size per block")
    if var.size == 0 or not np.all(np.isfinite(var)) or np.any(var < 0) or np.any(n < 0):
        raise UsageError("block variances must be finite and >= 0, sizes >= 0, and at least one block")
    keep = (var > 0) & (n > 0)
    total_energy = float(np.sum(n * var))
    if total_energy <= 0:
        raise ConfigError("all blocks have zero energy; the relative distortion is undefined")
    return var[keep], n[keep], float(np.sum(n)), total_energy


def waterfill_rate(theta: float | np.ndarray, variances, sizes=None) -> tuple[np.ndarray, np.ndarray]:
    """Rate and relative distortion at water level ``θ``.

    Parameters
    ----------
    theta
        Water level(s), any shape.
    variances, sizes
        Per-block variances σ_j² (second moments) and element counts n_j (default 1 each).

    Returns
    -------
    rate, distortion
        ``R(θ) = Σ n_j max(0, ½ log2(σ_j²/θ)) / Σ n_j`` in bits per parameter and
        ``D(θ) = Σ n_j min(θ, σ_j²) / Σ n_j σ_j²``, both shaped like ``theta``.
    """
    var, n, total_n, energy = _blocks(variances, sizes)
    th = np.asarray(theta, dtype=np.float64)[..., None]
    r = np.sum(n * np.maximum(0.0, 0.5 * np.log2(var / th)), axis=-1) / total_n
    d = np.sum(n * np.minimum(th, var), axis=-1) / energy
    return r, d


def waterfill_theta(rate: float | np.ndarray, variances, sizes=None) -> np.ndarray:
    """Water level θ at which reverse water-filling spends ``rate`` bits/param (bisection on log θ)."""
    var, n, total_n, _ = _blocks(variances, sizes)
    r = np.asarray(rate, dtype=np.float64)
    if np.any(r < 0) or not np.all(np.isfinite(r)):
        raise UsageError("rates must be finite and >= 0")
    # R(θ) is non-increasing in θ: θ = max σ² gives 0; θ = min σ² · 2^(−2R·d/n_min) already exceeds R.
    hi = np.full(r.shape, math.log2(float(var.max())))
    lo = np.full(
        r.shape, math.log2(float(var.min())) - 2.0 * float(r.max(initial=0.0)) * total_n / n.min() - 1
    )
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        rm = np.sum(n * np.maximum(0.0, 0.5 * (np.log2(var) - mid[..., None])), axis=-1) / total_n
        too_many_bits = rm > r
        lo = np.where(too_many_bits, mid, lo)
        hi = np.where(too_many_bits, hi, mid)
    return np.exp2(hi)


def waterfill_dr(rate: float | np.ndarray, variances, sizes=None) -> np.ndarray:
    """Relative distortion D_wf(R) of reverse water-filling over independent Gaussian blocks.

    Examples
    --------
    >>> float(waterfill_dr(0.5, [1.0, 100.0], [1, 1]))  # doctest: +ELLIPSIS
    0.257...
    """
    theta = waterfill_theta(rate, variances, sizes)
    return waterfill_rate(theta, variances, sizes)[1]


# -- Shannon lower bound ------------------------------------------------------------------------------


def entropy_power_ratio_closed_form(family: str, nu: float = 3.0) -> float:
    """``N(X)/σ²`` of a named family: ``gaussian`` 1, ``laplace`` e/π, ``student-t`` (ν degrees of freedom).

    Uses the exact differential entropies (scipy's closed forms); the ratio is scale-free.
    """
    if family == "gaussian":
        return 1.0
    if family == "laplace":
        return math.e / math.pi
    if family in ("student-t", "student_t", "t"):
        if nu <= 2:
            raise ConfigError("Student-t needs ν > 2 for a finite variance")
        h = float(stats.t(df=nu).entropy())  # nats, unit scale
        var = nu / (nu - 2.0)
        return math.exp(2.0 * h) / (2.0 * math.pi * math.e * var)
    raise ConfigError(f"no closed-form entropy power for family {family!r}; use entropy_power_ratio(x)")


def _ggd_moment_ratio(beta: np.ndarray) -> np.ndarray:
    # (E|x|)² / E[x²] of a generalized Gaussian with shape β, in log space for stability.
    lg = special.gammaln
    return np.exp(2 * lg(2 / beta) - lg(1 / beta) - lg(3 / beta))


def ggd_fit_shape(x: np.ndarray) -> float:
    """Shape β of the generalized Gaussian ``∝ exp(−|x/α|^β)`` matching ``(E|x|)²/E[x²]`` of ``x``.

    β = 2 is Gaussian, β = 1 Laplace; heavier tails give smaller β. Clipped to [0.05, 50].
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    m2 = float(np.mean(x * x))
    if m2 <= 0:
        return 2.0
    target = float(np.mean(np.abs(x))) ** 2 / m2
    lo, hi = math.log(0.05), math.log(50.0)  # ratio increases with β
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _ggd_moment_ratio(np.array(math.exp(mid))) < target:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def ggd_entropy_power_ratio(beta: float) -> float:
    """``N(X)/σ²`` of a generalized Gaussian of shape β (scale-free)."""
    # h = 1/β + ln(2αΓ(1/β)/β) nats; σ² = α² Γ(3/β)/Γ(1/β); take α = 1.
    lg = special.gammaln
    h = 1.0 / beta + math.log(2.0 / beta) + float(lg(1.0 / beta))
    var = math.exp(float(lg(3.0 / beta) - lg(1.0 / beta)))
    return math.exp(2.0 * h) / (2.0 * math.pi * math.e * var)


def _spacing_entropy(x: np.ndarray) -> float:
    # Vasicek m-spacing estimator (nats) with m ≈ √n; ties (quantized data) make spacings 0, so clamp them.
    xs = np.sort(x)
    n = xs.size
    m = max(1, round(math.sqrt(n)))
    idx = np.arange(n)
    up = xs[np.minimum(idx + m, n - 1)]
    down = xs[np.maximum(idx - m, 0)]
    span = np.maximum(up - down, np.finfo(np.float64).tiny)
    # Boundary-corrected form (Ebrahimi et al. 1994): the effective window is shorter near the ends.
    width = np.minimum(idx + m, n - 1) - np.maximum(idx - m, 0)
    return float(np.mean(np.log(n / width * span)))


def entropy_power_ratio(x, method: str = "ggd") -> float:
    """Estimate ``N(X)/σ²`` of data ``x`` (σ² = mean square, as the benchmark normalises by ‖u‖²).

    Parameters
    ----------
    x
        Samples (any shape; numpy or torch).
    method
        ``"ggd"`` (default): fit a generalized Gaussian's shape by the moment ratio (E|x|)²/E[x²] and use its
        closed-form entropy. Robust with quantized data (bf16 updates have many ties) and exact for the
        Gaussian and Laplace families; on Student-t3 (2^20 samples) it gives ≈ 0.66 against the true 0.677.
        It is a model fit, so the resulting curve is an estimate of the bound, not a guaranteed bound.
        ``"spacing"``: Vasicek's m-spacing estimator (m = √n), nonparametric and consistent, but biased low
        on small or tied samples.

    The result is clipped to (0, 1]: no source of a given variance has more entropy than the Gaussian.
    """
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64).reshape(-1)
    if arr.size < 2:
        return 1.0
    m2 = float(np.mean(arr * arr))
    if m2 <= 0:
        return 1.0
    if method == "ggd":
        ratio = ggd_entropy_power_ratio(ggd_fit_shape(arr))
    elif method == "spacing":
        h = _spacing_entropy(arr)
        ratio = math.exp(2.0 * h) / (2.0 * math.pi * math.e * m2)
    else:
        raise ConfigError(f"unknown entropy estimator {method!r}; use 'ggd' or 'spacing'")
    return float(min(1.0, max(ratio, 1e-12)))


def slb_dr(rate: float | np.ndarray, ratio: float) -> np.ndarray:
    """Shannon lower bound of one memoryless block, relative: ``N/σ² · 2^(−2R)``."""
    return ratio * gaussian_dr(rate)


def slb_blocks(rate: float | np.ndarray, variances, sizes=None, ratios=None) -> np.ndarray:
    """Memoryless lower bound for independent blocks with entropy powers ``N_j = ratio_j · σ_j²``.

    Each block obeys D_j ≥ N_j·2^(−2R_j) with R_j ≥ 0; minimising Σ n_j D_j over the rate split is reverse
    water-filling over the N_j, so the bound is ``Σ n_j min(θ, N_j) / Σ n_j σ_j²``. With one block it reduces
    to ``N/σ² · 2^(−2R)``.
    """
    var = np.asarray(variances, dtype=np.float64).reshape(-1)
    n = np.ones_like(var) if sizes is None else np.asarray(sizes, dtype=np.float64).reshape(-1)
    rat = np.ones_like(var) if ratios is None else np.asarray(ratios, dtype=np.float64).reshape(-1)
    if rat.shape != var.shape:
        raise ConfigError(f"{rat.size} entropy-power ratios for {var.size} blocks")
    if np.any(rat <= 0) or np.any(rat > 1 + 1e-9):
        raise ConfigError("entropy-power ratios N/σ² must lie in (0, 1]")
    power = var * rat
    energy = float(np.sum(n * var))
    # water-filling over N_j, renormalised from Σ n N to Σ n σ²
    return waterfill_dr(rate, power, n) * float(np.sum(n * power)) / energy

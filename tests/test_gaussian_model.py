"""The Gaussian TopK model of fedsqueeze.analysis.gaussian against Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest

from fedsqueeze.analysis.gaussian import (
    D,
    finite_interval_kept,
    general_mean_dropped,
    optimal_allocation,
    predict_rel_error,
)

# 8e6 samples: the standard error of the dropped-energy mean is below 4e-4, so 1e-3 is a 2.5-sigma check.
_RNG = np.random.default_rng(12345)
_U = _RNG.standard_normal(8_000_000)
_U2 = np.sort(_U * _U)


@pytest.mark.parametrize("rho", [0.01, 0.02, 0.05, 0.1, 0.2])
def test_closed_form_matches_monte_carlo(rho: float) -> None:
    n = _U2.size
    kept = round(rho * n)
    mc = _U2[: n - kept].sum() / n
    assert abs(D(rho) - mc) < 1e-3


def test_closed_form_endpoints_and_table() -> None:
    assert D(0.0) == 1.0 and D(1.0) == 0.0
    assert D(0.02) == pytest.approx(0.8560, abs=1e-4)  # the table of docs/flm-topk.md §4
    r = np.linspace(0.01, 0.5, 50)
    assert (np.diff(D(r)) < 0).all() and (np.diff(D(r), 2) > 0).all()


def test_general_mean_reduces_and_matches_monte_carlo() -> None:
    assert general_mean_dropped(0.05, 0.0, 1.0) == pytest.approx(D(0.05), abs=1e-9)
    mu, sigma, rho = 0.7, 2.0, 0.1
    v = mu + sigma * _U[:2_000_000]
    t = np.quantile(np.abs(v), 1 - rho)
    mc = float(np.mean(v * v * (np.abs(v) <= t)))
    assert general_mean_dropped(rho, mu, sigma) == pytest.approx(mc, rel=5e-3)


def test_finite_interval_matches_order_statistics() -> None:
    L, k, trials = 64, 6, 20_000
    x = _U[: L * trials].reshape(trials, L) ** 2
    mc = np.sort(x, axis=1)[:, -k:].sum(axis=1).mean()
    assert finite_interval_kept(k, L) == pytest.approx(mc, rel=1e-2)
    assert finite_interval_kept(k, L) < L * (1 - D(k / L))  # the asymptotic form over-states kept energy


def test_allocation_equal_sigmas_is_even_and_unequal_beats_even() -> None:
    L, bits = 1024, 20.0
    budget = 16 * 0.05 * L * bits
    eq = optimal_allocation([1.0] * 16, L, budget, bits)
    assert eq.k.max() - eq.k.min() <= 1
    sig = np.geomspace(0.05, 2.0, 16)
    opt = optimal_allocation(sig, L, budget, bits)
    assert abs(int(opt.k.sum()) - int(budget / bits)) <= 1
    even = predict_rel_error(sig, L, int(budget / bits) // 16)
    assert opt.rel_error < even

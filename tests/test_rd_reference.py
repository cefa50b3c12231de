"""Rate–distortion reference curves: Gaussian, reverse water-filling, Shannon lower bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze import ConfigError, UsageError
from fedsqueeze.analysis.rd import (
    entropy_power_ratio,
    entropy_power_ratio_closed_form,
    gaussian_dr,
    ggd_entropy_power_ratio,
    ggd_fit_shape,
    slb_blocks,
    slb_dr,
    waterfill_dr,
    waterfill_rate,
    waterfill_theta,
)


def test_gaussian_curve_is_six_db_per_bit():
    r = np.array([0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(gaussian_dr(r), [1.0, 0.5, 0.25, 0.0625])
    assert 10 * math.log10(gaussian_dr(1.0) / gaussian_dr(2.0)) == pytest.approx(6.0206, abs=1e-4)


def test_waterfilling_iid_equals_gaussian():
    assert float(waterfill_dr(0.5, [3.0], [1000])) == pytest.approx(0.50, abs=1e-9)
    rates = np.array([0.1, 0.25, 1.0, 2.0])
    np.testing.assert_allclose(waterfill_dr(rates, [2.0, 2.0, 2.0], [5, 7, 1]), gaussian_dr(rates), rtol=1e-9)


def test_waterfilling_two_halves_variance_ratio_100():
    # θ = 25: only the loud half gets bits, D = (1 + 25) / 101
    assert float(waterfill_dr(0.5, [1.0, 100.0], [1, 1])) == pytest.approx(26 / 101, rel=1e-9)
    assert float(waterfill_dr(0.5, [1.0, 100.0], [1, 1])) == pytest.approx(0.26, abs=0.005)
    assert float(waterfill_theta(0.5, [1.0, 100.0], [1, 1])) == pytest.approx(25.0, rel=1e-9)


def test_waterfilling_96_log_uniform_blocks():
    q = (np.arange(96) + 0.5) / 96
    sig = 10 ** (1.5 * q)  # σ log-uniform over 1.5 decades
    assert float(waterfill_dr(0.5, sig**2, np.full(96, 16384))) == pytest.approx(0.18, abs=0.01)


def test_waterfilling_is_vectorized_and_monotone():
    var = np.array([0.01, 0.3, 1.0, 7.0])
    rates = np.linspace(0, 4, 41)
    d = waterfill_dr(rates, var, [10, 20, 30, 40])
    assert d.shape == rates.shape
    assert d[0] == pytest.approx(1.0)
    assert np.all(np.diff(d) < 0)


@settings(max_examples=60, deadline=None)
@given(
    var=st.lists(st.floats(1e-4, 1e4), min_size=1, max_size=12),
    rate=st.floats(0.0, 6.0),
    data=st.data(),
)
def test_waterfilling_inverse_and_gaussian_dominance(var, rate, data):
    sizes = data.draw(st.lists(st.integers(1, 1000), min_size=len(var), max_size=len(var)))
    theta = waterfill_theta(rate, var, sizes)
    r, d = waterfill_rate(theta, var, sizes)
    assert float(r) == pytest.approx(rate, abs=1e-9)
    # The Gaussian curve (equal rate everywhere) is one feasible allocation, so water-filling is never worse.
    assert float(d) <= float(gaussian_dr(rate)) * (1 + 1e-9) + 1e-15
    # and never below the bound of the single loudest block getting every bit
    assert float(d) >= 0


def test_waterfilling_rejects_bad_input():
    with pytest.raises(ConfigError):
        waterfill_dr(0.5, [1.0, 2.0], [1])
    with pytest.raises(ConfigError):
        waterfill_dr(0.5, [0.0, 0.0], [1, 1])
    with pytest.raises(UsageError, match="rates must be finite"):
        waterfill_dr(-1.0, [1.0])
    with pytest.raises(UsageError, match="variances must be finite"):  # NaN data is not a setting
        waterfill_dr(0.5, [float("nan")])


def test_slb_closed_forms():
    assert entropy_power_ratio_closed_form("gaussian") == 1.0
    assert entropy_power_ratio_closed_form("laplace") == pytest.approx(0.865, abs=5e-4)
    assert entropy_power_ratio_closed_form("student-t", 3.0) == pytest.approx(0.677, abs=5e-4)
    assert float(slb_dr(1.0, 0.865)) == pytest.approx(0.865 / 4)
    with pytest.raises(ConfigError):
        entropy_power_ratio_closed_form("cauchy")


def test_ggd_family_matches_closed_forms():
    assert ggd_entropy_power_ratio(2.0) == pytest.approx(1.0, rel=1e-9)
    assert ggd_entropy_power_ratio(1.0) == pytest.approx(math.e / math.pi, rel=1e-9)
    assert ggd_entropy_power_ratio(0.5) < ggd_entropy_power_ratio(1.0)


@pytest.mark.parametrize(
    ("family", "draw", "tol"),
    [
        ("gaussian", lambda g, n: g.standard_normal(n), 0.01),
        ("laplace", lambda g, n: g.laplace(size=n), 0.015),
        # t3 has an infinite fourth moment: the sample variance itself wanders, hence the wider tolerance
        ("student-t", lambda g, n: g.standard_t(3, n) / math.sqrt(3), 0.05),
    ],
)
def test_entropy_power_estimators(family, draw, tol):
    x = draw(np.random.default_rng(7), 1 << 18) * 3.7  # the ratio is scale-free
    exact = entropy_power_ratio_closed_form(family)
    assert entropy_power_ratio(x, "spacing") == pytest.approx(exact, abs=tol)
    # the GGD fit is exact for Gaussian/Laplace and close for t3 (a model, not the t family)
    assert entropy_power_ratio(x, "ggd") == pytest.approx(exact, abs=tol)
    assert 0 < entropy_power_ratio(x) <= 1


def test_ggd_shape_fit():
    g = np.random.default_rng(0)
    assert ggd_fit_shape(g.standard_normal(1 << 16)) == pytest.approx(2.0, abs=0.1)
    assert ggd_fit_shape(g.laplace(size=1 << 16)) == pytest.approx(1.0, abs=0.06)
    with pytest.raises(ConfigError):
        entropy_power_ratio(g.standard_normal(100), "histogram-of-dreams")


def test_slb_blocks_reduces_to_single_block_and_lies_below_waterfilling():
    rates = np.array([0.1, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(
        slb_blocks(rates, [4.0], [100], [0.677]), 0.677 * gaussian_dr(rates), rtol=1e-9
    )
    var, n, ratio = [0.1, 1.0, 10.0], [5, 5, 5], [0.865, 0.677, 1.0]
    assert np.all(slb_blocks(rates, var, n, ratio) <= waterfill_dr(rates, var, n) + 1e-12)
    np.testing.assert_allclose(slb_blocks(rates, var, n, [1, 1, 1]), waterfill_dr(rates, var, n), rtol=1e-9)
    with pytest.raises(ConfigError):
        slb_blocks(0.5, var, n, [1.2, 1, 1])

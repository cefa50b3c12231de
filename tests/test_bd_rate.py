"""BD-rate (fedsqueeze.analysis.bd_rate) against hand-computed cases, and its edge cases."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from fedsqueeze.analysis.bd_rate import METHODS, bd_rate, compare, front, log_rate_at
from fedsqueeze.errors import UsageError

ACC = [0.5, 0.6, 0.7, 0.8]
RATES = [1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_half_the_rate_at_every_accuracy_is_minus_50_percent(method) -> None:
    res = bd_rate(RATES, ACC, [r * 0.5 for r in RATES], ACC, method=method)
    assert res.percent == pytest.approx(-50.0, abs=1e-9)
    assert res.accuracy_range == (0.5, 0.8) and res.reason is None and res.mode == "curve"
    assert (res.points, res.reference_points) == (4, 4)
    twice = bd_rate(RATES, ACC, [r * 2 for r in RATES], ACC, method=method)
    assert twice.percent == pytest.approx(100.0, abs=1e-9)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_linear_log_rate_curves_by_hand(method) -> None:
    # reference ln r = 10 a − 5 on a ∈ [0.5, 0.8]; test ln r = 8 a − 4 on a ∈ [0.55, 0.85].
    # Both interpolants reproduce a line exactly. Overlap [0.55, 0.8]; the difference is 1 − 2a, whose mean
    # over the overlap is 1 − 2 · 0.675 = −0.35, so BD-rate = (e^−0.35 − 1) · 100 = −29.53 %.
    ra, ta = np.array(ACC), np.array([0.55, 0.65, 0.75, 0.85])
    res = bd_rate(np.exp(10 * ra - 5), ra, np.exp(8 * ta - 4), ta, method=method)
    assert res.accuracy_range == pytest.approx((0.55, 0.8))
    assert res.percent == pytest.approx(100 * (math.exp(-0.35) - 1), rel=1e-9)
    # swapping the curves negates the mean log difference over the same interval
    back = bd_rate(np.exp(8 * ta - 4), ta, np.exp(10 * ra - 5), ra, method=method)
    assert (1 + res.percent / 100) * (1 + back.percent / 100) == pytest.approx(1.0)


def test_agrees_with_the_bjontegaard_package_on_a_curved_case() -> None:
    # Numbers cross-checked once against `bjontegaard` 1.3.0 (PyPI; bd_rate(..., min_overlap=0)), which
    # integrates the same interpolants: pchip -27.986492699659806, cubic -26.30563570107244.
    r1, a1 = [0.3, 0.6, 1.1, 2.3], [0.61, 0.66, 0.70, 0.72]
    r2, a2 = [0.2, 0.5, 0.9, 2.0], [0.60, 0.67, 0.705, 0.73]
    assert bd_rate(r1, a1, r2, a2).percent == pytest.approx(-27.986492699659806, rel=1e-9)
    assert bd_rate(r1, a1, r2, a2, method="cubic").percent == pytest.approx(-26.30563570107244, rel=1e-8)


def test_curves_that_do_not_overlap_in_accuracy_give_none_with_a_reason() -> None:
    res = bd_rate([1, 2], [0.5, 0.6], [1, 2], [0.7, 0.8])
    assert res.percent is None and res.accuracy_range is None
    assert "do not overlap" in res.reason and "[0.5, 0.6]" in res.reason and "[0.7, 0.8]" in res.reason
    touching = bd_rate([1, 2], [0.5, 0.6], [1, 2], [0.6, 0.8])  # one shared value is no interval
    assert touching.percent is None and "do not overlap" in touching.reason


def test_too_few_points_give_none_with_a_reason() -> None:
    one = bd_rate([1.0], [0.7], RATES, ACC)
    assert (
        one.percent is None
        and "reference curve has 1 point(s)" in one.reason
        and "pchip needs 2" in one.reason
    )
    three = bd_rate(RATES, ACC, [1, 2, 4], [0.5, 0.6, 0.7], method="cubic")
    assert (
        three.percent is None
        and "test curve has 3 point(s)" in three.reason
        and "cubic needs 4" in three.reason
    )
    assert bd_rate(RATES, ACC, [1, 2, 4], [0.5, 0.6, 0.7]).percent is not None  # pchip: 3 are plenty
    empty = compare([], [], RATES, ACC)
    assert empty.percent is None and "no valid point" in empty.reason
    with pytest.raises(UsageError, match="method"):
        bd_rate(RATES, ACC, RATES, ACC, method="linear")


def test_non_monotonic_accuracy_uses_the_pareto_front() -> None:
    # (2.0, 0.55) costs more than (1.0, 0.6) and is less accurate: dominated, dropped; so is (5.0, 0.7)
    # (as accurate as the cheaper 4.0) and the less accurate of two points at rate 8.
    noisy_r = [8.0, 2.0, 1.0, 4.0, 5.0, 8.0, 16.0]
    noisy_a = [0.75, 0.55, 0.6, 0.7, 0.7, 0.8, 0.85]
    r, a = front(noisy_r, noisy_a)
    assert r.tolist() == [1.0, 4.0, 8.0, 16.0] and a.tolist() == [0.6, 0.7, 0.8, 0.85]
    order = list(range(len(noisy_r)))
    random.Random(0).shuffle(order)
    r2, a2 = front([noisy_r[i] for i in order], [noisy_a[i] for i in order])
    assert r2.tolist() == r.tolist() and a2.tolist() == a.tolist()  # input order does not matter
    clean = bd_rate(RATES, ACC, r, a)
    res = bd_rate(RATES, ACC, noisy_r, noisy_a)
    assert res.percent == clean.percent and res.points == 4
    # non-finite values and rates <= 0 are not points
    r3, _ = front([1.0, float("nan"), 0.0, -1.0, 2.0], [0.5, 0.9, 0.95, 0.99, float("inf")])
    assert r3.tolist() == [1.0]


def test_a_single_point_reference_is_the_rate_ratio_at_its_accuracy() -> None:
    ta = np.array([0.55, 0.65, 0.75, 0.85])
    tr = np.exp(8 * ta - 4)  # ln r = 8 a − 4: rate e^1.2 at a = 0.65
    res = compare([10.0], [0.65], tr, ta)
    assert res.mode == "point" and res.accuracy_range == (0.65, 0.65)
    assert res.percent == pytest.approx(100 * (math.exp(1.2) / 10 - 1))
    assert log_rate_at(tr, ta, 0.65) == pytest.approx(1.2)
    above = compare([10.0], [0.95], tr, ta)
    assert above.percent is None and "0.95 is above the test curve's range" in above.reason
    below = compare([10.0], [0.5], tr, ta)
    assert below.percent is None and "below" in below.reason
    # a single test point against a reference curve: the same ratio, the other way round
    mirrored = compare(tr, ta, [10.0], [0.65])
    assert mirrored.percent == pytest.approx(100 * (10 / math.exp(1.2) - 1))
    # two single points compare only at the same accuracy
    assert compare([4.0], [0.7], [1.0], [0.7]).percent == pytest.approx(-75.0)
    apart = compare([4.0], [0.7], [1.0], [0.71])
    assert apart.percent is None and "different accuracies" in apart.reason
    # curve against curve goes to bd_rate
    assert compare(RATES, ACC, [r / 2 for r in RATES], ACC).percent == pytest.approx(-50.0)
    # the curve side still needs the method's points
    few = compare([10.0], [0.65], tr[:3], ta[:3], method="cubic")
    assert few.percent is None and "cubic needs 4" in few.reason


def test_to_dict_has_the_json_fields() -> None:
    d = bd_rate(RATES, ACC, [r / 2 for r in RATES], ACC).to_dict()
    assert d["bd_rate_percent"] == pytest.approx(-50.0) and d["accuracy_range"] == [0.5, 0.8]
    assert {"reason", "mode", "method", "points", "reference_points", "bound", "bound_percent"} <= set(d)


def test_fronts_that_share_no_accuracy_give_a_one_sided_bound() -> None:
    # a single test point more accurate than the whole reference curve, at 1.5 bits: it reaches the
    # reference's best (0.8 at 8 bits) at 1.5 bits or less, so the BD-rate is at most 1.5 / 8 - 1
    ahead = compare(RATES, ACC, [1.5], [0.9])
    assert ahead.percent is None and "above" in ahead.reason
    assert ahead.bound == "at most" and ahead.bound_percent == pytest.approx(100 * (1.5 / 8 - 1))
    # behind the whole curve: the reference reaches the test's 0.45 at its cheapest 1 bit or less
    behind = compare(RATES, ACC, [3.0], [0.45])
    assert behind.bound == "at least" and behind.bound_percent == pytest.approx(200.0)
    # two single points at different accuracies; a curve above a single reference point
    assert compare([4.0], [0.7], [1.0], [0.71]).bound_percent == pytest.approx(-75.0)
    assert compare([4.0], [0.7], [2.0, 8.0], [0.75, 0.9]).bound_percent == pytest.approx(-50.0)
    # two curves apart: the test's cheapest point against the reference's top point
    up = compare(RATES, ACC, [2.0, 4.0], [0.85, 0.9])
    assert up.mode == "curve" and up.bound == "at most" and up.bound_percent == pytest.approx(-75.0)
    # a computed BD-rate, or fronts that overlap but fall short for another reason, carry no bound
    assert compare(RATES, ACC, [r / 2 for r in RATES], ACC).bound is None
    few = compare([10.0], [0.65], [1.0, 2.0, 4.0], [0.55, 0.65, 0.75], method="cubic")
    assert few.percent is None and few.bound is None
    assert compare([], [], RATES, ACC).bound is None

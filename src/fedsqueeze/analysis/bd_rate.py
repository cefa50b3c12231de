"""Bjøntegaard delta rate (BD-rate) of rate–accuracy curves: how much more (or less) rate a test codec needs
than a reference codec for the same accuracy, averaged over the accuracy range both curves cover.

Accuracy plays the role PSNR plays for video codecs (Bjøntegaard, VCEG-M33, 2001). For each curve the log
rate is interpolated as a function of accuracy, the difference of the two interpolants is averaged over the
overlapping accuracy interval ``[lo, hi]`` and turned into a percentage::

    mean_diff = (∫_lo^hi ln r_test(a) da − ∫_lo^hi ln r_ref(a) da) / (hi − lo)
    BD-rate % = (exp(mean_diff) − 1) · 100

Negative is better: the test codec needs that many percent less rate for the same accuracy. The base of the
logarithm cancels out (``log10`` with ``10**`` gives the same number).

Interpolation (``method``):

- ``"pchip"`` (default): the shape-preserving piecewise cubic Hermite interpolant through the points
  (``scipy.interpolate.PchipInterpolator``), integrated exactly; needs 2 points per curve. It does not
  overshoot between points, which the classic cubic fit can do on curves with few, uneven points.
- ``"cubic"``: the classic BD-rate, a least-squares cubic polynomial of log rate in accuracy (exact through 4
  points), integrated exactly; needs 4 points per curve.

Preparing a curve (:func:`front`): points with a non-finite value or a rate ``<= 0`` are dropped, then the
curve is reduced to its Pareto front: sorted by rate, a point is kept only if it is strictly more accurate
than every cheaper point. A point that costs more and is no more accurate than a cheaper one (noise over
seeds, a saturated metric) is dominated, and it would make log rate a non-function of accuracy. The front
has strictly increasing rate and accuracy, which the interpolation needs.

A result that cannot be computed is ``percent=None`` with a ``reason``, never an exception: too few points
on a front, or accuracy ranges that do not overlap (or touch in one value only).

Single points (:func:`compare`): a fixed-rate codec, or dense fp32, has one point, and a curve can reduce
to one point on its front. Against a single point the BD-rate is the rate ratio at equal accuracy: the other
curve's rate interpolated at that point's accuracy ``a0``, ``(r_test(a0) / r_ref(a0) − 1) · 100``, if ``a0``
lies within the other curve's accuracy range (else ``None`` with the reason); two single points compare
only at equal accuracy. Such results have ``mode="point"`` and ``accuracy_range = [a0, a0]``.
:func:`bd_rate` itself compares curves only and answers ``None`` for a curve with fewer points than the
method needs.

Bounds (:func:`compare`): when the two fronts do not share an accuracy, the BD-rate is ``None`` but one side
is still ahead, and the rate ratio at the edge is a bound, assuming only that accuracy does not fall with
rate. If every test point is at least as accurate as the reference's best (``a_ref_max``), the test reaches
``a_ref_max`` at its cheapest point's rate or less, where the reference needs its top point's rate:
``bound = "at most"``, ``bound_percent = (r_test_min / r_ref(a_ref_max) − 1) · 100``. If every test point is
at most as accurate as the reference's cheapest, the reference reaches the test's best accuracy at its
cheapest rate or less: ``bound = "at least"``, ``(r_test(a_test_max) / r_ref_min − 1) · 100``. Otherwise (or
with a computed BD-rate) both are ``None``.

Lower-is-better metrics (``higher_is_better=False``, e.g. a held-out loss): every function negates the
metric internally, so "more accurate" reads "lower", the Pareto front keeps a point only if its metric is
strictly lower than every cheaper point's, and the bounds assume the metric does not get worse with rate.
Results and messages are in the metric's own values: ``accuracy_range`` is ``[lo, hi]`` of the metric,
:func:`front` returns the metric falling as the rate rises, and the result records the direction
(``higher_is_better``; ``metric_higher_is_better`` in :meth:`BDRate.to_dict`). The BD-rate itself (rate at
equal metric) and the bound's ``"at most"`` / ``"at least"`` keep their meaning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["METHODS", "BDRate", "bd_rate", "compare", "front", "log_rate_at"]

#: Interpolation methods and the points each needs per curve.
METHODS: dict[str, int] = {"pchip": 2, "cubic": 4}
_EQUAL = 1e-12  # two single points "at the same accuracy" up to float rounding


@dataclasses.dataclass(frozen=True)
class BDRate:
    """A BD-rate result.

    Attributes
    ----------
    percent
        The BD-rate in percent (negative: the test needs less rate), or ``None`` with :attr:`reason`.
    accuracy_range
        ``(lo, hi)``, the accuracy interval averaged over (``(a0, a0)`` for a single point), or ``None``.
    reason
        Why :attr:`percent` is ``None`` (else ``None``).
    mode
        ``"curve"`` (two curves) or ``"point"`` (one side a single point: the rate ratio at its accuracy).
    method
        The interpolation method.
    points, reference_points
        Points on the test's and the reference's Pareto front.
    bound, bound_percent
        When :attr:`percent` is ``None`` because the fronts share no accuracy: ``"at most"`` or
        ``"at least"`` and the rate ratio at the edge in percent (module doc), else ``None``.
    higher_is_better
        The metric's direction (``False``: lower is better, e.g. a loss; module doc).
    """

    percent: float | None
    accuracy_range: tuple[float, float] | None
    reason: str | None
    mode: str
    method: str
    points: int
    reference_points: int
    bound: str | None = None
    bound_percent: float | None = None
    higher_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "bd_rate_percent": self.percent,
            "accuracy_range": None if self.accuracy_range is None else list(self.accuracy_range),
            "reason": self.reason,
            "mode": self.mode,
            "method": self.method,
            "points": self.points,
            "reference_points": self.reference_points,
            "bound": self.bound,
            "bound_percent": self.bound_percent,
            "metric_higher_is_better": self.higher_is_better,
        }


def _check_method(method: str) -> int:
    if method not in METHODS:
        raise UsageError(f"unknown BD-rate method {method!r}; use one of {', '.join(METHODS)}")
    return METHODS[method]


def _sign(higher_is_better: bool) -> float:
    """``1.0`` for a higher-is-better metric, ``-1.0`` for a lower-is-better one (the internal negation)."""
    return 1.0 if higher_is_better else -1.0


def _signed_front(
    rates: Sequence[float], accuracies: Sequence[float], sign: float
) -> tuple[np.ndarray, np.ndarray]:
    """The Pareto front of ``(rates, sign · accuracies)``: both strictly increasing (module doc)."""
    r = np.asarray(rates, dtype=np.float64).reshape(-1)
    a = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if r.shape != a.shape:
        raise UsageError(f"a curve needs as many rates as accuracies, got {r.size} and {a.size}")
    if sign < 0:
        a = -a
    ok = np.isfinite(r) & np.isfinite(a) & (r > 0)
    r, a = r[ok], a[ok]
    order = np.lexsort((-a, r))  # by rate, the most accurate first among equal rates
    keep_r: list[float] = []
    keep_a: list[float] = []
    for i in order:
        if not keep_a or a[i] > keep_a[-1]:  # a later point at an equal rate is never more accurate
            keep_r.append(float(r[i]))
            keep_a.append(float(a[i]))
    return np.array(keep_r), np.array(keep_a)


def front(
    rates: Sequence[float], accuracies: Sequence[float], *, higher_is_better: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The curve's Pareto front as ``(rates, accuracies)`` (see the module doc): rates strictly increasing,
    accuracies strictly increasing (strictly decreasing with ``higher_is_better=False``).

    Points with a non-finite rate or accuracy, or a rate ``<= 0``, are dropped first.
    """
    sign = _sign(higher_is_better)
    r, a = _signed_front(rates, accuracies, sign)
    return r, (a if sign > 0 else -a)


def _interpolant(acc: np.ndarray, log_rate: np.ndarray, method: str) -> Any:
    """An object with ``__call__(a)`` and ``integrate(lo, hi)`` for log rate as a function of accuracy."""
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator

        return PchipInterpolator(acc, log_rate, extrapolate=False)
    poly = np.polynomial.Polynomial.fit(acc, log_rate, 3)  # domain-scaled: well conditioned
    prim = poly.integ()

    class _Cubic:
        def __call__(self, x: float) -> float:
            return float(poly(x))

        def integrate(self, lo: float, hi: float) -> float:
            return float(prim(hi) - prim(lo))

    return _Cubic()


def log_rate_at(
    rates: Sequence[float],
    accuracies: Sequence[float],
    accuracy: float,
    *,
    method: str = "pchip",
    higher_is_better: bool = True,
) -> float | None:
    """``ln`` of the curve's rate at ``accuracy`` (interpolated on its front), ``None`` outside its accuracy
    range or with fewer points than ``method`` needs."""
    need = _check_method(method)
    sign = _sign(higher_is_better)
    r, a = _signed_front(rates, accuracies, sign)
    accuracy = sign * accuracy
    if len(r) == 1 and accuracy == a[0]:
        return float(np.log(r[0]))
    if len(r) < need or not a[0] <= accuracy <= a[-1]:
        return None
    return float(_interpolant(a, np.log(r), method)(accuracy))


def _value(x: float, sign: float) -> float:
    """A signed front's value back in the metric's own terms (``+ 0.0``: no ``-0``)."""
    return float(sign * x) + 0.0


def _span(a: np.ndarray, sign: float) -> str:
    lo, hi = sorted((_value(a[0], sign), _value(a[-1], sign)))
    return f"[{lo:.6g}, {hi:.6g}]"


def _range(lo: float, hi: float, sign: float) -> tuple[float, float]:
    """A signed interval ``[lo, hi]`` as ``(lo, hi)`` of the metric itself."""
    return (float(lo), float(hi)) if sign > 0 else (_value(hi, sign), _value(lo, sign))


def _none(reason: str, mode: str, method: str, n: int, n_ref: int, sign: float) -> BDRate:
    return BDRate(None, None, reason, mode, method, n, n_ref, higher_is_better=sign > 0)


def bd_rate(
    ref_rates: Sequence[float],
    ref_accuracies: Sequence[float],
    test_rates: Sequence[float],
    test_accuracies: Sequence[float],
    *,
    method: str = "pchip",
    higher_is_better: bool = True,
) -> BDRate:
    """BD-rate of the test curve against the reference curve (both as rates and accuracies; any order).

    Both curves are reduced to their Pareto fronts (:func:`front`) and need :data:`METHODS` ``[method]``
    points each; otherwise, or when their accuracy ranges do not overlap, the result is ``None`` with a
    reason. For a single-point side use :func:`compare`. ``higher_is_better=False``: the metric is lower
    is better (module doc).
    """
    need = _check_method(method)
    sign = _sign(higher_is_better)
    rr, ra = _signed_front(ref_rates, ref_accuracies, sign)
    tr, ta = _signed_front(test_rates, test_accuracies, sign)
    return _bd_rate_fronts(rr, ra, tr, ta, method, need, sign)


def _bd_rate_fronts(
    rr: np.ndarray, ra: np.ndarray, tr: np.ndarray, ta: np.ndarray, method: str, need: int, sign: float
) -> BDRate:
    """:func:`bd_rate` on two signed Pareto fronts."""
    for what, n in (("reference", len(rr)), ("test", len(tr))):
        if n < need:
            return _none(
                f"the {what} curve has {n} point(s) on its Pareto front; {method} needs {need}",
                "curve", method, len(tr), len(rr), sign,
            )  # fmt: skip
    lo, hi = max(ra[0], ta[0]), min(ra[-1], ta[-1])
    if not hi > lo:
        return _none(
            f"the accuracy ranges do not overlap (reference {_span(ra, sign)}, test {_span(ta, sign)})",
            "curve", method, len(tr), len(rr), sign,
        )  # fmt: skip
    f_ref = _interpolant(ra, np.log(rr), method)
    f_test = _interpolant(ta, np.log(tr), method)
    mean_diff = (float(f_test.integrate(lo, hi)) - float(f_ref.integrate(lo, hi))) / (hi - lo)
    return BDRate(
        100.0 * math.expm1(mean_diff), _range(lo, hi, sign), None, "curve", method, len(tr), len(rr),
        higher_is_better=sign > 0,
    )  # fmt: skip


def _bound(rr: np.ndarray, ra: np.ndarray, tr: np.ndarray, ta: np.ndarray) -> tuple[str, float] | None:
    """The one-sided rate ratio of two signed fronts that share no accuracy (module doc), else ``None``."""
    if ta[0] >= ra[-1]:  # the test's cheapest point is already as accurate as the reference's best
        return "at most", 100.0 * math.expm1(math.log(tr[0]) - math.log(rr[-1]))
    if ta[-1] <= ra[0]:  # the reference's cheapest point is already as accurate as the test's best
        return "at least", 100.0 * math.expm1(math.log(tr[-1]) - math.log(rr[0]))
    return None


def compare(
    ref_rates: Sequence[float],
    ref_accuracies: Sequence[float],
    test_rates: Sequence[float],
    test_accuracies: Sequence[float],
    *,
    method: str = "pchip",
    higher_is_better: bool = True,
) -> BDRate:
    """:func:`bd_rate`, or the rate ratio at equal accuracy when one front is a single point (module doc).

    An empty front (no valid point) gives ``None`` with the reason. A ``None`` between fronts that share no
    accuracy carries a bound (``bound``, ``bound_percent``; module doc). ``higher_is_better=False``: the
    metric is lower is better (module doc).
    """
    need = _check_method(method)
    sign = _sign(higher_is_better)
    rr, ra = _signed_front(ref_rates, ref_accuracies, sign)
    tr, ta = _signed_front(test_rates, test_accuracies, sign)
    res = _compare_fronts(rr, ra, tr, ta, method, need, sign)
    if res.percent is not None or res.points == 0 or res.reference_points == 0:
        return res
    bound = _bound(rr, ra, tr, ta)
    return res if bound is None else dataclasses.replace(res, bound=bound[0], bound_percent=bound[1])


def _compare_fronts(
    rr: np.ndarray, ra: np.ndarray, tr: np.ndarray, ta: np.ndarray, method: str, need: int, sign: float
) -> BDRate:
    """:func:`compare` on the two signed Pareto fronts, without the bound."""
    n, n_ref = len(tr), len(rr)
    if n == 0 or n_ref == 0:
        what = "test" if n == 0 else "reference"
        return _none(f"the {what} curve has no valid point", "point", method, n, n_ref, sign)
    if n > 1 and n_ref > 1:
        return _bd_rate_fronts(rr, ra, tr, ta, method, need, sign)
    if n == 1 and n_ref == 1:
        if abs(ta[0] - ra[0]) > _EQUAL:
            return _none(
                f"two single points at different accuracies (reference {_value(ra[0], sign):.6g}, "
                f"test {_value(ta[0], sign):.6g})",
                "point", method, n, n_ref, sign,
            )  # fmt: skip
        a0, log_ref, log_test = float(ra[0]), float(np.log(rr[0])), float(np.log(tr[0]))
    else:
        single_is_ref = n_ref == 1
        a0 = float(ra[0] if single_is_ref else ta[0])
        cr, ca = (tr, ta) if single_is_ref else (rr, ra)
        other = "test" if single_is_ref else "reference"
        if len(cr) < need:
            return _none(
                f"the {other} curve has {len(cr)} point(s) on its Pareto front; {method} needs {need}",
                "point", method, n, n_ref, sign,
            )  # fmt: skip
        if not ca[0] <= a0 <= ca[-1]:
            side = "below" if (a0 < ca[0]) == (sign > 0) else "above"  # in the metric's own values
            return _none(
                f"the single point's accuracy {_value(a0, sign):.6g} is {side} the {other} curve's range "
                f"{_span(ca, sign)}",
                "point", method, n, n_ref, sign,
            )  # fmt: skip
        log_curve = float(_interpolant(ca, np.log(cr), method)(a0))
        log_point = float(np.log(rr[0] if single_is_ref else tr[0]))
        log_ref, log_test = (log_point, log_curve) if single_is_ref else (log_curve, log_point)
    a0 = _value(a0, sign) if sign < 0 else a0
    return BDRate(
        100.0 * math.expm1(log_test - log_ref), (a0, a0), None, "point", method, n, n_ref,
        higher_is_better=sign > 0,
    )  # fmt: skip

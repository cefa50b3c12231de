"""Budget filling of ``wf_ecq`` from measured per-interval costs (no bytes here).

The step search of ``_plan`` trusts the GGD model of each interval. Data far from every GGD breaks it:
constant-magnitude values (the first Adam steps of a fresh LoRA adapter are ``±lr`` almost everywhere),
two-point or bounded values. There the real frame size is a step function of Δ: at one step every value falls
into the dead zone (an empty frame), at the next finer one every value codes at a bit or more (over budget),
and the model's interpolation lands on the empty side.

This module replaces the model by measurement at a few trial steps. At each step it quantizes every interval
exactly as the coder will, histograms ``|q|`` per interval, and prices each interval under every class model
(any ``(β, t)`` code may carry an interval: the code only names the probability table the ANS coder uses), so
an interval costs what its best-fitting table charges, not what its RMS suggests. Intervals are then taken in
order of distortion gain per bit until the budget is spent (a greedy knapsack; gains and costs are additive
per interval), the rest are sent at zero rate. The step with the lowest predicted error wins. Work is
O(d) per trial step and runs only when the model-driven frame leaves the budget underused.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ._model import BETAS, Q_MAX, T_MAX, T_STEPS, T_ZERO, class_probabilities
from ._plan import CLASS_BITS, side_bits

__all__ = ["FillPlan", "fill_plan", "trial_steps", "used_codes"]

K_HIST = 64  # |q| histogram bins per interval; |q| >= K_HIST - 1 share the last one
_MIN_P = 2.0**-24  # constriction's categorical models give every symbol at least about this probability
_CHUNK = 1 << 16  # values per vectorized step (whole intervals per step)
_CLASS_CHUNK = 512  # intervals priced against all class tables per matrix product


@dataclass
class FillPlan:
    """Codes chosen at one step and the predicted outcome."""

    log2_step: float
    codes: np.ndarray  # class code per interval, 0 = zero rate
    est_bits: float  # predicted ANS bits of the selection
    est_sqerr: float  # predicted squared error of the whole update


@lru_cache(maxsize=8)
def _cost_table(rho_code: int) -> np.ndarray:
    """Bits of one symbol with ``|q| = k`` (sign included) under every class code, shape ``(codes, K_HIST)``.

    Row ``c - 1`` is class code ``c``. Probabilities are the class's bin masses with the tail beyond
    ``K_HIST - 1`` folded into the last bin, as the coder folds it into ``±M``.
    """
    rho = rho_code / 256.0
    m = K_HIST - 1
    rows = []
    for b in range(len(BETAS)):
        for t in range(T_MAX + 1):
            p = class_probabilities(b, t, m, rho)[m:]  # q = 0..m: p[0] for zero, p[k] one sign of |q| = k
            rows.append(-np.log2(np.maximum(p, _MIN_P)))
    table = np.asarray(rows)
    table.setflags(write=False)
    return table


def _measure(x: np.ndarray, starts, lens, step: float, rq: float, u: np.ndarray | None):
    """Per interval at ``step``: the ``|q|`` histogram and the squared error if coded.

    The error uses each interval's own centroid offsets for ``|q| = 1`` and ``|q| >= 2`` (the coder shares
    them per class, so this is slightly optimistic); with the dither ``u`` it is the plain rounding error.
    """
    n = starts.size
    hist = np.zeros((n, K_HIST))
    sq = np.zeros(n)
    ends = starts + lens
    g0 = 0
    while g0 < n:
        g1 = max(g0 + 1, int(np.searchsorted(ends, starts[g0] + _CHUNK, side="right")))
        a, b = int(starts[g0]), int(ends[g1 - 1])
        xs = x[a:b].astype(np.float64) / step
        if u is not None:
            xs += u[a:b]
        ax = np.abs(xs)
        mg = np.minimum(np.floor(ax + rq), Q_MAX)
        owner = np.repeat(np.arange(g1 - g0), lens[g0:g1])
        hist[g0:g1] = np.bincount(
            owner * K_HIST + np.minimum(mg, K_HIST - 1).astype(np.int64), minlength=(g1 - g0) * K_HIST
        ).reshape(g1 - g0, K_HIST)
        off = ax - mg
        zero = mg == 0
        if u is not None:
            sq[g0:g1] = np.bincount(owner, weights=off * off, minlength=g1 - g0) * step * step
            g0 = g1
            continue
        err = np.bincount(owner[zero], weights=ax[zero] ** 2, minlength=g1 - g0).astype(np.float64)
        for sel in (mg == 1, mg >= 2):  # centroid-corrected spread of the offsets, per interval
            cnt = np.bincount(owner[sel], minlength=g1 - g0)
            s1 = np.bincount(owner[sel], weights=off[sel], minlength=g1 - g0)
            s2 = np.bincount(owner[sel], weights=off[sel] ** 2, minlength=g1 - g0)
            err += s2 - np.divide(s1 * s1, cnt, out=np.zeros(g1 - g0), where=cnt > 0)
        sq[g0:g1] = np.maximum(err, 0.0) * step * step
        g0 = g1
    return hist, sq


def _price(hist: np.ndarray, rho_code: int) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest class code per interval and its bits."""
    table = _cost_table(rho_code)
    codes = np.zeros(hist.shape[0], dtype=np.int64)
    bits = np.zeros(hist.shape[0])
    for a in range(0, hist.shape[0], _CLASS_CHUNK):
        cost = hist[a : a + _CLASS_CHUNK] @ table.T
        j = np.argmin(cost, axis=1)
        codes[a : a + _CLASS_CHUNK] = j + 1
        bits[a : a + _CLASS_CHUNK] = cost[np.arange(j.size), j]
    return codes, bits


def _select(var, sq, codes, bits, n_intervals: int, avail_bits: float) -> tuple[np.ndarray, float, float]:
    """Greedy knapsack: intervals by gain per bit while the frame fits; returns the mask, bits and error."""
    gain = var - sq
    cand = np.flatnonzero((gain > 0) & (bits > 0))
    total = float(np.sum(var))
    if cand.size == 0:
        return np.zeros(var.size, bool), 0.0, total
    order = cand[np.argsort(-gain[cand] / bits[cand], kind="stable")]
    # a class used for the first time also costs its record (alphabet bound and centroids)
    _, first = np.unique(codes[order], return_index=True)
    new_class = np.zeros(order.size)
    new_class[first] = CLASS_BITS
    cost = bits[order] + new_class
    left = avail_bits - side_bits(n_intervals, 0)
    taken = np.zeros(order.size, bool)
    for _ in range(8):  # the fitting prefix, then the same over what still fits after the first misfit
        free = np.flatnonzero(~taken & (cost <= left))
        if free.size == 0:
            break
        spend = np.cumsum(cost[free])
        n = int(np.searchsorted(spend, left, side="right"))
        if n == 0:
            break
        taken[free[:n]] = True
        left -= float(spend[n - 1])
    chosen = order[taken]
    mask = np.zeros(var.size, bool)
    mask[chosen] = True
    return mask, float(np.sum(bits[chosen])), total - float(np.sum(gain[chosen]))


def fill_plan(
    x: np.ndarray,
    starts: np.ndarray,
    lens: np.ndarray,
    rms: np.ndarray,
    rho_code: int,
    avail_bits: float,
    log2_steps,
    u: np.ndarray | None = None,
) -> FillPlan | None:
    """The best measured plan over the trial steps ``log2_steps`` (tried in order, coarse to fine).

    The search stops two steps after the predicted error last improved (it is unimodal in the step in
    practice: coarser steps waste the budget, finer ones spend it on fewer intervals). Returns ``None``
    when no interval can be coded within ``avail_bits``.
    """
    var = rms * rms * lens
    best: FillPlan | None = None
    worse = 0
    for s in log2_steps:
        step = float(np.float32(2.0 ** min(max(s, -140.0), 126.0)))
        hist, sq = _measure(x, starts, lens, step, rho_code / 256.0, u)
        codes, bits = _price(hist, rho_code)
        mask, est_bits, err = _select(var, sq, codes, bits, lens.size, avail_bits)
        if not mask.any():
            worse += best is not None
        elif best is None or err < best.est_sqerr:
            best, worse = FillPlan(float(s), np.where(mask, codes, 0), est_bits, err), 0
        else:
            worse += 1
        if worse >= 2:
            break
    return best


def trial_steps(log2_step: float, top: float) -> list[float]:
    """Half-octave trial steps from one octave above ``log2_step`` down to the class grid's end."""
    finest = top - (T_MAX - T_ZERO) / T_STEPS - 1.0
    out = [log2_step + 1.0 - 0.5 * j for j in range(64)]
    return [s for s in out if s >= finest] or [log2_step]


def used_codes(codes: np.ndarray) -> int:
    """Distinct non-zero class codes."""
    return int(np.unique(codes[codes > 0]).size)

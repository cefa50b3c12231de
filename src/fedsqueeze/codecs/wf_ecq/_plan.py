"""Rate allocation of ``wf_ecq``: intervals, per-interval models and the step-size search (no bytes here).

One global step Δ is the water level: every coded interval gets the same distortion ≈ Δ²/12 at high rate,
and an interval whose Lagrangian gain does not pay for its bits is sent at zero rate (reverse water-filling,
Cover & Thomas Thm 10.3.3, realised by an entropy-coded dead-zone quantizer). The search runs on the model
tables of ``_model`` (entropy and distortion per interval class), so it touches O(#intervals) numbers per
step, never the d values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._model import BETAS, T_MAX, T_STEPS, T_ZERO, class_code, moment_ratios, tables

__all__ = [
    "CLASS_BITS",
    "CODE_BITS",
    "Plan",
    "interval_layout",
    "interval_stats",
    "plan_at",
    "search_step",
    "side_bits",
]

CODE_BITS = 11  # per interval: 0 = zero rate, else 1 + β_idx * (T_MAX + 1) + t  (max 1160 < 2048)
CLASS_BITS = 16 + 8 + 8  # per distinct class: alphabet bound M, centroid offsets for |q| = 1 and |q| >= 2
FIXED_BITS = 8 + 8 + 32 + 32  # flags, ρ code, block, Δ (f32)
WORDS_BITS = 32  # ANS word count


def interval_layout(sizes: tuple[int, ...], block: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the intervals: each tensor cut into chunks of ``block`` (``None``: whole)."""
    starts, lens = [], []
    off = 0
    for n in sizes:
        if n > 0:
            b = n if block is None else block
            s = np.arange(0, n, b, dtype=np.int64)
            starts.append(off + s)
            lens.append(np.minimum(b, n - s))
        off += n
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(starts), np.concatenate(lens)


_STATS_CHUNK = 1 << 16  # values per vectorized step of the statistics (whole intervals per step)


def interval_stats(x: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-interval RMS and GGD shape index (nearest moment ratio ``(E|x|)²/E[x²]``).

    The intervals tile ``x`` contiguously; the sums run over groups of whole intervals of about
    ``_STATS_CHUNK`` values, so the float64 temporaries stay small and every interval's sum is the one a
    single pass over ``x`` gives.
    """
    if starts.size == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    n = starts.size
    s1, s2 = np.empty(n), np.empty(n)
    ends = starts + lens
    g0 = 0
    while g0 < n:
        g1 = max(g0 + 1, int(np.searchsorted(ends, starts[g0] + _STATS_CHUNK, side="right")))
        a, b = int(starts[g0]), int(ends[g1 - 1])
        ax = np.abs(x[a:b].astype(np.float64))
        rel = starts[g0:g1] - a
        s1[g0:g1] = np.add.reduceat(ax, rel)
        ax *= ax
        s2[g0:g1] = np.add.reduceat(ax, rel)
        g0 = g1
    m1 = s1 / lens
    m2 = s2 / lens
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(m2 > 0, m1 * m1 / m2, 1.0)
    ref = np.log(moment_ratios())
    lr = np.log(np.clip(ratio, 1e-6, 1.0))
    beta_idx = np.argmin(np.abs(lr[:, None] - ref[None, :]), axis=1).astype(np.int64)
    return np.sqrt(m2), beta_idx


def side_bits(n_intervals: int, n_classes: int) -> int:
    """Body bits before the ANS words (byte-aligned), for the given interval and class counts."""
    bits = FIXED_BITS + n_intervals * CODE_BITS + n_classes * CLASS_BITS
    return 8 * ((bits + 7) // 8) + WORDS_BITS


@dataclass
class Plan:
    """Outcome of the search at one step: class code per interval (0 = zero rate) and estimates."""

    log2_step: float
    codes: np.ndarray
    est_bits: float  # modelled ANS bits
    est_dist: float  # modelled squared error (absolute)
    n_classes: int


def _table_stack(rho_code: int) -> tuple[np.ndarray, np.ndarray]:
    ent = np.stack([tables(rho_code, b)[0] for b in range(len(BETAS))])
    dist = np.stack([tables(rho_code, b)[1] for b in range(len(BETAS))])
    return ent, dist


def evaluate(log2_step: float, rms, beta_idx, lens, ent, dist) -> Plan:
    """Codes and estimates at step ``2**log2_step`` with Lagrangian zero-rate decisions."""
    step2 = 4.0**log2_step
    with np.errstate(divide="ignore"):
        tf = T_STEPS * (np.log2(rms) - log2_step) + T_ZERO  # continuous grid position of RMS / Δ
    alive = np.isfinite(tf) & (tf >= -0.5)
    tf = np.clip(np.nan_to_num(tf, nan=0.0, neginf=0.0), 0.0, float(T_MAX))
    ti = np.rint(tf).astype(np.int64)  # the class the coder will use
    # the estimates interpolate the tables: the data's real RMS / Δ, not its grid point, sets the rate
    t0 = np.minimum(np.floor(tf).astype(np.int64), T_MAX - 1)
    f = tf - t0

    def lerp(tab: np.ndarray, shift: int = 0) -> np.ndarray:
        a, b = np.clip(t0 + shift, 0, T_MAX), np.clip(t0 + 1 + shift, 0, T_MAX)
        return tab[beta_idx, a] * (1 - f) + tab[beta_idx, b] * f

    h = lerp(ent) * lens
    dq = lerp(dist) * step2 * lens
    var = rms * rms * lens
    # marginal trade-off of the global step: moving every coded interval one grid point
    dh = (lerp(ent, 1) - lerp(ent, -1)) * lens
    dd = lerp(dist, -1) * 4.0 ** (1.0 / T_STEPS) - lerp(dist, 1) * 4.0 ** (-1.0 / T_STEPS)
    dd = dd * step2 * lens
    w = alive & (dh > 0)
    lam = float(np.sum(dd[w]) / np.sum(dh[w])) if np.any(w) and np.sum(dh[w]) > 0 else 0.0
    coded = alive & (var - dq > lam * h) & (h > 0)
    codes = np.where(coded, class_code(beta_idx, ti), 0)
    n_classes = int(np.unique(codes[coded]).size)
    return Plan(
        log2_step, codes, float(np.sum(h[coded])), float(np.sum(dq[coded]) + np.sum(var[~coded])), n_classes
    )


def plan_at(log2_step: float, rms, beta_idx, lens, rho_code: int) -> Plan:
    """The plan at a given step (used to bisect between real encodes)."""
    ent, dist = _table_stack(rho_code)
    return evaluate(log2_step, rms, beta_idx, lens, ent, dist)


def search_step(rms, beta_idx, lens, rho_code: int, avail_bits: float, kappa: float = 1.0) -> Plan:
    """Smallest step whose modelled frame fits ``avail_bits`` (body bits incl. side info).

    ``kappa`` scales the modelled ANS bits (calibration from a real encode). The step never goes below
    ``max RMS / 2^10`` (the model grid's end), so a generous budget is simply not filled.
    """
    ent, dist = _table_stack(rho_code)
    top = float(np.log2(rms.max()))
    lo = top + (T_ZERO - T_MAX) / T_STEPS  # finest allowed step
    hi = top + 12.0  # everything at zero rate

    def fits(p: Plan) -> bool:
        return kappa * p.est_bits + side_bits(lens.size, p.n_classes) <= avail_bits

    best = evaluate(lo, rms, beta_idx, lens, ent, dist)
    if fits(best):
        return best
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        p = evaluate(mid, rms, beta_idx, lens, ent, dist)
        if fits(p):
            hi, best = mid, p
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    if not fits(best):
        best = evaluate(hi, rms, beta_idx, lens, ent, dist)
    return best

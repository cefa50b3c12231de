"""Interval-size search and per-interval allocation for ``flm_topk`` (and ``fed_cvlc``, one interval).

Two allocations over contiguous intervals of length ``L = 2**s`` (``docs/flm-topk.md`` §5–7):

- ``even`` (the paper): the packets are split evenly over the intervals (so ``m <= P``); inside an
  interval the kept count and the per-packet widths come from the exact packet-plan DP on its sorted
  magnitudes.
- ``threshold`` (ours): one global magnitude threshold (the KKT rule with negligible quantization noise),
  entries grouped by interval and sent in index order with the per-interval counts ``k_j`` in the header.

The size search enumerates ``s`` and scores each candidate with exact prefix sums of the sorted magnitudes
(tail energy) plus the stochastic-rounding variance of the packets (``n step**2 / 6``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._packets import (
    MODE_EVEN,
    MODE_THRESHOLD,
    BudgetTooSmallError,
    Stream,
    ceil_log2,
    layout,
    message_header_bytes,
    packet_header_bits,
    plan_packets,
    plan_packets_fast,
    quant_cost,
)

__all__ = ["SEARCHES", "even_stream", "threshold_stream"]

SEARCHES = ("exact", "fast")  # packet-plan search of the even allocation
# ``search="fast"`` still runs the exact DP when it is cheap: r * kc below this (~0.1 s of DP at most).
_EXACT_DP_MAX = 1 << 17

_EXACT_BELOW = 1 << 18  # below this size a plain topk is cheaper than threshold sampling
THRESHOLD_S_MIN = 2  # smallest interval searched in threshold mode (L = 4)


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """``concat(arange(c) for c in counts)`` without a Python loop."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts)


def _candidates(u: torch.Tensor, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At least the ``K`` largest of ``|u|``: (sorted indices, their magnitudes, all sorted desc).

    Large vectors use a strided-sample quantile to pick a threshold a little below the K-th value, so only
    ~1.1 K entries are sorted instead of running a full top-k (falls back to top-k if the guess is short).
    ``|u| >= tau`` is tested as ``u >= tau or u <= -tau`` so no d-sized copy of ``|u|`` is made (peak memory).
    """
    d = u.numel()
    K = min(K, d)
    idx = None
    if d > _EXACT_BELOW and d // 4 > K:
        stride = max(1, d // (1 << 17))
        sample = u[::stride].abs().numpy()
        q = max(0, min(sample.size - 1, int(sample.size * (1.0 - 1.1 * K / d - 0.002))))
        tau = float(np.partition(sample, q)[q])
        hit = u >= tau
        hit |= u <= -tau
        cand = hit.nonzero().squeeze(1)
        del hit
        if cand.numel() >= K:
            idx = cand
    if idx is None:
        idx = torch.topk(u.abs(), K, sorted=False).indices.sort().values if d > K else torch.arange(d)
    mag = u[idx].abs().numpy()
    desc = np.sort(mag)[::-1][: max(K, 1)].astype(np.float64)  # numpy's SIMD sort beats torch.sort on CPU
    return idx.numpy(), mag, desc


def _keep_mask(mag: np.ndarray, desc: np.ndarray, K: int) -> np.ndarray:
    """Exactly ``K`` of the candidates with the largest magnitudes (ties broken by index)."""
    if K <= 0:
        return np.zeros(mag.size, dtype=bool)
    tau = desc[K - 1]
    above = mag > tau
    eq = mag == tau
    need = K - int(above.sum())
    return above | (eq & (np.cumsum(eq) <= need))


def _packet_quant(mag: np.ndarray, n: int, b: int) -> float:
    """Quantization error estimate of an index-ordered run chopped into packets of ``n``."""
    if mag.size == 0:
        return 0.0
    starts = np.arange(0, mag.size, n)
    hi = np.maximum.reduceat(mag, starts).astype(np.float64)
    lo = np.minimum.reduceat(mag, starts).astype(np.float64)
    cnt = np.diff(np.append(starts, mag.size))
    return float(quant_cost(cnt, hi, lo, b).sum())


def threshold_stream(
    u: torch.Tensor, budget: int, b_min: int, b_max: int, s_fixed: int | None
) -> tuple[Stream, int, np.ndarray, dict]:
    """Plan the ``threshold`` allocation; returns the stream, ``s``, the counts ``k_j`` and search info."""
    d = u.numel()
    s_hi = max(1, ceil_log2(d))
    s_list = [s_fixed] if s_fixed is not None else list(range(min(THRESHOLD_S_MIN, s_hi), s_hi + 1))
    combos = []  # (s, b, n, K)
    for s in s_list:
        m = -(-d // (1 << s))
        count, cap = layout(budget, message_header_bytes(MODE_THRESHOLD, m, s))
        hb = packet_header_bits(m)
        for b in range(b_min, b_max + 1):
            n = (8 * cap - hb) // (s + 1 + b) if count else 0
            if n > 0:
                combos.append((s, b, n, min(d, count * n)))
    if not combos:
        raise BudgetTooSmallError("budget too small for one packet")
    kmax = max(c[3] for c in combos)
    idx, mag, desc = _candidates(u, kmax)
    energy = float(torch.dot(u, u)) if d else 0.0  # float32 dot: only scales the search scores
    cs = np.concatenate([[0.0], np.cumsum(desc * desc)])

    # Per-entry range² of the packets, measured once at a reference plan, scales the estimate for the search.
    ref = combos[len(combos) // 2]
    kref = _keep_mask(mag, desc, ref[3])
    rbar2 = 6 * (2.0 ** ref[1] - 1) ** 2 * _packet_quant(mag[kref], ref[2], ref[1]) / max(1, ref[3])
    best_s = min(combos, key=lambda c: energy - cs[c[3]] + c[3] * rbar2 / (6 * (2.0 ** c[1] - 1) ** 2))[0]
    scored = []
    for s, b, n, K in combos:  # exact score of every width at the chosen s
        if s == best_s:
            keep = _keep_mask(mag, desc, K)
            scored.append((energy - cs[K] + _packet_quant(mag[keep], n, b), s, b, n, K, keep))
    err, s, b, n, K, keep = min(scored, key=lambda t: t[0])
    kidx = idx[keep].astype(np.int64)
    m = -(-d // (1 << s))
    npk = -(-K // n) if K else 0
    counts = np.full(npk, n, dtype=np.int64)
    if npk:
        counts[-1] = K - n * (npk - 1)
    firsts = np.arange(npk, dtype=np.int64) * n
    vals = u.numpy()[kidx]
    stream = Stream(kidx, vals, counts, np.full(npk, b, dtype=np.int64), kidx[firsts] >> s)
    k_j = np.bincount(kidx >> s, minlength=m).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):  # inf/inf at ~1e30 inputs: NaN, no warning
        est = err / energy if energy else 0.0
    return stream, s, k_j, {"s": s, "b": b, "kept": K, "est_error": est}


def _interval_candidates(a: torch.Tensor, s: int, kc: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per interval: sorted-desc magnitudes ``(m, kc)`` (0-padded), local indices (-1 pad), energies."""
    d, L = a.numel(), 1 << s
    m = -(-d // L)
    full = (m - 1) * L if d % L else m * L
    vals = torch.zeros(m, kc, dtype=torch.float32)
    loc = torch.full((m, kc), -1, dtype=torch.int64)
    energy = torch.zeros(m, dtype=torch.float64)
    if full:
        view = a[:full].view(-1, L)
        k = min(kc, L)
        v, i = torch.topk(view, k, dim=1)
        vals[: view.shape[0], :k], loc[: view.shape[0], :k] = v, i
        energy[: view.shape[0]] = (view.double() ** 2).sum(1)
    if full < d:
        rest = a[full:]
        k = min(kc, rest.numel())
        v, i = torch.topk(rest, k)
        vals[-1, :k], loc[-1, :k] = v, i
        energy[-1] = float((rest.double() ** 2).sum())
    return vals.double().numpy(), loc.numpy(), energy.numpy()


def _single_interval_candidates(
    u: torch.Tensor, s: int, kc: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_interval_candidates` for one interval (``m = 1``) without a top-k over ``d``.

    A strided-sample threshold (as in :func:`_candidates`) keeps ~1.1 ``kc`` entries, which are sorted by
    magnitude (descending; ties in index order). Small vectors, or a short guess, take the exact path. The
    energy is a float32 dot (it only scales the reported estimate).
    """
    d = u.numel()
    if d <= _EXACT_BELOW or d // 4 <= kc:
        return _interval_candidates(u.abs(), s, kc)
    # numpy throughout: single-threaded passes, no torch thread hand-off (erratic on a busy 2-core host)
    x = u.numpy()
    stride = max(1, d // (1 << 17))
    sample = np.abs(x[::stride])
    q = max(0, min(sample.size - 1, int(sample.size * (1.0 - 1.1 * kc / d - 0.002))))
    tau = np.float32(np.partition(sample, q)[q])
    hit = x >= tau
    hit |= x <= -tau
    cand = np.flatnonzero(hit)
    del hit
    if cand.size < kc:
        return _interval_candidates(u.abs(), s, kc)
    mag = np.abs(x[cand])
    order = np.argsort(-mag, kind="stable")[:kc]  # stable: equal magnitudes stay in index order
    vals = mag[order].astype(np.float64)[None, :]
    energy = np.array([float(np.dot(x, x))])
    return vals, cand[order][None, :], energy


def _even_geometry(d: int, s: int, count: int) -> tuple[int, np.ndarray]:
    m = -(-d // (1 << s))
    r = np.full(m, count // m, dtype=np.int64)
    if count % m:
        r[m - count % m :] += 1  # the last intervals take the remainder (as in the authors' code)
    return m, r


def _even_estimate(vals: np.ndarray, energy: np.ndarray, r: np.ndarray, n_of_b: dict[int, int]) -> float:
    """Uniform-width score of one interval size (the DP refines widths afterwards)."""
    m, kc = vals.shape
    cs = np.concatenate([np.zeros((m, 1)), np.cumsum(vals * vals, axis=1)], axis=1)
    rows = np.arange(m)
    best = np.inf
    for b, n in n_of_b.items():
        if n <= 0:
            continue
        k = np.minimum(kc, r * n)
        err = float((energy - cs[rows, k]).sum())
        p = np.arange(int(r.max()))
        st = p[None, :] * n
        en = np.minimum(st + n, k[:, None])
        ok = st < k[:, None]
        hi = vals[rows[:, None], np.minimum(st, kc - 1)]
        lo = vals[rows[:, None], np.clip(en - 1, 0, kc - 1)]
        err += float(np.where(ok, quant_cost(en - st, hi, lo, b), 0.0).sum())
        best = min(best, err)
    return best


def even_stream(
    u: torch.Tensor, budget: int, b_min: int, b_max: int, s_fixed: int | None, search: str = "exact"
) -> tuple[Stream, int, dict]:
    """Plan the ``even`` allocation (the paper's); ``s_fixed = ceil(log2 d)`` gives Fed-CVLC.

    ``search="fast"`` (one interval only, i.e. Fed-CVLC) picks the candidates without a top-k over ``d``
    and plans the packets with :func:`plan_packets_fast` when the exact DP would be costly
    (``r * kc > _EXACT_DP_MAX``); ``"exact"`` is the exact DP on the top-k candidates.
    """
    d = u.numel()
    count, cap = layout(budget, message_header_bytes(MODE_EVEN, 1, 1))
    if count == 0:
        raise BudgetTooSmallError("budget too small for one packet")
    s_hi = max(1, ceil_log2(d))
    s_lo = min(s_hi, max(1, ceil_log2(-(-d // count))))  # m <= P: every interval owns a whole packet
    s_list = [max(s_fixed, s_lo)] if s_fixed is not None else list(range(s_lo, s_hi + 1))
    fast = search == "fast" and len(s_list) == 1 and d <= (1 << s_list[0])  # one interval: Fed-CVLC
    a = u if fast else u.abs()  # the fast single-interval path never needs |u| whole

    def geometry(s: int) -> tuple[np.ndarray, dict[int, int], int]:
        m, r = _even_geometry(d, s, count)
        hb = packet_header_bits(m)
        n_of_b = {b: (8 * cap - hb) // (s + 1 + b) for b in range(b_min, b_max + 1)}
        kc = min(1 << s, int(r.max()) * max(n_of_b.values()))
        return r, n_of_b, max(kc, 1)

    best = None
    for s in s_list:
        r, n_of_b, kc = geometry(s)
        if fast:
            vals, loc, energy = _single_interval_candidates(u, s, kc)
        else:
            vals, loc, energy = _interval_candidates(a, s, kc)
        score = _even_estimate(vals, energy, r, n_of_b) if len(s_list) > 1 else 0.0
        if best is None or score < best[0]:
            best = (score, s, vals, loc, energy)
    assert best is not None
    _, s, vals, loc, energy = best
    r, n_of_b, kc = geometry(s)
    m = r.size
    ns = np.zeros((m, int(r.max())), dtype=np.int64)
    bs = np.zeros_like(ns)
    err = 0.0
    for rv in np.unique(r):
        rows = np.nonzero(r == rv)[0]
        plan = plan_packets_fast if fast and int(rv) * kc > _EXACT_DP_MAX else plan_packets
        g_ns, g_bs, g_err = plan(vals[rows], int(rv), n_of_b)
        ns[rows, : int(rv)], bs[rows, : int(rv)] = g_ns, g_bs
        err += float(g_err.sum()) + float((energy[rows] - (vals[rows] ** 2).sum(1)).sum())
    # Entries in wire order: interval-major, packet order inside, runs of the sorted candidates.
    flat_n = ns.reshape(-1)
    used = flat_n > 0
    pk_interval = np.repeat(np.arange(m), ns.shape[1])[used]
    pk_n, pk_b = flat_n[used], bs.reshape(-1)[used]
    row_start = (np.cumsum(ns, axis=1) - ns).reshape(-1)[used]
    col = np.repeat(row_start, pk_n) + _ragged_arange(pk_n)
    row = np.repeat(pk_interval, pk_n)
    local = loc[row, col]
    valid = local >= 0  # padding of a short last interval
    pk_id = np.repeat(np.arange(pk_n.size), pk_n)
    counts = np.bincount(pk_id[valid], minlength=pk_n.size).astype(np.int64)
    gidx = (row[valid] << s) + local[valid]
    keep_pk = counts > 0
    stream = Stream(gidx, u.numpy()[gidx], counts[keep_pk], pk_b[keep_pk], pk_interval[keep_pk])
    total = float(energy.sum())
    return (
        stream,
        s,
        {
            "s": s,
            "kept": int(gidx.size),
            "est_error": err / total if total else 0.0,
            "packets": int(keep_pk.sum()),
        },
    )


def log2_exact(L: int) -> int:
    s = int(math.log2(L))
    return s if (1 << s) == L else -1

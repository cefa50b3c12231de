"""Packetized sign-magnitude quantization shared by ``fed_cvlc`` and ``flm_topk``.

Kept entries travel in packets of at most 1500 bytes. Each packet carries one run of entries with its own
value bit width ``b`` and its magnitude range ``[lo, hi]`` (fp32); every entry is one word of
``s + 1 + b`` bits: local offset (``s`` bits), sign, level. Levels are unbiased stochastic roundings of the
magnitude onto ``2**b`` evenly spaced points of ``[lo, hi]``.

Body layout (all fields MSB first, see ``wire/SPEC.md``)::

    message header, byte-aligned:  s (5 bits) | mode (1 bit: 0 even, 1 threshold) | 2 zero bits
                                   | packet count (32 bits) | threshold only: k_j, m fields of bitlen(L) bits
    then each packet, byte-aligned: interval index (ceil(log2 m) bits) | b (4) | n (14) | lo (f32) | hi (f32)
                                   | n words of (offset s | sign 1 | level b)

The packet plan (how many entries, which width per packet) comes from :func:`plan_packets`, the exact DP of
``docs/flm-topk.md`` §7 over runs of the magnitude-sorted candidates.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ConfigError, PayloadError
from ...wire.bitpack import BitReader, BitWriter
from ...wire.frame import HEADER_SIZE
from ..budget import PACKET_BITS, PACKET_BYTES

__all__ = [
    "MAX_B",
    "Stream",
    "decode_body",
    "encode_body",
    "layout",
    "packet_header_bits",
    "plan_packets",
    "plan_packets_fast",
    "quant_cost",
]

MAX_B = 15  # the b field has 4 bits
N_BITS = 14  # entries per packet field (a packet holds at most 12000 / 3 = 4000 entries)
MODE_EVEN, MODE_THRESHOLD = 0, 1


class BudgetTooSmallError(ConfigError):
    """The budget cannot hold the headers and one packet."""


def ceil_log2(x: int) -> int:
    return max(0, math.ceil(math.log2(x))) if x > 1 else 0


def packet_header_bits(m: int) -> int:
    """Bits of one packet header when the message has ``m`` intervals."""
    return ceil_log2(m) + 4 + N_BITS + 64


def message_header_bytes(mode: int, m: int, s: int) -> int:
    bits = 8 + 32 + (m * (1 << s).bit_length() if mode == MODE_THRESHOLD else 0)
    return (bits + 7) // 8


def layout(budget_bits: int, fixed_bytes: int) -> tuple[int, int]:
    """Packets and per-packet byte capacity left after the frame and message headers.

    Returns ``(count, cap)``: ``count`` packets of at most ``cap <= 1500`` bytes fill the budget.
    """
    avail = budget_bits // 8 - HEADER_SIZE - fixed_bytes
    if avail <= 0:
        return 0, 0
    count = -(-avail // PACKET_BYTES)
    return count, avail // count


def quant_cost(n: int | np.ndarray, hi: np.ndarray, lo: np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """Expected squared error of stochastic rounding of ``n`` values in ``[lo, hi]`` with ``b`` bits.

    Uses ``n * step**2 / 6`` (the mean of ``f (1 - f) step**2`` over a uniform fraction ``f``).
    """
    step = (hi - lo) / (np.exp2(b) - 1.0)
    return n * step * step / 6.0


def plan_packets(a: np.ndarray, r: int, n_of_b: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact packet plan for a group of intervals that each own ``r`` packets.

    Parameters
    ----------
    a
        ``(g, kc)`` candidate magnitudes, each row sorted in descending order (non-negative).
    r
        Packets per interval.
    n_of_b
        Entries that fit in one packet at value width ``b`` (full packets; a run may stop early only at the
        end of the candidates).

    Returns
    -------
    ns, bs, err
        ``(g, r)`` entries and widths per packet (``ns == 0``: packet unused) and ``(g,)`` the estimated error
        (tail energy beyond the candidates not included).
    """
    g, kc = a.shape
    widths = sorted(n_of_b)
    sq = np.concatenate([np.zeros((g, 1)), np.cumsum(a * a, axis=1)], axis=1)
    tail = sq[:, -1:] - sq  # (g, kc + 1): energy of candidates from position i on
    inf = np.inf
    dp = np.full((g, kc + 1), inf)
    dp[:, 0] = 0.0
    choice = np.full((r, g, kc + 1), -1, dtype=np.int8)  # width index, +64 for a partial run
    pred = np.zeros((r, g), dtype=np.int64)  # source of a partial run ending at kc
    nmax = max(n_of_b.values())
    rows = np.arange(g)
    for p in range(r):
        new = dp.copy()  # an unused packet keeps the position (choice -1)
        top = min(kc, p * nmax)  # positions reachable after p packets
        for q, b in enumerate(widths):
            n = n_of_b[b]
            if n <= 0:
                continue
            hi_src = min(top, kc - n)  # full runs [i, i + n)
            if hi_src >= 0:
                i = np.arange(hi_src + 1)
                cand = dp[:, i] + quant_cost(n, a[:, i], a[:, i + n - 1], b)
                tgt = new[:, i + n]
                better = cand < tgt
                new[:, i + n] = np.where(better, cand, tgt)
                cp = choice[p]
                cp[:, i + n] = np.where(better, q, cp[:, i + n])
            lo_src = max(0, kc - n + 1)  # partial runs [i, kc)
            if lo_src <= min(top, kc - 1):
                i = np.arange(lo_src, min(top, kc - 1) + 1)
                cand = dp[:, i] + quant_cost(kc - i, a[:, i], a[:, kc - 1 : kc], b)
                j = np.argmin(cand, axis=1)
                best = cand[rows, j]
                better = best < new[:, kc]
                new[:, kc] = np.where(better, best, new[:, kc])
                choice[p][:, kc] = np.where(better, q + 64, choice[p][:, kc])
                pred[p] = np.where(better, i[j], pred[p])
        dp = new
    total = dp + tail
    end = np.argmin(total, axis=1)
    err = total[rows, end]
    ns = np.zeros((g, r), dtype=np.int64)
    bs = np.zeros((g, r), dtype=np.int64)
    pos = end.copy()
    for p in range(r - 1, -1, -1):
        c = choice[p, rows, pos].astype(np.int64)
        used = c >= 0
        partial = c >= 64
        q = np.where(partial, c - 64, c)
        n_full = np.array([n_of_b[widths[k]] for k in np.clip(q, 0, len(widths) - 1)], dtype=np.int64)
        src = np.where(partial, pred[p], pos - n_full)
        ns[:, p] = np.where(used, pos - src, 0)
        bs[:, p] = np.where(used, np.array(widths)[np.clip(q, 0, len(widths) - 1)], 0)
        pos = np.where(used, src, pos)
    return ns, bs, err


_FAST_ROUNDS = 32  # rounds of width changes in plan_packets_fast (each O(W r); most stop after one)


def _run_costs(
    a: np.ndarray, tail: np.ndarray, n_seq: np.ndarray, b_seq: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Entries per packet, per-packet quantization costs and total cost of a width sequence.

    Packets are consecutive runs from position 0 of the candidates ``a``: a run that would pass the end is
    cut there (the plan's one partial run), later packets stay unused (0 entries), as in :func:`plan_packets`.
    """
    kc = a.size
    starts = np.concatenate([[0], np.cumsum(n_seq)[:-1]])
    ends = np.minimum(starts + n_seq, kc)
    used = starts < kc
    n = np.where(used, ends - starts, 0)
    st = np.minimum(starts, max(kc - 1, 0))
    en = np.clip(ends - 1, 0, max(kc - 1, 0))
    q = np.where(used, quant_cost(n, a[st], a[en], b_seq), 0.0) if kc else np.zeros(n.size)
    k = int(n.sum())
    return n, q, float(q.sum()) + float(tail[k])


def plan_packets_fast(
    a: np.ndarray, r: int, n_of_b: dict[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate :func:`plan_packets` in ``O(W r)`` per round instead of ``O(W r kc)``; same in and out.

    For each row: the best plan with one width for every packet, then a few rounds of per-packet width
    changes. Each round prices changing packet ``p`` to width ``b`` by its own quantization cost plus the
    energy of the entries gained or lost at the end of the run (the other packets' boundaries shift, which
    the price ignores), then applies the most promising changes and keeps them only when the exact cost of
    the new plan (the estimate :func:`plan_packets` minimizes) is lower. The result is never worse than the
    best single-width plan; on Gaussian-like candidates that plan is usually the DP's optimum (the tail
    energy of a dropped entry dwarfs the quantization noise, so every packet takes ``b_min``).
    """
    g, kc = a.shape
    widths = np.array([b for b in sorted(n_of_b) if n_of_b[b] > 0], dtype=np.int64)
    ns = np.zeros((g, r), dtype=np.int64)
    bs = np.zeros((g, r), dtype=np.int64)
    err = np.zeros(g)
    if widths.size == 0 or r <= 0:
        for row in range(g):
            err[row] = float((a[row] * a[row]).sum())
        return ns, bs, err
    nw = np.array([n_of_b[int(b)] for b in widths], dtype=np.int64)
    for row in range(g):  # fed_cvlc has one row; flm_topk's even mode keeps the exact DP
        x = a[row]
        sq = np.concatenate([[0.0], np.cumsum(x * x)])
        tail = sq[-1] - sq
        best = None
        for b, n in zip(widths, nw, strict=True):
            cand = _run_costs(x, tail, np.full(r, n), np.full(r, b))
            if best is None or cand[2] < best[3]:
                best = (np.full(r, n), np.full(r, b), cand[1], cand[2], cand[0])
        assert best is not None
        n_seq, b_seq, q, cost, n_used = best
        for _ in range(_FAST_ROUNDS):  # rounds of width changes; usually none survives (Gaussian-like inputs)
            k = int(n_used.sum())
            starts = np.concatenate([[0], np.cumsum(n_seq)[:-1]])
            live = starts < kc
            st = np.minimum(starts[live], max(kc - 1, 0))
            # (packets, widths): quantization cost of each live packet at each width, from its current start
            n_new = np.minimum(st[:, None] + nw[None, :], kc) - st[:, None]
            q_new = quant_cost(
                n_new, x[st][:, None], x[np.maximum(st[:, None] + n_new - 1, 0)], widths[None, :]
            )
            dn = n_new - n_used[live][:, None]  # entries gained (> 0) or lost (< 0) at the end of the run
            gain = x[min(k, kc - 1)] ** 2 if k < kc else 0.0
            # With every candidate covered, spare capacity (unused packets, a cut last run) absorbs losses.
            loss = x[max(k - 1, 0)] ** 2 if k < kc or int(n_seq.sum()) == kc else 0.0
            price = q_new - q[live][:, None] - np.where(dn > 0, dn * gain, dn * loss)
            j = np.argmin(price, axis=1)
            delta = price[np.arange(j.size), j]
            order = np.argsort(delta, kind="stable")
            order = order[delta[order] < 0]
            if order.size == 0:
                break
            live_idx = np.flatnonzero(live)
            improved = False
            take = order.size
            while take >= 1:  # all promising changes, then fewer, until the exact cost drops
                n_try, b_try = n_seq.copy(), b_seq.copy()
                sel = order[:take]
                n_try[live_idx[sel]] = nw[j[sel]]
                b_try[live_idx[sel]] = widths[j[sel]]
                n_u, q_u, c_u = _run_costs(x, tail, n_try, b_try)
                if c_u < cost:
                    n_seq, b_seq, q, cost, n_used = n_try, b_try, q_u, c_u, n_u
                    improved = True
                    break
                take //= 2
            if not improved:
                break
        ns[row] = n_used
        bs[row] = np.where(n_used > 0, b_seq, 0)
        err[row] = cost
    return ns, bs, err


def empty_body(budget_bits: int, d: int) -> bytes:
    """A valid body with no packets (everything dropped), for budgets below one packet."""
    if budget_bits // 8 < HEADER_SIZE + 5:
        raise BudgetTooSmallError(f"budget of {budget_bits} bits cannot hold the frame and message headers")
    s = max(1, ceil_log2(d))
    return bytes([(s << 3) | (MODE_EVEN << 2), 0, 0, 0, 0])


class Stream:
    """Entries in wire order with their packet split: what :func:`encode_body` serializes."""

    def __init__(
        self, idx: np.ndarray, vals: np.ndarray, counts: np.ndarray, widths: np.ndarray, intervals: np.ndarray
    ) -> None:
        self.idx = idx  # global indices (int64), wire order
        self.vals = vals  # float32 values, wire order
        self.counts = counts  # entries per packet
        self.widths = widths  # value bits per packet
        self.intervals = intervals  # interval of each packet (even) or of its first entry (threshold)


_BATCH_ENTRIES = 1 << 13  # entries quantized per vectorized step (bounds the temporaries, not the result)
_HEADER_CHUNK = 1 << 16  # k_j fields packed per step (a multiple of 8: every chunk ends on a byte)


def encode_body(
    stream: Stream, *, mode: int, s: int, d: int, k_per_interval: np.ndarray | None, seed: int
) -> bytes:
    """Quantize the stream's values per packet (stochastic rounding seeded by ``seed``) and serialize.

    Every packet starts on a byte boundary, so the body is built batch by batch of packets (about
    ``_BATCH_ENTRIES`` entries each) and each batch is packed to bytes at once: the temporaries are
    O(batch), never O(kept) or a body-wide bit array. The random draws are taken in wire order, so the bytes
    are those of quantizing all entries in one go.
    """
    m = -(-d // (1 << s))
    counts = stream.counts.astype(np.int64)
    ends = np.cumsum(counts)
    starts = ends - counts
    rng = np.random.default_rng(seed)
    L = 1 << s
    w_m = ceil_log2(m)

    head = BitWriter()
    head.write_uint((s << 3) | (mode << 2), 8)
    head.write_uint(int(counts.size), 32)
    parts = [head.getvalue()]
    if mode == MODE_THRESHOLD:
        assert k_per_interval is not None
        kw = L.bit_length()
        for c0 in range(0, k_per_interval.size, _HEADER_CHUNK):
            w = BitWriter()
            w.write_uints(k_per_interval[c0 : c0 + _HEADER_CHUNK].astype(np.uint64), kw)
            w.align()  # only the last chunk can need padding (chunks hold a multiple of 8 fields)
            parts.append(w.getvalue())

    p0 = 0
    while p0 < counts.size:
        # packets [p0, p1): at least one, about _BATCH_ENTRIES entries
        p1 = int(np.searchsorted(ends, starts[p0] + _BATCH_ENTRIES, side="right"))
        p1 = max(p1, p0 + 1)
        e0, e1 = int(starts[p0]), int(ends[p1 - 1])
        bc = counts[p0:p1]
        mag = np.abs(stream.vals[e0:e1]).astype(np.float32)
        nonempty = bc > 0
        lo = np.zeros(bc.size, dtype=np.float32)
        hi = np.zeros(bc.size, dtype=np.float32)
        if mag.size:
            bst = (starts[p0:p1] - e0)[nonempty]
            lo[nonempty] = np.minimum.reduceat(mag, bst)
            hi[nonempty] = np.maximum.reduceat(mag, bst)
        owner = np.repeat(np.arange(bc.size), bc)
        b_e = stream.widths[p0:p1][owner].astype(np.int64)
        levels_max = np.exp2(b_e) - 1.0
        span = hi[owner].astype(np.float64) - lo[owner]
        x = np.where(span > 0, (mag - lo[owner]) / np.where(span > 0, span, 1.0) * levels_max, 0.0)
        fl = np.floor(x)
        level = fl + (rng.random(x.size) < (x - fl))
        level = np.minimum(level, levels_max).astype(np.uint64)
        off = (stream.idx[e0:e1] & (L - 1)).astype(np.uint64)
        sign = (stream.vals[e0:e1] < 0).astype(np.uint64)
        words = (off << (b_e + 1).astype(np.uint64)) | (sign << b_e.astype(np.uint64)) | level

        wr = BitWriter()
        for q in range(bc.size):
            p = p0 + q
            b, n = int(stream.widths[p]), int(bc[q])
            a = int(starts[p]) - e0
            wr.write_uint(int(stream.intervals[p]), w_m)
            wr.write_uint(b, 4)
            wr.write_uint(n, N_BITS)
            wr.write_f32(np.array([lo[q], hi[q]], dtype=np.float32))
            wr.write_uints(words[a : a + n], s + 1 + b)
            wr.align()  # every packet starts on a byte boundary
        parts.append(wr.getvalue())
        p0 = p1
    return b"".join(parts)


def decode_body(
    body: bytes, d: int, *, want_mode: int | None = None, min_s: int = 1, info: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate a body; returns ``(indices, float32 values)``. Raises :class:`PayloadError`.

    ``info``, when given, receives the parsed layout: ``s``, ``mode``, and per packet ``bytes``, ``b``,
    ``n``, ``lo``, ``hi`` (for tests and benchmarks).
    """
    if len(body) < 5:
        raise PayloadError("packet body shorter than its 5-byte message header")
    r = BitReader(body)
    first = r.read_uint(8, "message header")
    s, mode, rsv = first >> 3, (first >> 2) & 1, first & 3
    if rsv:
        raise PayloadError("reserved bits of the message header are set")
    if want_mode is not None and mode != want_mode:
        raise PayloadError(f"unexpected allocation mode {mode}")
    if s < min_s or s > 31:
        raise PayloadError(f"interval exponent s={s} out of range [{min_s}, 31]")
    L = 1 << s
    m = -(-d // L)
    npk = r.read_uint(32, "packet count")
    k_int = None
    if mode == MODE_THRESHOLD:
        k_int = r.read_uints(m, L.bit_length(), "interval counts").astype(np.int64)
        lens = np.full(m, L, dtype=np.int64)
        lens[-1] = d - (m - 1) * L
        if (k_int > lens).any():
            raise PayloadError("an interval count exceeds the interval length")
    r.align()
    w_m = ceil_log2(m)
    hbits = w_m + 4 + N_BITS + 64
    if npk * hbits > r.remaining:
        raise PayloadError(f"packet count {npk} does not fit in the payload")
    idx_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    interval_parts: list[tuple[np.ndarray, int]] = []  # threshold mode: values with their interval
    kept = 0
    packets: list[tuple[int, int, int, float, float]] = []
    for _ in range(npk):
        start = r.pos
        if hbits > r.remaining:
            raise PayloadError("truncated packet header")
        j = r.read_uint(w_m, "packet interval")
        b = r.read_uint(4, "packet width")
        n = r.read_uint(N_BITS, "packet count of entries")
        lo, hi = (float(v) for v in r.read_f32(2, "packet range"))
        if not (1 <= b <= MAX_B) or j >= m:
            raise PayloadError(f"bad packet header (interval {j}, width {b})")
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
            raise PayloadError("bad packet range")
        w = s + 1 + b
        if n * w > r.remaining or kept + n > d:
            raise PayloadError("truncated packet or too many entries")
        words = r.read_uints(n, w, "packet entries")
        r.align()
        if n == 0 or r.pos - start > PACKET_BITS:  # a packet, header included, fits one datagram
            raise PayloadError(
                f"packet of {n} entries and {(r.pos - start) // 8} bytes is empty or over "
                f"{PACKET_BYTES} bytes"
            )
        kept += n
        packets.append(((r.pos - start) // 8, b, n, lo, hi))
        level = (words & np.uint64((1 << b) - 1)).astype(np.float64)
        sign = ((words >> np.uint64(b)) & np.uint64(1)).astype(bool)
        off = (words >> np.uint64(b + 1)).astype(np.int64)
        mag = (lo + level * ((hi - lo) / ((1 << b) - 1))).astype(np.float32)
        mag = np.clip(mag, np.float32(lo), np.float32(hi))
        if mode == MODE_THRESHOLD:
            idx_parts.append(off)
        else:
            idx_parts.append(off + j * L)
        if mode == MODE_THRESHOLD:
            interval_parts.append((np.where(sign, -mag, mag), j))
        else:
            val_parts.append(np.where(sign, -mag, mag))
    r.expect_end()  # no trailing bytes, zero final padding
    if info is not None:
        info.update(s=s, mode=mode, header_bytes=(40 + (m * L.bit_length() if mode else 0) + 7) // 8)
        for key, col in zip(
            ("bytes", "b", "n", "lo", "hi"),
            zip(*packets, strict=True) if packets else [(), (), (), (), ()],
            strict=True,
        ):
            info[key] = np.array(col, dtype=np.float64 if key in ("lo", "hi") else np.int64)
    if mode == MODE_THRESHOLD:
        assert k_int is not None  # read with the threshold-mode header above
        return _finish_threshold(idx_parts, interval_parts, k_int, L, d, kept)
    idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
    vals = np.concatenate(val_parts) if val_parts else np.zeros(0, np.float32)
    if idx.size and idx.max() >= d:
        raise PayloadError("an index lies beyond the update")
    mark = np.zeros(d, dtype=np.uint8)
    mark[idx] = 1
    if int(mark.sum(dtype=np.int64)) != idx.size:
        raise PayloadError("duplicate indices")
    return idx, vals.astype(np.float32)


def _finish_threshold(
    offs: list[np.ndarray], parts: list[tuple[np.ndarray, int]], k_int: np.ndarray, L: int, d: int, kept: int
) -> tuple[np.ndarray, np.ndarray]:
    if int(k_int.sum()) != kept:
        raise PayloadError("interval counts disagree with the packets")
    off = np.concatenate(offs) if offs else np.zeros(0, np.int64)
    vals = np.concatenate([v for v, _ in parts]) if parts else np.zeros(0, np.float32)
    interval = np.repeat(np.arange(k_int.size, dtype=np.int64), k_int)
    # Each packet names the interval of its first entry; it must agree with the counts.
    firsts = np.concatenate([[0], np.cumsum([v.size for v, _ in parts])[:-1]]).astype(np.int64)
    named = np.array([j for _, j in parts], dtype=np.int64)
    nonempty = np.array([v.size > 0 for v, _ in parts], dtype=bool)
    if nonempty.any() and (interval[firsts[nonempty]] != named[nonempty]).any():
        raise PayloadError("a packet's interval index disagrees with the interval counts")
    idx = interval * L + off
    if off.size and (off >= L).any():
        raise PayloadError("offset beyond its interval")
    if idx.size and (idx[-1] >= d or (np.diff(idx) <= 0).any()):
        raise PayloadError("threshold-mode indices must be increasing and inside the update")
    return idx, vals.astype(np.float32)

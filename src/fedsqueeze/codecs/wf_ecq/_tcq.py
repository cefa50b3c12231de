"""Trellis-coded quantization for ``wf_ecq`` (not a codec module: leading underscore).

A scalar quantizer, even entropy-coded, stays ~1.53 dB from the rate–distortion bound at high rate (its
cells are intervals, not spheres). Trellis-coded quantization (Marcellin & Fischer 1990) recovers most of
that "granular gain" with a Viterbi search. We use the 4-state *dependent quantization* of H.266/VVC
(Schwarz et al., 2018): two scalar quantizers on the fine step δ,

- ``Q0``: reconstruction ``2kδ`` (even multiples of δ),
- ``Q1``: reconstruction ``(2k − sgn k)δ`` (zero and the odd multiples),

and a 4-state machine, ``state' = NEXT[state][k & 1]``, that picks ``Q0`` in states 0–1 and ``Q1`` in
states 2–3. The decoder only needs the integers ``k``: it replays the state machine. The encoder chooses
the ``k`` sequence by a Viterbi search minimising ``(x − x̂)² + λ·bits(k)`` (bits from the same entropy
model the ANS coder then uses, so the search is rate–distortion optimised).

Layout on the wire: each coded interval is cut into *runs* of :data:`RUN` values; every run starts in state
0. The runs are ordered by length (longest first, ties in interval order) and the symbols are sent in
lock-step: position 0 of every run, then position 1 of every run still going, … so a decoder with one
vectorized step per position (≤ :data:`RUN` steps) knows every run's state before it pops its symbol.
Within a position the runs go by model bucket (classes grouped by alphabet width, narrowest first; see
:class:`_Models`), then in run order.

Entropy model of ``k`` in quantizer ``Q`` of class (β, t): the GGD of the interval class (RMS/δ on the
``_model`` grid) integrated over the nearest-level cells of ``Q``, with two per-(class, Q) parameters
in one byte, fitted by the encoder to the chosen integers (the search does not always pick the nearest
level): a signed RMS shift (high nibble − 8, in 1/4 octaves: −2 to +1.75 octaves) and a zero-cell scale
(low nibble ``z``: the zero cell's edge is scaled by ``2^((z − 8)/4)``, ×0.25 to ×3.4, and kept inside the
next cell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ..base import FP32_MAX
from ._model import BETAS, T_STEPS, T_ZERO, ans, ggd_alpha, split_code

__all__ = [
    "DEFAULT_PARAM",
    "LAMBDA",
    "NEXT",
    "Q_MAX_TCQ",
    "RUN",
    "TABLE_LIMIT",
    "WORK_PER_SYMBOL",
    "fit_params",
    "limits",
    "model_bound",
    "probabilities",
    "reconstruct",
    "run_layout",
    "viterbi",
]

PASSES = 2  # search + refit rounds per encode
RUN = 1024  # values per trellis run (each run starts in state 0)
NEXT = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], dtype=np.int8)  # state' = NEXT[state, k & 1]
LAMBDA = 0.4  # Lagrange multiplier of the search, in δ² per bit (0.35–0.5 measured best at 1–2 bits/value)
Q_MAX_TCQ = 4095  # |k| cap: alphabets stay small enough for per-symbol ANS models
TABLE_LIMIT = 1 << 22  # most model-table entries a frame may ask for (2 rows per class × (2H + 1))
WORK_PER_SYMBOL = 128  # average model-row width per symbol a frame may ask the decoder to build
DEFAULT_PARAM = 0x88  # shift 0, zero cell unchanged
_BATCH = 1 << 20  # values per Viterbi batch (about _BATCH // length runs side by side)
_ESCAPE_BITS = 40.0  # search cost of an integer outside the search table (never chosen in practice)
# state -> (predecessor state, parity of k on that branch) for the two branches entering it
_PRED = np.array([[0, 1], [2, 3], [0, 1], [2, 3]], dtype=np.int64)
_PAR = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=np.int64)


def reconstruct(k: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Reconstruction in δ units: ``2k`` in ``Q0``, ``2k − sgn k`` in ``Q1`` (``q1`` true)."""
    kf = k.astype(np.float64)
    return 2.0 * kf - np.where(q1, np.sign(kf), 0.0)


def _cell_uppers(q: int, m: int, z: float) -> np.ndarray:
    """Upper |x|/δ edge of the cell of ``|k| = 0..m`` (nearest level; zero cell scaled by ``z``)."""
    kk = np.arange(m + 1, dtype=np.float64)
    if q == 0:  # levels 0, 2, 4, …: cells [0, 1), [1, 3), [3, 5), …
        up = 2.0 * kk + 1.0
        up[0] = min(1.0 * z, 2.75)
    else:  # levels 0, 1, 3, 5, …: cells [0, ½), [½, 2), [2, 4), …
        up = 2.0 * kk
        up[0] = min(0.5 * z, 1.75)
        if m >= 1:
            up[1] = 2.0
    up[-1] = np.inf  # the last cell takes the tail
    return up


def _masses(beta: float, a: np.ndarray | float, uppers: np.ndarray) -> np.ndarray:
    """GGD (shape β, RMS ``a`` in δ units, two-sided) mass of each |k| cell; broadcasts ``a`` over rows."""
    s = np.asarray(a, dtype=np.float64)[..., None] * ggd_alpha(beta)
    z = np.power(uppers / s, beta)
    c = special.gammainc(1.0 / beta, z)
    return np.maximum(np.diff(c, axis=-1, prepend=0.0), 0.0)


def _unpack(param: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(param, dtype=np.int64)
    return 2.0 ** (((p >> 4) - 8) / 4.0), 2.0 ** (((p & 15) - 8) / 4.0)


def _scale(t: int) -> float:
    return 2.0 ** ((t - T_ZERO) / T_STEPS)


def _symmetric(mass: np.ndarray) -> np.ndarray:
    """Probabilities of ``k = −m..m`` (last axis) from the masses of ``|k| = 0..m`` (a non-zero |k| splits
    evenly between its two signs)."""
    half = mass[..., 1:] / 2
    return np.concatenate([half[..., ::-1], mass[..., :1], half], axis=-1)


def _code_lengths(p: np.ndarray) -> np.ndarray:
    """Bits of each symbol under the (last-axis) distribution ``p``, floored at the coder's 2^-24."""
    return -np.log2(np.maximum(p / p.sum(axis=-1, keepdims=True), 2.0**-24))


def probabilities(beta_idx: int, t: int, q: int, m: int, param: int) -> np.ndarray:
    """Model probabilities of ``k = −m..m`` (index ``k + m``) in quantizer ``q`` of class (β, t).

    Computed from integers only, so encoder and decoder build identical tables; any ``param`` byte gives a
    valid (finite, non-negative) table.
    """
    shift, z = _unpack(param)
    return _symmetric(_masses(BETAS[beta_idx], np.float64(_scale(t) * shift), _cell_uppers(q, m, float(z))))


def model_bound(beta_idx: int, t: int) -> int:
    """Search-table half width for class (β, t): covers the GGD up to a 1e-12 tail (in 2δ steps)."""
    beta = BETAS[beta_idx]
    s = _scale(t) * 2.0 * ggd_alpha(beta)  # twice the class RMS: room for the fitted shifts up to +1 octave
    x = s * float(special.gammaincinv(1 / beta, 1 - 1e-12)) ** (1 / beta)
    return int(min(Q_MAX_TCQ, max(2, math.ceil(x / 2.0) + 2)))


def fit_params(beta_idx: int, t: int, counts: np.ndarray) -> np.ndarray:
    """Best ``param`` byte per quantizer for the integer histogram ``counts[q, k + m]`` (``m`` = half width).

    Minimises the code length ``−Σ counts · log2 p`` over all 256 bytes at once (one vectorized pass).
    """
    m = (counts.shape[1] - 1) // 2
    params = np.arange(256)
    shift, z = _unpack(params)
    a = _scale(t) * shift
    out = np.empty(2, dtype=np.int64)
    for q in (0, 1):
        c = counts[q]
        if c.sum() == 0:
            out[q] = DEFAULT_PARAM
            continue
        up = np.stack([_cell_uppers(q, m, float(zz)) for zz in z])  # (256, m + 1)
        cost = _code_lengths(_symmetric(_masses(BETAS[beta_idx], a, up))) @ c.astype(np.float64)
        out[q] = int(np.argmin(cost))
    return out


def run_layout(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of the given (coded) intervals, in wire order: start, length and the interval's position.

    Each interval is cut into runs of :data:`RUN`; the runs are sorted by length, longest first (stable),
    so the runs still going at lock-step position ``j`` are always a prefix.
    """
    if starts.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    n_runs = -(-lens // RUN)
    owner = np.repeat(np.arange(starts.size), n_runs)
    first = np.cumsum(n_runs) - n_runs
    j = np.arange(owner.size) - first[owner]
    rs = starts[owner] + j * RUN
    rl = np.minimum(RUN, lens[owner] - j * RUN)
    order = np.argsort(-rl, kind="stable")
    return rs[order], rl[order], owner[order]


def viterbi(xs: np.ndarray, rlen: np.ndarray, bits: np.ndarray, rows: np.ndarray, mt: int):
    """Rate–distortion optimal ``k`` and quantizer sequence of runs side by side.

    Parameters
    ----------
    xs
        ``(L, W)`` values in δ units, one run per column (positions past ``rlen`` are ignored).
    rlen
        ``(W,)`` run lengths.
    bits
        ``(R, 2, 2 mt + 1)`` code lengths of ``k = −mt..mt`` per model row and quantizer.
    rows
        ``(W,)`` model row of each run.

    Returns
    -------
    k, q1
        ``(L, W)`` int32 integers and bool quantizer flags (``True`` = ``Q1``); zero past each run's end.
    """
    n_pos, w = xs.shape
    x = xs.astype(np.float32)
    live = np.arange(n_pos)[:, None] < rlen[None, :]
    width = 2 * mt + 1
    flat_bits = bits.reshape(-1).astype(np.float32)
    best_c = np.empty((2, 2, n_pos, w), dtype=np.float32)
    best_k = np.empty((2, 2, n_pos, w), dtype=np.int32)
    sx = np.sign(x)
    for q in (0, 1):
        k0 = np.rint(x / 2) if q == 0 else np.rint((x + sx) / 2)
        np.clip(k0, -Q_MAX_TCQ, Q_MAX_TCQ, out=k0)  # keeps the int32 casts finite; the cap is a model edge
        base = ((rows * 2 + q) * width + mt)[None, :]
        par0 = k0.astype(np.int64) & 1
        same_c = np.full(x.shape, np.inf, np.float32)
        other_c = np.full(x.shape, np.inf, np.float32)
        same_k = np.zeros(x.shape, np.int32)
        other_k = np.zeros(x.shape, np.int32)
        for o in (-2, -1, 0, 1, 2):
            k = np.clip(k0 + o, -Q_MAX_TCQ, Q_MAX_TCQ).astype(np.int32)
            r = 2.0 * k - (np.sign(k) if q == 1 else 0)
            c = (x - r) ** 2
            inside = np.abs(k) <= mt
            idx = base + np.clip(k, -mt, mt)
            c += LAMBDA * np.where(inside, flat_bits[idx], _ESCAPE_BITS)
            c[~live] = 0.0  # past the run's end every choice is free
            tgt_c, tgt_k = (same_c, same_k) if o % 2 == 0 else (other_c, other_k)
            better = c < tgt_c
            tgt_c[better] = c[better]
            tgt_k[better] = k[better]
        for p in (0, 1):
            sel = par0 == p
            best_c[q, p] = np.where(sel, same_c, other_c)
            best_k[q, p] = np.where(sel, same_k, other_k)
    # forward pass: J[s] = best cost of a path ending in state s
    inf = np.float32(np.inf)
    j0 = np.zeros(w, np.float32)
    j1 = np.full(w, inf)
    j2 = np.full(w, inf)
    j3 = np.full(w, inf)
    back = np.empty((n_pos, 4, w), dtype=bool)  # True: the branch from the odd predecessor (1 or 3) won
    for i in range(n_pos):
        c00, c01, c10, c11 = best_c[0, 0, i], best_c[0, 1, i], best_c[1, 0, i], best_c[1, 1, i]
        a0, b0 = j0 + c00, j1 + c01
        a2, b2 = j0 + c01, j1 + c00
        a1, b1 = j2 + c10, j3 + c11
        a3, b3 = j2 + c11, j3 + c10
        bk = back[i]
        np.less(b0, a0, out=bk[0])
        np.less(b1, a1, out=bk[1])
        np.less(b2, a2, out=bk[2])
        np.less(b3, a3, out=bk[3])
        j0, j1, j2, j3 = np.minimum(a0, b0), np.minimum(a1, b1), np.minimum(a2, b2), np.minimum(a3, b3)
    # traceback from the best final state (padding is free, so this is the best state at each run's end)
    s = np.argmin(np.stack([j0, j1, j2, j3]), axis=0).astype(np.int64)
    cols = np.arange(w)
    k_out = np.empty((n_pos, w), dtype=np.int32)
    q_out = np.empty((n_pos, w), dtype=bool)
    for i in range(n_pos - 1, -1, -1):
        b = back[i, s, cols].astype(np.int64)
        ps = _PRED[s, b]
        qq = (ps >= 2).astype(np.int64)
        k_out[i] = best_k[qq, _PAR[s, b], i, cols]
        q_out[i] = qq.astype(bool)
        s = ps
    k_out[~live] = 0
    q_out[~live] = False
    return k_out, q_out


_SLICE = 1 << 20  # most per-symbol model entries handed to the ANS coder in one call


@dataclass
class Frame:
    """The TCQ part of one ``wf_ecq`` frame: interval codes, class records, ANS words and the error."""

    codes: np.ndarray  # class code per interval (0 = zero rate)
    ms: np.ndarray  # per class (ascending code): max |k|
    params: np.ndarray  # per class: (Q0, Q1) model bytes
    words: np.ndarray  # ANS words
    sqerr: float  # ‖x − x̂‖² of the whole update


def _classes(codes: np.ndarray, starts: np.ndarray, lens: np.ndarray):
    """Class keys, runs (start, length, class index) in wire order."""
    idx = np.flatnonzero(codes)
    keys, inv = np.unique(codes[idx], return_inverse=True)
    rs, rl, owner = run_layout(starts[idx], lens[idx])
    return keys, rs, rl, inv[owner].astype(np.int64) if owner.size else owner


def _bucket_half(ms: np.ndarray) -> np.ndarray:
    """Half width of each class's model bucket: ``2^⌈log2(M + 1)⌉ − 1``, at least 1 (two symbols)."""
    return np.maximum(np.left_shift(1, np.ceil(np.log2(ms + 1.0)).astype(np.int64)) - 1, 1)


class _Models:
    """Per-symbol model rows of a frame, in buckets of equal width.

    A class with alphabet bound ``M`` goes to the bucket of half width ``H = 2^⌈log2(M + 1)⌉ − 1`` (at least
    1: the coder needs two symbols), so a symbol costs the coder O(2H + 1) <= O(4M + 3) work, not the width
    of the frame's widest class. Within a lock-step position the symbols go bucket by bucket (ascending
    ``H``), each bucket's runs in run order.
    """

    def __init__(self, keys: np.ndarray, ms: np.ndarray, params: np.ndarray, rcls: np.ndarray) -> None:
        half = _bucket_half(ms)
        self.halves = np.unique(half)
        cls_bucket = np.searchsorted(self.halves, half)
        local = np.zeros(keys.size, dtype=np.int64)
        b, t = split_code(keys)
        self.tables = []
        for bi, h in enumerate(self.halves):
            members = np.flatnonzero(cls_bucket == bi)
            local[members] = np.arange(members.size)
            tab = np.zeros((2 * members.size, 2 * int(h) + 1))
            for r, c in enumerate(members):
                m = int(ms[c])
                for q in (0, 1):
                    p = probabilities(int(b[c]), int(t[c]), q, m, int(params[c, q]))
                    tab[2 * r + q, int(h) - m : int(h) + m + 1] = p
            self.tables.append(tab)
        self.run_row = local[rcls] if rcls.size else rcls
        run_bucket = cls_bucket[rcls] if rcls.size else rcls
        self.members = [np.flatnonzero(run_bucket == bi) for bi in range(self.halves.size)]

    def steps(self, n_live: int):
        """``(table, half, runs)`` of each bucket at a position where runs ``0..n_live-1`` are still going."""
        for tab, h, mem in zip(self.tables, self.halves, self.members, strict=True):
            runs = mem[: int(np.searchsorted(mem, n_live))]
            if runs.size:
                yield tab, int(h), runs


def limits(ms: np.ndarray, rcls: np.ndarray, rl: np.ndarray) -> str | None:
    """Why a frame with these class alphabets would be too costly to decode, or ``None`` if it is fine.

    Bounds the model tables (:data:`TABLE_LIMIT` entries) and the coder's work, ``Σ symbols × row width``
    (:data:`WORK_PER_SYMBOL` per symbol plus :data:`TABLE_LIMIT`); the encoder checks the same before sending.
    """
    if ms.size == 0:
        return None
    if int(ms.max()) > Q_MAX_TCQ:
        return f"alphabet bound {int(ms.max())} exceeds {Q_MAX_TCQ}"
    width = 2 * _bucket_half(ms) + 1
    entries = int(2 * width.sum())
    if entries > TABLE_LIMIT:
        return f"alphabets of {entries} model entries exceed the limit of {TABLE_LIMIT}"
    per_cls = np.bincount(rcls, weights=rl, minlength=ms.size)
    work = float(per_cls @ width)
    if work > WORK_PER_SYMBOL * float(rl.sum()) + TABLE_LIMIT:
        return f"alphabets too wide for the symbol count ({work:.3g} model entries to decode)"
    return None


class _Layout:
    """Lock-step symbol order of the runs: position ``j`` of runs ``0..n_j − 1`` at ``cum[j]`` onwards."""

    def __init__(self, rs: np.ndarray, rl: np.ndarray) -> None:
        self.rs, self.rl = rs, rl
        self.n_live = np.searchsorted(-rl, -np.arange(RUN), side="left")  # runs longer than j: a prefix
        self.cum = np.concatenate([[0], np.cumsum(self.n_live)]).astype(np.int64)

    def batches(self):
        """Runs ``a..b-1`` with their longest length ``L``: at most about ``_BATCH`` values per batch."""
        a, n = 0, self.rs.size
        while a < n:
            length = int(self.rl[a])
            b = min(n, a + max(1, _BATCH // length))
            yield a, b, length
            a = b

    def flat(self, a: int, b: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat lock-step index of the ``(length, b − a)`` batch matrix, and its live mask."""
        j = np.arange(length)[:, None]
        live = j < self.rl[a:b][None, :]
        return self.cum[:length, None] + np.arange(a, b)[None, :], live

    def gather(self, x: np.ndarray, a: int, b: int, length: int) -> np.ndarray:
        """``(length, b − a)`` values of runs ``a..b-1``, zero past each run's end."""
        pos = self.rs[a:b][None, :] + np.arange(length)[:, None]
        live = np.arange(length)[:, None] < self.rl[a:b][None, :]
        return np.where(live, x[np.where(live, pos, 0)], 0.0)


def encode(x: np.ndarray, codes: np.ndarray, starts: np.ndarray, lens: np.ndarray, delta: float):
    """Quantize the coded intervals of ``x`` on step ``delta`` by trellis search and ANS-code them.

    ``codes`` gives each interval's class (``_model.class_code(β_idx, t)`` with ``t`` the grid point of
    RMS/δ, 0 = zero rate). Returns a :class:`Frame`, or ``None`` when the alphabets exceed :func:`limits`.
    """
    keys, rs, rl, rcls = _classes(codes, starts, lens)
    lay = _Layout(rs, rl)
    b, t = split_code(keys)
    mt = max((model_bound(int(bb), int(tt)) for bb, tt in zip(b, t, strict=True)), default=2)
    width = 2 * mt + 1
    if 2 * keys.size * width > 4 * TABLE_LIMIT:  # search tables this wide: the scalar frame will do
        return None
    params = np.full((keys.size, 2), DEFAULT_PARAM, dtype=np.int64)
    k_flat = np.zeros(int(lay.cum[-1]), dtype=np.int32)
    q_flat = np.zeros(int(lay.cum[-1]), dtype=bool)
    for _ in range(PASSES):  # search with the default models, refit them, search again, refit
        bits = np.empty((keys.size, 2, width))
        for c in range(keys.size):
            for q in (0, 1):
                bits[c, q] = _code_lengths(probabilities(int(b[c]), int(t[c]), q, mt, int(params[c, q])))
        counts = np.zeros(keys.size * 2 * width, dtype=np.int64)
        for a, e, length in lay.batches():
            k, q1 = viterbi(lay.gather(x, a, e, length) / delta, rl[a:e], bits, rcls[a:e], mt)
            idx, live = lay.flat(a, e, length)
            k_flat[idx[live]], q_flat[idx[live]] = k[live], q1[live]
            row = (rcls[a:e][None, :] * 2 + q1) * width + np.clip(k, -mt, mt) + mt
            counts += np.bincount(row[live], minlength=counts.size)
        counts = counts.reshape(keys.size, 2, width)
        for c in range(keys.size):
            params[c] = fit_params(int(b[c]), int(t[c]), counts[c])
    # alphabet bound per class: from the histogram, and from the (rare) integers beyond the search table
    used = counts.sum(axis=1) > 0
    ms = (np.abs(np.arange(width) - mt)[None, :] * used).max(axis=1, initial=0).astype(np.int64)
    big = np.flatnonzero(np.abs(k_flat) >= mt)
    if big.size:
        j_of = np.searchsorted(lay.cum, big, side="right") - 1
        np.maximum.at(ms, rcls[big - lay.cum[j_of]], np.abs(k_flat[big]).astype(np.int64))
    if limits(ms, rcls, rl) is not None:
        return None
    words = _push(k_flat, q_flat, lay, _Models(keys, ms, params, rcls))
    # the error the decoder will see (float32 reconstruction), plus the zero-rate intervals' energy
    sq = float(np.sum(x.astype(np.float64) ** 2))
    for a, e, length in lay.batches():
        xs = lay.gather(x, a, e, length).astype(np.float64)
        idx, live = lay.flat(a, e, length)
        ii = idx[live]
        rec = (reconstruct(k_flat[ii], q_flat[ii]) * delta).astype(np.float32).astype(np.float64)
        sq += float(np.sum((xs[live] - rec) ** 2) - np.sum(xs[live] ** 2))
    return Frame(codes, ms, params, words, max(sq, 0.0))


def _slices(n: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _SLICE // max(width, 1))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _push(k_flat, q_flat, lay: _Layout, models: _Models) -> np.ndarray:
    """One ANS stack, pushed so that the decoder pops position 0 of every run first."""
    cs = ans()
    enc = cs.stream.stack.AnsCoder()
    model = cs.stream.model.Categorical(perfect=False)
    for j in range(RUN - 1, -1, -1):
        c0 = int(lay.cum[j])
        for tab, h, runs in reversed(list(models.steps(int(lay.n_live[j])))):
            for a, b in reversed(_slices(runs.size, tab.shape[1])):
                r = runs[a:b]
                rows = models.run_row[r] * 2 + q_flat[c0 + r]
                enc.encode_reverse(k_flat[c0 + r] + h, model, tab[rows])
    return np.asarray(enc.get_compressed(), dtype="<u4")


def decode(words, codes, ms, params, starts, lens, delta: float, out: np.ndarray, error) -> None:
    """Decode the TCQ symbols into ``out`` (float32, the coded intervals only). ``error`` builds the exception
    raised for bad data (the caller's ``PayloadError``)."""
    keys, rs, rl, rcls = _classes(codes, starts, lens)
    why = limits(ms, rcls, rl)
    if why is not None:
        raise error(why)
    if keys.size == 0:
        if words.size:
            raise error("ANS data left over after the last symbol")
        return
    cs = ans()
    models = _Models(keys, ms, params, rcls)
    model = cs.stream.model.Categorical(perfect=False)
    try:
        dec = cs.stream.stack.AnsCoder(words)
    except Exception as exc:  # constriction's own errors on hostile words
        raise error(f"malformed ANS stream ({type(exc).__name__}: {exc})") from None
    lay = _Layout(rs, rl)
    state = np.zeros(rs.size, dtype=np.int8)
    for j in range(RUN):
        n = int(lay.n_live[j])
        if n == 0:
            break
        q1 = state[:n] >= 2
        k = np.empty(n, dtype=np.int32)
        for tab, h, runs in models.steps(n):
            for a, b in _slices(runs.size, tab.shape[1]):
                r = runs[a:b]
                try:
                    k[r] = dec.decode(model, tab[models.run_row[r] * 2 + q1[r]]).astype(np.int32) - h
                except Exception as exc:
                    raise error(f"malformed ANS stream ({type(exc).__name__}: {exc})") from None
        state[:n] = NEXT[state[:n], k & 1]
        vals = reconstruct(k, q1) * delta
        out[rs[:n] + j] = np.clip(vals, -FP32_MAX, FP32_MAX).astype(np.float32)
    if not dec.is_empty():
        raise error("ANS data left over after the last symbol")

"""Generalized-Gaussian entropy models for ``wf_ecq`` (not a codec module: leading underscore).

Each coded interval is modelled as i.i.d. generalized Gaussian (GGD) ``∝ exp(−|x/α|^β)`` with its shape ``β``
picked from :data:`BETAS` and its RMS ``a`` (in units of the quantizer step Δ) on the log grid
``log2 a = (t − T_ZERO) / T_STEPS`` for ``t = 0..T_MAX``. The quantizer is the uniform dead-zone quantizer
``|q| = floor(|x| / Δ + ρ)``: ``q = 0`` on ``|x| < (1 − ρ) Δ``, ``|q| = k`` on ``[(k − ρ) Δ, (k + 1 − ρ) Δ)``.

This module gives, from integers only (so encoder and decoder compute bit-identical floats):

- :func:`class_probabilities`: the probability of every symbol ``−M..M`` of a class ``(β, t)`` (the exact GGD
  mass of each dead-zone bin), fed to ``constriction``'s categorical model;
- :func:`tables`: per ``(ρ, β)`` and every ``t``, the entropy (bits/element) and the distortion (Δ² units,
  centroid reconstruction) of that quantizer on that source; the rate search runs on these tables only.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import special

__all__ = [
    "BETAS",
    "Q_MAX",
    "T_MAX",
    "T_STEPS",
    "T_ZERO",
    "ans",
    "class_code",
    "class_probabilities",
    "ggd_alpha",
    "moment_ratios",
    "split_code",
    "tables",
]

BETAS = (0.5, 0.65, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0)  # 3-bit shape index
T_STEPS = 8  # grid points per octave of a = RMS / Δ
T_ZERO = 64  # t = 64 is a = 1; t = 0 is a = 2^-8
T_MAX = 144  # a <= 2^10: about 12 bits/element at most, keeps alphabets small
Q_MAX = 32767  # |q| cap (16-bit alphabet field)
_HIGH_RES_T = T_ZERO + 5 * T_STEPS  # a > 32: high-resolution formulas (dead zone and tails negligible)
_TAIL = 1e-13  # mass left outside the modelled alphabet when tabulating


def class_code(beta_idx, t):
    """Wire code of interval class (β index, t): ``1 + β_idx · (T_MAX + 1) + t``; 0 is zero rate."""
    return 1 + beta_idx * (T_MAX + 1) + t


def split_code(code):
    """``(β_idx, t)`` of a non-zero class code (ints or integer arrays): the inverse of :func:`class_code`."""
    return (code - 1) // (T_MAX + 1), (code - 1) % (T_MAX + 1)


def ans():
    """The ``constriction`` module, imported on first use (keeps ``import fedsqueeze`` light)."""
    import constriction

    return constriction


def ggd_alpha(beta: float) -> float:
    """GGD scale α giving unit RMS: E[x²] = α² Γ(3/β) / Γ(1/β)."""
    return math.exp(0.5 * (special.gammaln(1 / beta) - special.gammaln(3 / beta)))


def moment_ratios() -> np.ndarray:
    """``(E|x|)² / E[x²]`` of each shape in :data:`BETAS` (increasing with β)."""
    b = np.asarray(BETAS)
    lg = special.gammaln
    return np.exp(2 * lg(2 / b) - lg(1 / b) - lg(3 / b))


def _cum(beta: float, a: float, u: np.ndarray, p: int) -> np.ndarray:
    """``E[|X|^p ; |X| < u]`` for a GGD of shape β and RMS ``a`` (two-sided), ``u >= 0``."""
    s = a * ggd_alpha(beta)
    z = np.power(np.maximum(u, 0.0) / s, beta)
    lg = special.gammaln
    coef = s**p * math.exp(lg((p + 1) / beta) - lg(1 / beta))
    return coef * special.gammainc((p + 1) / beta, z)


def _bins(beta: float, a: float, rho: float, kmax: int, moments: bool):
    """Per-bin mass (and first/second moments) of ``|q| = 0..kmax``; the tail is folded into ``kmax``."""
    upper = (
        np.arange(kmax + 1, dtype=np.float64) + 1.0 - rho
    )  # bin k spans [k − ρ, k + 1 − ρ), bin 0 [0, 1 − ρ)
    out = []
    for p in (0, 1, 2) if moments else (0,):
        c = _cum(beta, a, upper, p)
        c[-1] = float(_cum(beta, a, np.array([np.inf]), p)[0])  # the last bin takes the tail
        out.append(np.diff(c, prepend=0.0))
    return out


def _kmax(beta: float, a: float, rho: float, tail: float) -> int:
    s = a * ggd_alpha(beta)
    x = s * float(special.gammaincinv(1 / beta, 1 - tail)) ** (1 / beta)
    return int(min(Q_MAX, max(1, math.ceil(x + rho) + 1)))


def scale_of(t: int) -> float:
    """RMS / Δ of grid point ``t``."""
    return 2.0 ** ((t - T_ZERO) / T_STEPS)


def class_probabilities(beta_idx: int, t: int, m: int, rho: float) -> np.ndarray:
    """Probabilities of the symbols ``q = −m..m`` (index ``q + m``) of class ``(β, t)``.

    The tail beyond ``m`` is folded into ``±m``; ``constriction`` gives every symbol a nonzero probability
    anyway, so a class whose data does not follow the model still codes (at a cost in bits).
    """
    (mass,) = _bins(BETAS[beta_idx], scale_of(t), rho, m, moments=False)
    mass = np.maximum(mass, 0.0)
    half = mass[1:] / 2
    return np.concatenate([half[::-1], mass[:1], half])


@lru_cache(maxsize=64)
def tables(rho_code: int, beta_idx: int) -> tuple[np.ndarray, np.ndarray]:
    """Entropy (bits/element) and distortion (Δ² units) of class ``(β, t)`` for every ``t = 0..T_MAX``.

    Exact bin sums for ``a <= 32``; above, the high-resolution forms ``h(X)/ln 2 − log2 Δ`` and ``Δ²/12``
    (with a tiny continuity correction so the curves join).
    """
    rho = rho_code / 256.0
    beta = BETAS[beta_idx]
    ent = np.zeros(T_MAX + 1)
    dist = np.zeros(T_MAX + 1)
    for t in range(min(T_MAX, _HIGH_RES_T) + 1):
        a = scale_of(t)
        k = _kmax(beta, a, rho, _TAIL)
        m, mu, s = _bins(beta, a, rho, k, moments=True)
        m = np.maximum(m, 0.0)
        nz = m > 0
        logm = np.zeros_like(m)
        logm[nz] = np.log2(m[nz])
        ent[t] = -(m[0] * logm[0]) - float(np.sum(m[1:] * (logm[1:] - 1.0)))
        kk = np.arange(m.size, dtype=np.float64)
        m1, m2 = m[1:2].sum(), m[2:].sum()
        c1 = (mu[1] / m1 - 1.0) if m1 > 0 else 0.5 - rho
        c2 = (float(np.sum(mu[2:] - kk[2:] * m[2:])) / m2) if m2 > 0 else 0.5 - rho
        r = kk + np.where(kk >= 2, c2, c1)
        r[0] = 0.0
        dist[t] = max(0.0, float(s[0] + np.sum(s[1:] - 2 * r[1:] * mu[1:] + r[1:] ** 2 * m[1:])))
    if T_MAX > _HIGH_RES_T:
        b = beta
        h_bits = (1 / b + math.log(2 * ggd_alpha(b) * math.exp(special.gammaln(1 / b)) / b)) / math.log(2)
        ts = np.arange(_HIGH_RES_T + 1, T_MAX + 1)
        hr = h_bits + (ts - T_ZERO) / T_STEPS
        t0 = _HIGH_RES_T
        ent[ts] = hr + (ent[t0] - (h_bits + (t0 - T_ZERO) / T_STEPS))
        dist[ts] = dist[t0]
    ent.setflags(write=False)
    dist.setflags(write=False)
    return ent, dist

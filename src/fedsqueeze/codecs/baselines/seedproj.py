"""``seedproj``: k shared-seed random directions; only the update's coefficients on them travel.

A seed-projection baseline in the spirit of FedKSeed (Qin et al., ICML 2024) and Ferret (Shu et al., 2024):
client and server derive the same random directions from a shared seed, so a round costs only the
coefficients, a few thousand numbers at the extreme low end of the rate range.

With ``n`` the smallest power of two ``>= d`` (``n = 1`` for ``d <= 1``), the directions are ``k`` rows ``S``
of the orthonormal randomized Hadamard transform ``Q = H D / sqrt(n)`` (``D`` diagonal ±1 signs, ``H`` the
Sylvester-ordered Walsh–Hadamard matrix). :func:`seedproj_directions` draws them from the frame's seed::

    rng   = numpy.random.default_rng(seed)
    signs = 1 - 2 * rng.integers(0, 2, size=n, dtype=int8)          # first
    S     = sort(rng.choice(n, k, replace=False))                   # then (all of 0..n-1 when k >= n)

The decoder recomputes them, so no positions or directions are sent. The encoder zero-pads ``x`` to ``n``,
computes ``y = fwht(signs * x) / sqrt(n)`` and codes ``c = y[S]`` (saturated at ±FLT_MAX); the decoder
puts the values at ``S`` of an ``n``-vector ``z`` (times ``n / k`` when ``unbiased``) and returns
``(signs * fwht(z) / sqrt(n))[:d]``. With ``k = n`` the reconstruction is ``x`` up to the value code; with
``k < n`` the biased form is the first ``d`` entries of the orthogonal projection of the padded ``x`` onto the
``k`` directions (the projection itself when ``d = n``), which keeps ``k / n`` of its energy in expectation;
dropping the padding part only lowers the error.

Body layout (MSB-first bit fields, zero-padded to a byte)::

    k            u32    coefficients, <= n
    value_bits   u8     32 (fp32), 16 (fp16 of v/scale) or 8, 4, 2 (sign + magnitude, uniform on [0, scale])
    unbiased     u8     1: the decoder scales by n/k (unbiased), 0: plain projection
    scale        f32    only when value_bits != 32: max |coefficient|
    values              k codes of value_bits bits, in row order (S ascending)

With ``rate`` set, k is the largest count whose whole frame fits ``floor(rate * d)`` bits; a rate too small
for even ``k = 0`` raises :class:`~fedsqueeze.ConfigError` at encode time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError, UsageError
from ...spec import UpdateSpec
from ..base import FP32_MAX, Codec
from ..budget import check_density, check_one_budget, check_rate
from ..registry import register
from ._util import kept_body_bits, kept_count, read_kept_values, to_f32, write_kept_values

__all__ = ["SeedProj", "fwht", "seedproj_dim", "seedproj_directions"]

# value_bits on the wire: raw fp32, the fp16-of-v/scale code, and three sign + magnitude widths.
VALUE_BITS = (32, 16, 8, 4, 2)


def seedproj_dim(d: int) -> int:
    """``n``: the smallest power of two ``>= d`` (1 for ``d <= 1``)."""
    return 1 << max(0, int(d) - 1).bit_length()


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalized fast Walsh–Hadamard transform ``H x`` (Sylvester order) of a power-of-two-long vector.

    ``log2 n`` butterfly stages on reshaped views of one float64 copy of ``x`` (plus an ``n / 2`` buffer);
    ``H`` is symmetric and ``H H = n I``, so ``fwht(fwht(x)) = n x``.

    Parameters
    ----------
    x
        A 1-D array whose length is a power of two.

    Returns
    -------
    numpy.ndarray
        ``H x`` as a new float64 array.
    """
    return _fwht_inplace(np.array(x, dtype=np.float64).reshape(-1))


def _fwht_inplace(out: np.ndarray) -> np.ndarray:
    """:func:`fwht` on a 1-D float64 array, overwriting it (the codec's own buffers need no copy)."""
    n = out.size
    if n & (n - 1):
        raise UsageError(f"fwht needs a power-of-two length, got {n}")
    h = 1
    while h < n:
        v = out.reshape(-1, 2, h)
        a = v[:, 0, :].copy()
        v[:, 0, :] += v[:, 1, :]  # a + b
        v[:, 1, :] *= -1.0
        v[:, 1, :] += a  # a - b
        h *= 2
    return out


def seedproj_directions(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(signs, rows)`` of ``seed`` (shared by encoder and decoder).

    Parameters
    ----------
    n
        Transform length (a power of two, :func:`seedproj_dim`).
    k
        Number of directions; all ``n`` rows when ``k >= n``, none when ``k <= 0``.
    seed
        The frame's seed.

    Returns
    -------
    tuple of numpy.ndarray
        float64 ±1 signs of length ``n`` (the diagonal ``D``), and the ``k`` sorted int64 rows ``S`` of
        ``Q = H D / sqrt(n)``.
    """
    rng = np.random.default_rng(seed)
    signs = 1.0 - 2.0 * rng.integers(0, 2, size=n, dtype=np.int8).astype(np.float64)
    if k <= 0:
        rows = np.zeros(0, dtype=np.int64)
    elif k >= n:
        rows = np.arange(n, dtype=np.int64)
    else:
        rows = rng.choice(n, size=k, replace=False).astype(np.int64)
        rows.sort()
    return signs, rows


@register
@dataclasses.dataclass(frozen=True)
class SeedProj(Codec):
    """Seed projection: the update's coefficients on k seed-derived randomized-Hadamard directions.

    Parameters
    ----------
    density
        Kept fraction of the ``n`` directions (``n`` the smallest power of two ``>= d``):
        ``k = floor(density * n)``, at least 1, at most ``n``, so ``density = 1`` is lossless up to the value
        code. Replaced by ``rate`` when set (then leave it at its default).
    rate
        Target bits per parameter of the whole frame; picks the largest ``k`` that fits.
    value_bits
        32 (fp32), 16 (fp16 of ``v / max|v|`` with an fp32 scale), or 8, 4, 2 (sign plus a uniform magnitude
        level on ``[0, max|v|]``, rounded to nearest). The coefficients of a rotated vector are near
        Gaussian, so 8 bits with one max-abs scale lose little.
    unbiased
        Scale the decoded coefficients by ``n / k`` (unbiased); use the biased form (the orthogonal
        projection) with error feedback.
    """

    name: ClassVar[str] = "seedproj"
    codec_id: ClassVar[int] = 16
    summary: ClassVar[str] = "SeedProj: k coefficients on seeded randomized-Hadamard directions (none sent)"
    rate_option: ClassVar[str | None] = "rate"

    density: float = 0.02
    rate: float | None = None
    value_bits: int = 8
    unbiased: bool = False

    def __post_init__(self) -> None:
        check_density(self.name, self.density)
        check_rate(self.name, self.rate)
        check_one_budget(self)
        if not (
            isinstance(self.value_bits, int)
            and not isinstance(self.value_bits, bool)
            and self.value_bits in VALUE_BITS
        ):
            raise ConfigError(f"seedproj: value_bits must be one of 32, 16, 8, 4, 2, got {self.value_bits!r}")
        if not isinstance(self.unbiased, bool):
            raise ConfigError(f"seedproj: unbiased must be True or False, got {self.unbiased!r}")

    def choose_k(self, d: int) -> int:
        """Coefficient count for a vector of length ``d`` (from ``density`` or the ``rate`` search)."""
        return kept_count(self.name, self.density, self.rate, self.value_bits, d, pool=seedproj_dim(d))

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        d = spec.numel
        n = seedproj_dim(d)
        k = self.choose_k(d)
        signs, rows = seedproj_directions(n, k, seed)
        x = np.zeros(n, dtype=np.float64)
        x[:d] = flat.numpy()
        x *= signs
        y = _fwht_inplace(x)
        # Saturate: a coefficient of a vector of near-FLT_MAX entries can exceed the float32 range.
        coef = np.clip(y[rows] / math.sqrt(n), -FP32_MAX, FP32_MAX)
        return write_kept_values(coef, self.value_bits, self.unbiased)

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        d = spec.numel
        n = seedproj_dim(d)
        vals, unbiased = read_kept_values(cls.name, body, n, "n", VALUE_BITS, "unbiased")
        k = vals.size
        if unbiased and k:
            vals = vals * (n / k)
        signs, rows = seedproj_directions(n, k, seed)
        z = np.zeros(n, dtype=np.float64)
        z[rows] = vals
        out = _fwht_inplace(z)
        out *= signs
        out /= math.sqrt(n)
        return to_f32(out[:d])

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        return (int(kept_body_bits(seedproj_dim(spec.numel), 32)) + 32 + 7) // 8

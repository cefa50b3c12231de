"""``powersgd``: one-shot rank-r PowerSGD per matrix (Vogels et al., arXiv:1905.13727), FL variant (b).

Every tensor with ``ndim >= 2`` is a matrix ``M`` of shape ``(shape[0], -1)``. Starting from the client's
warm-start ``Q`` (kept in :attr:`state` under the tensor's name; seeded Gaussian on first use), each power
iteration does ``P = orth(M Q)`` (LAPACK QR) and ``Q = Mᵀ P``; the client sends ``P`` and ``Q`` so
the server decodes ``M̂ = P Qᵀ`` with no state. 1-D tensors, and matrices where ``r (n + m) >= n m``, go
dense fp32. Work runs in float64 on ``M / max|M|`` so huge or tiny magnitudes neither overflow nor underflow;
``Q`` is sent as ``c · Q̃`` with ``max|Q̃| = 1`` so fp16 factors keep their range.

Body layout (MSB-first bit fields, zero-padded to a byte)::

    factor_bits  u8            32 or 16
    ranks        u16 × tensors 0 = dense, else the rank used for that tensor (spec order)
    then per tensor, in spec order:
      dense:     numel × f32
      low rank:  c f32, P (n × r, row-major), Q̃ (m × r, row-major) in factor_bits floats

With ``rate`` set, the rank is the largest one whose whole frame fits ``floor(rate * d)`` bits; when even
rank 1 does not fit (e.g. dense 1-D tensors alone exceed the budget) :class:`~fedsqueeze.ConfigError` is
raised.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError, PayloadError
from ...spec import UpdateSpec
from ...wire.bitpack import BitReader, BitWriter
from ..base import FP32_MAX, Codec
from ..budget import check_one_budget, check_rate
from ..registry import register
from ._util import (
    expect_body_bits,
    largest_fitting,
    read_scale,
    to_f32,
)

__all__ = ["PowerSGD"]

MAX_RANK = 65535


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) < 2:
        return None
    n = shape[0]
    return n, (math.prod(shape[1:]) if n else 0)


def _factor_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(n, m)`` of a tensor sent as factors (a nonzero rank implies ``ndim >= 2``)."""
    nm = _matrix_shape(shape)
    assert nm is not None, f"a tensor of shape {shape} has no factors"
    return nm


def _rank_used(shape: tuple[int, ...], rank: int) -> int:
    """Rank sent for a tensor at the requested ``rank`` (0 = dense)."""
    nm = _matrix_shape(shape)
    if nm is None:
        return 0
    n, m = nm
    r = min(rank, n, m)
    return r if r * (n + m) < n * m else 0


def _tensor_bits(shape: tuple[int, ...], numel: int, r: int, fb: int) -> int:
    if r == 0:
        return 32 * numel
    n, m = _factor_shape(shape)
    return 32 + fb * r * (n + m)


def _body_bits(spec: UpdateSpec, ranks: list[int], fb: int) -> int:
    return (
        8
        + 16 * len(spec)
        + sum(_tensor_bits(s, k, r, fb) for s, k, r in zip(spec.shapes, spec.sizes, ranks, strict=True))
    )


@register
@dataclasses.dataclass(frozen=True)
class PowerSGD(Codec):
    """Low-rank ``P Qᵀ`` per matrix with a warm-started ``Q`` (stateful, use one instance per client).

    Parameters
    ----------
    rank
        Rank r of every matrix (capped at ``min(n, m)``). Replaced by ``rate`` when set (then leave it at 1).
    rate
        Target bits per parameter of the whole frame; picks the largest rank that fits.
    power_iters
        Power iterations per call (1 with warm start is PowerSGD's default).
    factor_bits
        32 (fp32) or 16 (fp16) for P and Q; dense tensors are always fp32.
    """

    name: ClassVar[str] = "powersgd"
    codec_id: ClassVar[int] = 14
    summary: ClassVar[str] = "PowerSGD one-shot rank-r P Q^T per matrix, warm-started Q, 1-D tensors dense"
    rate_option: ClassVar[str | None] = "rate"
    stateful: ClassVar[bool] = True

    rank: int = 1
    rate: float | None = None
    power_iters: int = 1
    factor_bits: int = 32

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and 1 <= self.rank <= MAX_RANK):
            raise ConfigError(f"powersgd: rank must be an int in 1..{MAX_RANK}, got {self.rank!r}")
        check_rate(self.name, self.rate)
        check_one_budget(self, "rank")
        if not (isinstance(self.power_iters, int) and 1 <= self.power_iters <= 16):
            raise ConfigError(f"powersgd: power_iters must be an int in 1..16, got {self.power_iters!r}")
        if self.factor_bits not in (16, 32):
            raise ConfigError(f"powersgd: factor_bits must be 32 or 16, got {self.factor_bits!r}")

    def choose_rank(self, spec: UpdateSpec) -> int:
        """The requested rank (from ``rank`` or the ``rate`` search)."""
        if self.rate is None:
            return self.rank
        mats = [nm for nm in map(_matrix_shape, spec.shapes) if nm is not None]
        rmax = min(MAX_RANK, max([min(n, m) for n, m in mats], default=1))
        sizes = [
            _body_bits(spec, [_rank_used(s, r) for s in spec.shapes], self.factor_bits)
            for r in range(1, max(rmax, 1) + 1)
        ]
        return 1 + largest_fitting(self.name, np.array(sizes), self.rate, spec.numel)

    # -- one matrix ---------------------------------------------------------------------------------------
    def _factor(
        self, M: np.ndarray, name: str, r: int, seed: int, index: int
    ) -> tuple[float, np.ndarray, np.ndarray]:
        amax = float(np.abs(M).max()) if M.size else 0.0
        Mn = M / amax if amax > 0 else M
        m = M.shape[1]
        Q = self.state.get(name)
        if (
            Q is None
            or tuple(Q.shape) != (m, r)
            or not bool(torch.isfinite(Q).all())
            or float(Q.abs().max()) == 0
        ):  # first call, new rank, or a dead (zero) warm start
            Qa = np.random.default_rng([seed, index]).standard_normal((m, r))
        else:
            Qa = Q.numpy().astype(np.float64)
        # NumPy/LAPACK for these many small products: torch's CPU float64 path costs ~50x more per call here.
        for _ in range(self.power_iters):
            P = np.linalg.qr(Mn @ Qa)[0]  # orthonormal columns even when M Q is rank deficient
            Qa = Mn.T @ P
        qmax = float(np.abs(Qa).max())
        Qn = Qa / qmax if qmax > 0 else Qa
        self.state[name] = torch.from_numpy(Qn.astype(np.float32))
        return min(FP32_MAX, qmax * amax), P, Qn

    # -- codec --------------------------------------------------------------------------------------------
    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        rank = self.choose_rank(spec)
        ranks = [_rank_used(s, rank) for s in spec.shapes]
        fb = self.factor_bits
        w = BitWriter()
        w.write_uint(fb, 8)
        w.write_uints(np.asarray(ranks, dtype=np.uint64), 16)
        x64 = flat.numpy().astype(np.float64)
        for i, ((name, shape), a, b, r) in enumerate(
            zip(spec.entries, spec.offsets[:-1], spec.offsets[1:], ranks, strict=True)
        ):
            if r == 0:
                w.write_f32(flat[a:b].numpy())
                continue
            n, m = _factor_shape(shape)
            c, P, Q = self._factor(x64[a:b].reshape(n, m), name, r, seed, i)
            w.write_f32(c)
            for F in (P, Q):
                if fb == 32:
                    w.write_f32(F.reshape(-1))
                else:
                    w.write_f16(F.reshape(-1))
        return w.getvalue()

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        r = BitReader(body)
        fb = r.read_uint(8, "factor_bits")
        if fb not in (16, 32):
            raise PayloadError(f"powersgd: invalid factor_bits {fb}")
        ranks = [int(x) for x in r.read_uints(len(spec), 16, "ranks")]
        for shape, rk in zip(spec.shapes, ranks, strict=True):
            if rk and _rank_used(shape, rk) != rk:
                raise PayloadError(f"powersgd: rank {rk} is invalid for a tensor of shape {shape}")
        expect_body_bits(cls.name, body, _body_bits(spec, ranks, fb))
        out = np.zeros(spec.numel, dtype=np.float64)
        read = r.read_f32 if fb == 32 else r.read_f16
        for shape, a, b, rk in zip(spec.shapes, spec.offsets[:-1], spec.offsets[1:], ranks, strict=True):
            if rk == 0:
                dense = r.read_f32(b - a, "dense values")
                if not np.isfinite(dense).all():
                    raise PayloadError("powersgd: non-finite dense value")
                out[a:b] = dense
                continue
            n, m = _factor_shape(shape)
            c = read_scale(r, cls.name)
            with np.errstate(invalid="ignore"):  # a hostile NaN pattern is refused just below
                P = read(n * rk, "P").astype(np.float64).reshape(n, rk)
                Q = read(m * rk, "Q").astype(np.float64).reshape(m, rk)
            if not (np.isfinite(P).all() and np.isfinite(Q).all()):
                raise PayloadError("powersgd: non-finite factor")
            with np.errstate(over="ignore", invalid="ignore"):  # finite but huge products saturate in to_f32
                out[a:b] = (c * (P @ Q.T)).reshape(-1)
        r.expect_end()
        return to_f32(out)

    @classmethod
    def max_body_bytes(cls, spec: UpdateSpec) -> int:
        # Low rank is used only when cheaper than dense, so dense fp32 everywhere is the largest body.
        return (8 + 48 * len(spec) + 32 * spec.numel + 7) // 8

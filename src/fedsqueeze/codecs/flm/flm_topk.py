"""FLM-TopK: TopK over contiguous intervals with short local position ids and packetized quantization.

Qiu et al., "FLM-TopK: expediting federated large language model tuning by sparsifying intervalized
gradients", INFOCOM 2025; reconstruction, budget and derivation in ``docs/flm-topk.md``, wire format in
``wire/SPEC.md``.

The flat update is cut into ``m = ceil(d / L)`` intervals of ``L = 2**s`` entries; a kept entry costs an
``s``-bit local offset, a sign bit and a ``b``-bit level, in packets of at most 1500 bytes that each carry
their own width ``b`` and range. Two allocations:

- ``threshold`` (default, ours): one global magnitude threshold, i.e. the KKT optimum (``docs/flm-topk.md``
  §5) when the intervals' scales differ; ``k_j`` travels in the header. Cuts the error of ``even`` sharply
  on updates whose scale varies across tensors (LoRA A vs B, layers) and equals it when all intervals look
  alike.
- ``even`` (the paper): packets split evenly over intervals, per-interval kept count and widths by the exact
  packet-plan DP.

``L`` is searched over powers of two with exact prefix-sum error estimates, not the authors' surrogate.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from ...errors import ConfigError
from ...spec import UpdateSpec
from ..base import Codec
from ..budget import budget_bits, check_density, check_one_budget, check_rate
from ..registry import register
from ._packets import (
    MAX_B,
    MODE_EVEN,
    MODE_THRESHOLD,
    BudgetTooSmallError,
    decode_body,
    empty_body,
    encode_body,
)
from ._plan import even_stream, log2_exact, threshold_stream

__all__ = ["FLMTopK"]


@register
@dataclasses.dataclass(frozen=True)
class FLMTopK(Codec):
    """Interval TopK with packetized stochastic quantization (FLM-TopK).

    Parameters
    ----------
    mode
        ``"threshold"`` (default; global threshold grouped by interval) or ``"even"`` (the paper's split).
    density
        Budget as the paper's ``P = floor(floor(p d) (33 + log2 d) / 12000)`` packets (not with ``rate``).
    rate
        Target bits per parameter of the whole frame, instead of ``density`` (a non-default density with a
        rate is a ``ConfigError``).
    b_min, b_max
        Range of the per-packet value bit width (1..15).
    interval_size
        Fixed interval length ``L`` (a power of two); ``None`` searches it each time it is re-optimized.
    reoptimize_every
        Search ``L`` on the first call and then every this many calls; in between the instance reuses the
        cached ``L`` kept in :attr:`state` (``{"calls", "s", "d"}``), so use one instance per client
        (``codec.fresh()`` / :class:`~fedsqueeze.ErrorFeedback` do that).
    """

    name: ClassVar[str] = "flm_topk"
    codec_id: ClassVar[int] = 21
    summary: ClassVar[str] = "FLM-TopK: interval TopK, short PIDs, per-packet widths (paper budget p=0.02)"
    rate_option: ClassVar[str | None] = "rate"
    stateful: ClassVar[bool] = True

    mode: str = "threshold"
    density: float = 0.02
    rate: float | None = None
    b_min: int = 4
    b_max: int = 10
    interval_size: int | None = None
    reoptimize_every: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("even", "threshold"):
            raise ConfigError(f"mode must be 'even' or 'threshold', got {self.mode!r}")
        check_density(self.name, self.density)
        check_rate(self.name, self.rate)
        check_one_budget(self)
        if not 1 <= self.b_min <= self.b_max <= MAX_B:
            raise ConfigError(
                f"need 1 <= b_min <= b_max <= {MAX_B}, got b_min={self.b_min}, b_max={self.b_max}"
            )
        if self.interval_size is not None and not (
            self.interval_size >= 2 and log2_exact(self.interval_size) > 0 and self.interval_size <= 2**31
        ):
            raise ConfigError(f"interval_size must be a power of two in [2, 2**31], got {self.interval_size}")
        if self.reoptimize_every < 1:
            raise ConfigError(f"reoptimize_every must be >= 1, got {self.reoptimize_every}")

    def budget(self, d: int) -> int:
        """Frame budget in bits for an update of ``d`` parameters."""
        return budget_bits(d, rate=self.rate, density=self.density, name=self.name)

    def _interval_exponent(self, d: int) -> int | None:
        if self.interval_size is not None:
            return log2_exact(self.interval_size)
        calls = int(self.state.get("calls", 0))
        if self.state.get("d") == d and "s" in self.state and calls % self.reoptimize_every:
            return int(self.state["s"])
        return None

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        d = spec.numel
        budget = self.budget(d)
        s_fixed = self._interval_exponent(d)
        try:
            if self.mode == "threshold":
                stream, s, k_j, info = threshold_stream(flat, budget, self.b_min, self.b_max, s_fixed)
                body = encode_body(stream, mode=MODE_THRESHOLD, s=s, d=d, k_per_interval=k_j, seed=seed)
            else:
                stream, s, info = even_stream(flat, budget, self.b_min, self.b_max, s_fixed)
                body = encode_body(stream, mode=MODE_EVEN, s=s, d=d, k_per_interval=None, seed=seed)
            info["packets"] = int(stream.counts.size)
        except BudgetTooSmallError:
            try:  # below one packet: send nothing (error feedback keeps the whole update)
                body, s, info = empty_body(budget, d), None, {"packets": 0, "kept": 0}
            except BudgetTooSmallError as exc:
                raise ConfigError(f"flm_topk: {exc}; raise the budget (density or rate)") from None
        self.state.update(calls=int(self.state.get("calls", 0)) + 1, d=d)
        if s is not None:
            self.state["s"] = s
        self.state["last"] = info
        return body

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        idx, vals = decode_body(body, spec.numel)
        out = torch.zeros(spec.numel, dtype=torch.float32)
        out[torch.from_numpy(idx)] = torch.from_numpy(vals)
        return out

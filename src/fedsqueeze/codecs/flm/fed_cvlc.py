"""Fed-CVLC: global TopK candidates in 1500-byte packets, each with its own value bit width.

Su et al., "Fed-CVLC: Compressing federated learning communications with variable-length codes", INFOCOM
2024, arXiv:2402.03770 (``docs/flm-topk.md`` §7–8). It is FLM-TopK's
``even`` allocation with one interval of length ``d``: ``ceil(log2 d)``-bit position ids, packets over runs
of the magnitude-sorted candidates, widths and kept count from the packet-plan search (``search``: the exact
DP, or a fast search that keeps the DP while it is cheap), stochastic rounding between each packet's extreme
magnitudes. The body is the ``flm_topk`` packet format (``_packets.py``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError, PayloadError
from ...spec import UpdateSpec
from ..base import Codec
from ..budget import budget_bits, check_density, check_one_budget, check_rate
from ..registry import register
from ._packets import MAX_B, MODE_EVEN, BudgetTooSmallError, ceil_log2, decode_body, empty_body, encode_body
from ._plan import SEARCHES, even_stream

__all__ = ["FedCVLC"]


@register
@dataclasses.dataclass(frozen=True)
class FedCVLC(Codec):
    """Fed-CVLC: one interval, packets with per-packet value widths.

    Parameters
    ----------
    density
        Budget as the paper's ``P`` packets of 12,000 bits at TopK density ``p`` (not with ``rate``).
    rate
        Target bits per parameter of the whole frame, instead of ``density`` (a non-default density with a
        rate is a ``ConfigError``).
    b_min, b_max
        Range of the per-packet value bit width (1..15).
    search
        Packet-plan search. ``"exact"``: the paper's dynamic program over the top-k candidates, exact but
        ``O(W P^2 n)`` for ``P`` packets of ``n`` entries and ``W`` widths. ``"fast"`` (default):
        candidates from a sampled threshold instead of a top-k over ``d``, and the exact DP only while it is
        cheap; above that, the best single-width plan refined by per-packet width changes (``O(W P)`` per
        round). On Gaussian-like updates both find the same plan (every packet at ``b_min``: a dropped entry
        costs far more than coarser levels); ``docs/flm-topk.md`` §8 says where they differ and
        ``docs/benchmarks.md`` gives the measured error and time of each.
    """

    name: ClassVar[str] = "fed_cvlc"
    codec_id: ClassVar[int] = 20
    summary: ClassVar[str] = "Fed-CVLC: TopK in 1500-B packets, per-packet bit widths (paper budget p=0.02)"
    rate_option: ClassVar[str | None] = "rate"

    density: float = 0.02
    rate: float | None = None
    b_min: int = 4
    b_max: int = 10
    search: str = "fast"

    def __post_init__(self) -> None:
        check_density(self.name, self.density)
        check_rate(self.name, self.rate)
        check_one_budget(self)
        if self.search not in SEARCHES:
            raise ConfigError(f"fed_cvlc: search must be one of {SEARCHES}, got {self.search!r}")
        if not 1 <= self.b_min <= self.b_max <= MAX_B:
            raise ConfigError(
                f"need 1 <= b_min <= b_max <= {MAX_B}, got b_min={self.b_min}, b_max={self.b_max}"
            )

    def encode_flat(self, flat: torch.Tensor, spec: UpdateSpec, *, seed: int) -> bytes:
        d = spec.numel
        s = max(1, ceil_log2(d))
        budget = budget_bits(d, rate=self.rate, density=self.density, name=self.name)
        try:
            stream, s, _ = even_stream(flat, budget, self.b_min, self.b_max, s, self.search)
        except BudgetTooSmallError:
            try:  # below one packet: send nothing
                return empty_body(budget, d)
            except BudgetTooSmallError as exc:
                raise ConfigError(f"fed_cvlc: {exc}; raise the budget (density or rate)") from None
        return encode_body(stream, mode=MODE_EVEN, s=s, d=d, k_per_interval=None, seed=seed)

    @classmethod
    def decode_flat(cls, body: bytes, spec: UpdateSpec, *, seed: int) -> torch.Tensor:
        d = spec.numel
        if len(body) and (body[0] >> 3) < max(1, ceil_log2(d)):
            raise PayloadError("fed_cvlc body must describe a single interval")
        idx, vals = decode_body(body, d, want_mode=MODE_EVEN)
        out = np.zeros(d, dtype=np.float32)  # numpy: no torch thread hand-off for a scatter of k values
        out[idx] = vals
        return torch.from_numpy(out)

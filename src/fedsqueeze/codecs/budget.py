"""Shared bit budgets: the papers' packet budget and rate targets.

All budgets are for the *whole frame* (32-byte header included), so ``len(payload) * 8 <= budget``.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from ..wire.frame import HEADER_SIZE
from ._baseline_util import check_rate, check_rate_fits

__all__ = ["PACKET_BITS", "PACKET_BYTES", "budget_bits", "paper_packets"]

PACKET_BYTES = 1500
PACKET_BITS = 8 * PACKET_BYTES  # C = 12,000 bits


def paper_packets(d: int, density: float = 0.02) -> int:
    """The papers' packet budget ``P = floor(floor(p d) (32 + log2 d + 1) / 12000)``, at least 1."""
    if d <= 0:
        return 1
    return max(1, math.floor(math.floor(density * d) * (32 + math.log2(d) + 1) / PACKET_BITS))


def budget_bits(d: int, *, rate: float | None = None, density: float = 0.02, name: str = "budget") -> int:
    """Frame budget in bits: ``rate * d`` when a rate is given, else the paper's ``P * 12000``.

    The result is never below the frame header plus one byte, so tiny specs still get a valid frame. A rate
    is checked as every codec's ``rate`` option is (:func:`~._baseline_util.check_rate`, and not above the
    dense fp32 frame of ``d``); ``name`` (the codec) starts the messages.
    """
    if rate is not None:
        check_rate(name, rate)
        check_rate_fits(name, rate, d)
        bits = math.floor(rate * d)
    else:
        if not 0 < density <= 1:
            raise ConfigError(f"density must be in (0, 1], got {density}")
        bits = paper_packets(d, density) * PACKET_BITS
    return max(bits, 8 * HEADER_SIZE + 8)

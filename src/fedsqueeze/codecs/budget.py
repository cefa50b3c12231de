"""Shared bit budgets: the papers' packet budget and rate targets.

All budgets are for the *whole frame* (32-byte header included), so ``len(payload) * 8 <= budget``.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from ..wire.frame import HEADER_SIZE

__all__ = ["PACKET_BITS", "PACKET_BYTES", "budget_bits", "paper_packets"]

PACKET_BYTES = 1500
PACKET_BITS = 8 * PACKET_BYTES  # C = 12,000 bits


def paper_packets(d: int, density: float = 0.02) -> int:
    """The papers' packet budget ``P = floor(floor(p d) (32 + log2 d + 1) / 12000)``, at least 1."""
    if d <= 0:
        return 1
    return max(1, math.floor(math.floor(density * d) * (32 + math.log2(d) + 1) / PACKET_BITS))


def budget_bits(d: int, *, rate: float | None = None, density: float = 0.02) -> int:
    """Frame budget in bits: ``rate * d`` when a rate is given, else the paper's ``P * 12000``.

    The result is never below the frame header plus one byte, so tiny specs still get a valid frame.
    """
    if rate is not None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(f"rate must be a positive number of bits per parameter, got {rate}")
        bits = math.floor(rate * d)
    else:
        if not 0 < density <= 1:
            raise ConfigError(f"density must be in (0, 1], got {density}")
        bits = paper_packets(d, density) * PACKET_BITS
    return max(bits, 8 * HEADER_SIZE + 8)

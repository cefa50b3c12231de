"""Shared bit budgets and the option checks of every budget codec.

All budgets are for the *whole frame* (32-byte header included), so ``len(payload) * 8 <= budget``. Every
codec with a ``rate`` option checks it with :func:`check_rate` when it is made and :func:`check_rate_fits`
when it encodes, a ``density`` with :func:`check_density`, and the pair with :func:`check_one_budget`, so
the same bad value gets the same message from every codec.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..errors import ConfigError
from ..wire.frame import HEADER_SIZE

__all__ = [
    "HEADER_BITS",
    "MAX_RATE",
    "PACKET_BITS",
    "PACKET_BYTES",
    "budget_bits",
    "check_density",
    "check_one_budget",
    "check_rate",
    "check_rate_fits",
    "paper_packets",
]

PACKET_BYTES = 1500  # the papers' packet (one Ethernet MTU)
PACKET_BITS = 8 * PACKET_BYTES  # C = 12,000 bits
HEADER_BITS = 8 * HEADER_SIZE
# A dense fp32 frame is 32 bits/param plus the header; 64 leaves room for the header down to d = 8. A rate
# above it is refused when the codec is made, one above the dense frame of the actual d when it encodes.
MAX_RATE = 64.0


def check_density(name: str, density: float) -> None:
    """The ``density`` option of a budget codec: a number in ``(0, 1]`` (the kept share of the entries)."""
    if not (isinstance(density, int | float) and not isinstance(density, bool) and 0 < density <= 1):
        raise ConfigError(f"{name}: density must be in (0, 1], got {density!r}")


def check_rate(name: str, rate: float | None) -> None:
    """The ``rate`` option of every budget codec: ``None`` or a number in ``(0, MAX_RATE]`` bits/param."""
    if rate is None:
        return
    if not (
        isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0 and math.isfinite(rate)
    ):
        raise ConfigError(f"{name}: rate must be positive bits per parameter or None, got {rate!r}")
    if rate > MAX_RATE:
        raise ConfigError(
            f"{name}: rate {rate:g} bits/param is more than a dense fp32 update needs (32 bits/param plus "
            f"the {HEADER_BITS}-bit frame header); use at most {MAX_RATE:g}, or the identity codec to send "
            "it whole"
        )


def check_one_budget(codec: Any, field: str = "density") -> None:
    """Refuse ``field`` (e.g. ``density``) set to other than its default together with ``rate``, which
    would silently override it.

    ``codec`` is a budget codec instance with fields ``rate`` and ``field``. The default with a rate passes,
    so ``get(name, **codec.options())`` rebuilds any codec.
    """
    if codec.rate is None:
        return
    default = next(f.default for f in dataclasses.fields(codec) if f.name == field)
    value = getattr(codec, field)
    if value != default:
        raise ConfigError(
            f"{codec.name}: give {field} or rate, not both (rate {codec.rate:g} would override {field} "
            f"{value:g}); drop one of them"
        )


def check_rate_fits(name: str, rate: float | None, d: int) -> None:
    """Refuse a rate whose budget exceeds the dense fp32 frame of ``d`` parameters (32 d + header bits)."""
    if rate is None or d <= 0 or rate * d <= 32 * d + HEADER_BITS:
        return
    raise ConfigError(
        f"{name}: rate {rate:g} bits/param is more than the dense fp32 frame of d={d} takes "
        f"({32 + HEADER_BITS / d:.4g} bits/param); lower the rate, or use the identity codec to send it whole"
    )


def paper_packets(d: int, density: float = 0.02) -> int:
    """The papers' packet budget ``P = floor(floor(p d) (32 + log2 d + 1) / 12000)``, at least 1."""
    if d <= 0:
        return 1
    return max(1, math.floor(math.floor(density * d) * (32 + math.log2(d) + 1) / PACKET_BITS))


def budget_bits(d: int, *, rate: float | None = None, density: float = 0.02, name: str = "budget") -> int:
    """Frame budget in bits: ``rate * d`` when a rate is given, else the paper's ``P * 12000``.

    The result is never below the frame header plus one byte, so tiny specs still get a valid frame. A rate
    is checked as every codec's ``rate`` option is (:func:`check_rate`, and not above the dense fp32 frame
    of ``d``); ``name`` (the codec) starts the messages.
    """
    if rate is not None:
        check_rate(name, rate)
        check_rate_fits(name, rate, d)
        bits = math.floor(rate * d)
    else:
        check_density(name, density)
        bits = paper_packets(d, density) * PACKET_BITS
    return max(bits, HEADER_BITS + 8)

"""``[network]``: the clients' simulated links (:class:`NetworkConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .fields import POSITIVE, Range, setting, validate
from .sections import register_section

__all__ = ["NETWORK_KEYS", "NetworkConfig"]

NETWORK_KEYS = ("uplink_mbps", "downlink_mbps", "latency_ms")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The clients' simulated links, from which :mod:`fedsqueeze.fl.network` makes each round's wall time.

    Nothing of the training depends on it: it only turns a round's measured compute seconds and counted
    bytes into the ``sim_round_s`` / ``sim_time_s`` columns of ``metrics.jsonl`` (and
    ``sim_time_to_target_s`` of ``summary.json``).

    Parameters
    ----------
    uplink_mbps
        Every client's upload bandwidth, in Mbit/s (10**6 bits per second).
    downlink_mbps
        Every client's download bandwidth, in Mbit/s.
    latency_ms
        Every client's round-trip time, in milliseconds; each transfer (the client's download of the round's
        model and its upload of the update) costs one.
    overrides
        Per-client links: a table of client id (an integer >= 0, written as a TOML key) to a table of any of
        ``uplink_mbps``, ``downlink_mbps`` and ``latency_ms``, which replace the defaults above for that
        client, e.g. ``overrides = { "3" = { uplink_mbps = 1 } }``
        (``--set network.overrides.3.uplink_mbps=1``).
    """

    uplink_mbps: float = setting(20.0, range=POSITIVE)
    downlink_mbps: float = setting(100.0, range=POSITIVE)
    latency_ms: float = setting(30.0, range=Range(0))
    overrides: Mapping[str, Mapping[str, float]] = setting(
        default_factory=dict, allowed='{ "ID" = { KEY = number } }, ID >= 0, KEY: ' + ", ".join(NETWORK_KEYS)
    )

    def __post_init__(self) -> None:
        validate(self, "network")
        object.__setattr__(self, "overrides", _network_overrides(self.overrides))

    def link(self, client: int) -> tuple[float, float, float]:
        """``(uplink_mbps, downlink_mbps, latency_ms)`` of ``client``: its overrides, else the defaults."""
        mine = self.overrides.get(str(client), {})
        up, down, latency = (mine.get(k, getattr(self, k)) for k in NETWORK_KEYS)
        return up, down, latency


def _network_overrides(raw: Any) -> dict[str, dict[str, float]]:
    """``network.overrides`` checked and normalised: ``{"ID": {key: float}}`` in ascending client order."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"network.overrides must be a table of client id = {{ {', '.join(NETWORK_KEYS)} }}, got {raw!r}"
        )
    out: dict[int, dict[str, float]] = {}
    for key, table in raw.items():
        text = str(key).strip()
        if isinstance(key, bool) or not (isinstance(key, int) or text.isdigit()):
            raise ConfigError(f"network.overrides: client id {key!r} must be an integer >= 0")
        client = int(text)
        if client in out:
            raise ConfigError(f"network.overrides: client {client} is given twice")
        where = f"network.overrides.{client}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table of {', '.join(NETWORK_KEYS)}, got {table!r}")
        values: dict[str, float] = {}
        for name, value in table.items():
            if name not in NETWORK_KEYS:
                raise ConfigError(f"unknown key {where}.{name}; allowed: {', '.join(NETWORK_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{name} must be a number, got {value!r}")
            rule = Range(0) if name == "latency_ms" else POSITIVE
            if not rule.ok(value):
                raise ConfigError(rule.message(f"{where}.{name}", value))
            values[name] = float(value)
        out[client] = values
    return {str(c): out[c] for c in sorted(out)}


register_section("network", NetworkConfig)

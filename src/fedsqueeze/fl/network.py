"""Simulated wall time of a round from the clients' links (``[network]``, :class:`~.config.NetworkConfig`).

A client's time in a round is::

    client_s + 8 · downlink_bytes / downlink_bps + 8 · uplink_bytes / uplink_bps + 2 · rtt

- ``client_s``: its measured local compute seconds (training and encoding; the row's ``client_s``);
- ``downlink_bytes``: the downlink frames the ledger charged to it this round; ``uplink_bytes``: its LoRA and
  head frames;
- ``*_bps``: its link's bandwidths, ``*_mbps · 10**6`` bits per second;
- ``rtt``: its round-trip time ``latency_ms / 1000``, paid once per transfer: once for the download, once
  for the upload.

Every client has a link of its own (transfers of different clients do not share bandwidth), and the
server's own time (aggregation, evaluation) is not counted. The round lasts as long as its slowest replying
client (``sim_round_s``): the server waits for every reply it uses. A client charged a download that never
replied is not waited for; a round in which no client replied lasts as long as its slowest download.
``sim_time_s`` is the running sum over the rounds.

The bytes are exact and the links are the config's, but ``client_s`` is measured wall-clock time, so the
simulated times vary a little from run to run like every other timing column. The model changes nothing
that is trained or sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import NetworkConfig

__all__ = ["client_time", "round_time", "sim_columns", "transfer_s"]


def transfer_s(nbytes: float, mbps: float, latency_ms: float) -> float:
    """Seconds to move ``nbytes`` over a ``mbps`` Mbit/s link with a ``latency_ms`` round trip."""
    return 8.0 * nbytes / (mbps * 1e6) + latency_ms / 1e3


def client_time(
    network: NetworkConfig, client: int, compute_s: float | None, downlink_bytes: int, uplink_bytes: int
) -> float:
    """One replying client's round: download, compute, upload (its own link, see the module docstring).

    ``compute_s`` ``None`` (a driver that did not time the client) counts as 0.
    """
    up_mbps, down_mbps, latency_ms = network.link(client)
    return (
        transfer_s(downlink_bytes, down_mbps, latency_ms)
        + float(compute_s or 0.0)
        + transfer_s(uplink_bytes, up_mbps, latency_ms)
    )


def round_time(
    network: NetworkConfig,
    compute_s: Mapping[int, float | None],
    downlink: Mapping[int, int],
    uplink: Mapping[int, int],
) -> float:
    """Simulated seconds of one round: the slowest replying client's :func:`client_time`.

    ``compute_s`` holds the replying clients (client → compute seconds); ``downlink`` / ``uplink`` the
    bytes charged to each client. Without any reply: the slowest download of ``downlink``'s clients (0 when
    there is none).
    """
    if compute_s:
        return max(
            client_time(network, c, s, downlink.get(c, 0), uplink.get(c, 0)) for c, s in compute_s.items()
        )
    return max(
        (transfer_s(b, network.link(c)[1], network.link(c)[2]) for c, b in downlink.items()), default=0.0
    )


def sim_columns(
    network: NetworkConfig,
    prev: Mapping[str, Any] | None,
    compute_s: Mapping[int, float | None],
    downlink: Mapping[int, int],
    uplink: Mapping[int, int],
) -> dict[str, float | None]:
    """The ``sim_round_s`` and ``sim_time_s`` columns of a ``metrics.jsonl`` row.

    ``prev`` is the previous row (``None`` in round 1). A previous row without ``sim_time_s`` (a checkpoint
    written before the column existed) leaves the running total unknown: ``None``.
    """
    sim = round_time(network, compute_s, downlink, uplink)
    before = 0.0 if prev is None else prev.get("sim_time_s")
    return {"sim_round_s": sim, "sim_time_s": None if before is None else before + sim}

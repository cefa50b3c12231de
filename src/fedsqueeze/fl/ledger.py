"""The traffic ledger: every byte counted is the length of a payload that was sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RoundTraffic", "TrafficLedger"]


@dataclass
class RoundTraffic:
    """Bytes of one round, per client (keys are client ids)."""

    server_round: int
    uplink_lora: dict[int, int]
    uplink_head: dict[int, int]
    downlink: dict[int, int]

    @property
    def uplink_bytes(self) -> int:
        return sum(self.uplink_lora.values()) + sum(self.uplink_head.values())

    @property
    def downlink_bytes(self) -> int:
        return sum(self.downlink.values())

    def row_columns(self, prev: Mapping[str, Any] | None, lora_numel: int, replies: int) -> dict[str, Any]:
        """The traffic columns of this round's ``metrics.jsonl`` row.

        ``prev`` is the previous row (``None`` in round 1), for the cumulative totals; ``replies`` the
        number of LoRA payloads received, for ``lora_bits_per_param`` (``None`` when there were none).
        """
        lora = sum(self.uplink_lora.values())
        prev_up = prev["cum_uplink_bytes"] if prev else 0
        prev_down = prev["cum_downlink_bytes"] if prev else 0
        return {
            "uplink_bytes": self.uplink_bytes,
            "cum_uplink_bytes": prev_up + self.uplink_bytes,
            "uplink_lora_bytes": lora,
            "uplink_head_bytes": sum(self.uplink_head.values()),
            "downlink_bytes": self.downlink_bytes,
            "cum_downlink_bytes": prev_down + self.downlink_bytes,
            "total_bytes": self.uplink_bytes + self.downlink_bytes,
            "cum_total_bytes": prev_up + prev_down + self.uplink_bytes + self.downlink_bytes,
            "lora_bits_per_param": 8 * lora / (max(lora_numel, 1) * replies) if replies else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.server_round,
            "uplink_lora": {str(k): v for k, v in self.uplink_lora.items()},
            "uplink_head": {str(k): v for k, v in self.uplink_head.items()},
            "downlink": {str(k): v for k, v in self.downlink.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundTraffic:
        def ints(m: Mapping[str, int]) -> dict[int, int]:
            return {int(k): int(v) for k, v in m.items()}

        return cls(int(d["round"]), ints(d["uplink_lora"]), ints(d["uplink_head"]), ints(d["downlink"]))


@dataclass
class TrafficLedger:
    """Per-round records and running totals of uplink and downlink bytes."""

    rounds: list[RoundTraffic] = field(default_factory=list)

    def record(
        self,
        server_round: int,
        uplink_lora: Mapping[int, int],
        uplink_head: Mapping[int, int],
        downlink: Mapping[int, int],
    ) -> RoundTraffic:
        """Add one round (byte counts are payload lengths, keyed by client)."""
        rec = RoundTraffic(server_round, dict(uplink_lora), dict(uplink_head), dict(downlink))
        self.rounds.append(rec)
        return rec

    @property
    def total_uplink(self) -> int:
        return sum(r.uplink_bytes for r in self.rounds)

    @property
    def total_downlink(self) -> int:
        return sum(r.downlink_bytes for r in self.rounds)

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": [r.to_dict() for r in self.rounds]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrafficLedger:
        return cls([RoundTraffic.from_dict(r) for r in d["rounds"]])

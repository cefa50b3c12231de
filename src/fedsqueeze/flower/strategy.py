"""``Compressed``: a Flower strategy wrapper that names the codec for ``compress_mod`` and decodes replies.

``Compressed(FedAvg(...), codec="flm_topk")`` works like Flower's DP wrapper strategies: it delegates every
call to the wrapped strategy and only touches the train messages on their way out (the codec goes into the
train config) and the train replies on their way in (each frame is decoded against the arrays sent to that
node and turned back into the dense ArrayRecord the wrapped strategy expects). See ``docs/flower-dropin.md``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..codecs import decode_flat
from ..errors import ConfigError, FedsqueezeError, PayloadError, SpecMismatchError, UsageError
from .frames import (
    META_KEY,
    FrameReply,
    codec_config,
    content_bytes,
    float_keys,
    make_codec,
    read_frame_reply,
    spec_of,
)

__all__ = ["Compressed", "RoundBytes"]


@dataclasses.dataclass
class RoundBytes:
    """The bytes of one training round, per Flower node id (:attr:`Compressed.history` holds one per round).

    Attributes
    ----------
    server_round
        The round.
    downlink
        Node -> bytes of the arrays sent to it (dense: the downlink is not compressed).
    uplink
        Node -> bytes of its reply's arrays as received (compressed: the frame, the arrays passed through
        and the frame's ConfigRecord; plain: the dense arrays). Replies that were dropped are counted.
    frame
        Node -> bytes of the codec frame alone (compressed replies).
    dense
        Node -> bytes of its reply as a dense ArrayRecord (what the wrapped strategy receives; for a dropped
        reply, the arrays sent to it).
    plain
        Nodes that replied without the mod (passed through unchanged).
    dropped
        Node -> why its compressed reply was dropped.
    """

    server_round: int
    downlink: dict[int, int] = dataclasses.field(default_factory=dict)
    uplink: dict[int, int] = dataclasses.field(default_factory=dict)
    frame: dict[int, int] = dataclasses.field(default_factory=dict)
    dense: dict[int, int] = dataclasses.field(default_factory=dict)
    plain: list[int] = dataclasses.field(default_factory=list)
    dropped: dict[int, str] = dataclasses.field(default_factory=dict)

    def metrics(self) -> dict[str, int | list[int]]:
        """The ``fedsqueeze_*`` entries added to the aggregated train MetricRecord."""
        return {
            "fedsqueeze_uplink_bytes": sum(self.uplink.values()),
            "fedsqueeze_frame_bytes": sum(self.frame.values()),
            "fedsqueeze_dense_uplink_bytes": sum(self.dense.values()),
            "fedsqueeze_downlink_bytes": sum(self.downlink.values()),
            "fedsqueeze_uplink_bytes_per_reply": list(self.uplink.values()),
            "fedsqueeze_downlink_bytes_per_node": list(self.downlink.values()),
            "fedsqueeze_compressed_replies": len(self.frame),
            "fedsqueeze_plain_replies": len(self.plain),
            "fedsqueeze_dropped_replies": len(self.dropped),
        }


class Compressed(Strategy):
    """Wrap any Flower strategy so that ``train`` replies travel as fedsqueeze frames.

    The ClientApp needs :func:`~fedsqueeze.flower.compress_mod` (first in its ``mods``). Replies from
    clients without it pass through unchanged; a compressed reply that cannot be decoded (corrupted,
    truncated, of another spec) is dropped with a log line and the round goes on with the others.

    Parameters
    ----------
    strategy
        The strategy to wrap (``FedAvg``, ``FedAvgM``, ``FedAdam``, a DP wrapper, ...). Its
        ``aggregate_train`` receives dense ArrayRecords ``θ_sent − û`` in the sent dtypes and key order.
    codec
        Codec name (``fedsqueeze codecs`` lists them); sent to the clients in the train config.
    error_feedback
        Whether each client keeps the part of its update the codec dropped and adds it to its next update
        (the default). Turn it off where every round's update must stay within a bound, e.g. under
        client-side DP clipping (see ``docs/flower-dropin.md``).
    **options
        The codec's options (JSON scalars), e.g. ``density=0.01``.

    Attributes
    ----------
    strategy
        The wrapped strategy.
    history
        One :class:`RoundBytes` per aggregated training round.

    Raises
    ------
    ConfigError
        Unknown codec or option, or an invalid value (checked here, so a bad codec fails at start-up).
    UsageError
        ``strategy`` is not a Flower ``Strategy``.
    """

    def __init__(
        self, strategy: Strategy, codec: str = "flm_topk", *, error_feedback: bool = True, **options: Any
    ) -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise UsageError(
                f"Compressed wraps a flwr.serverapp.strategy.Strategy, got {type(strategy).__name__}"
            )
        if not isinstance(error_feedback, bool):
            raise ConfigError(f"Compressed: error_feedback must be True or False, got {error_feedback!r}")
        make_codec(codec, options)
        self.strategy = strategy
        self.codec_name = codec
        self.error_feedback = bool(error_feedback)
        self.codec_options: dict[str, Any] = json.loads(json.dumps(options, sort_keys=True))
        self.history: list[RoundBytes] = []
        self._sent: dict[int, dict[int, ArrayRecord | None]] = {}
        self._down: dict[int, dict[int, int]] = {}

    def __repr__(self) -> str:
        return (
            f"Compressed({self.strategy!r}, codec={self.codec_name!r}, error_feedback={self.error_feedback}, "
            f"**{self.codec_options!r})"
        )

    def summary(self) -> None:
        """Log the codec, then the wrapped strategy's summary."""
        log(INFO, "\t├──> fedsqueeze compression: codec %s %s, error feedback %s",
            self.codec_name, self.codec_options, "on" if self.error_feedback else "off")  # fmt: skip
        self.strategy.summary()

    # -- training ----------------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages, with the codec added to their train config.

        The messages' content is replaced by a copy whose ConfigRecord holds the codec keys (messages that
        shared one RecordDict share the copy); the arrays are the same objects and are kept for decoding.
        """
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        extra = codec_config(self.codec_name, self.codec_options, server_round, self.error_feedback)
        copies: dict[int, RecordDict] = {}
        sent: dict[int, ArrayRecord | None] = {}
        down: dict[int, int] = {}
        for msg in messages:
            if msg.has_error():  # pragma: no cover - a strategy does not send errors
                continue
            content = msg.content
            if id(content) not in copies:
                copies[id(content)] = _with_codec(content, extra)
            msg.content = copies[id(content)]
            records = content.array_records
            node = msg.metadata.dst_node_id
            sent[node] = next(iter(records.values())) if len(records) == 1 else None
            down[node] = sum(r.count_bytes() for r in records.values())
        self._sent = {server_round: sent}  # only this round's arrays are kept
        self._down = {server_round: down}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode the compressed replies, then delegate to the wrapped strategy's ``aggregate_train``.

        The aggregated MetricRecord gets the ``fedsqueeze_*`` byte counts (:meth:`RoundBytes.metrics`).
        """
        sent = self._sent.pop(server_round, {})
        rb = RoundBytes(server_round, downlink=self._down.pop(server_round, {}))
        cache: dict[tuple[int, str], np.ndarray] = {}
        kept: list[Message] = []
        for reply in replies:
            if reply.has_error():
                kept.append(reply)  # the wrapped strategy logs and skips it, as without compression
                continue
            node, content = reply.metadata.src_node_id, reply.content
            rb.uplink[node] = content_bytes(content)
            try:
                framed = read_frame_reply(content)
                if framed is None:
                    rb.plain.append(node)
                    rb.dense[node] = rb.uplink[node]
                    kept.append(reply)
                    continue
                record = _rebuild(framed, sent.get(node), cache)
            except FedsqueezeError as exc:
                rb.dropped[node] = str(exc)
                record_sent = sent.get(node)
                rb.dense[node] = record_sent.count_bytes() if record_sent is not None else 0
                log(WARNING, "aggregate_train: fedsqueeze dropped the reply of node %s: %s", node, exc)
                continue
            del content[META_KEY]
            content[framed.record_key] = record
            rb.frame[node] = len(framed.frame)
            rb.dense[node] = record.count_bytes()
            kept.append(reply)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        metrics = MetricRecord() if metrics is None else metrics
        for key, value in rb.metrics().items():
            metrics[key] = value
        self.history.append(rb)
        log(
            INFO,
            "aggregate_train: fedsqueeze %d compressed, %d plain, %d dropped; uplink %d B (dense %d B)",
            len(rb.frame), len(rb.plain), len(rb.dropped), sum(rb.uplink.values()), sum(rb.dense.values()),
        )  # fmt: skip
        return arrays, metrics

    # -- evaluation: untouched ------------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluate messages, unchanged."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The wrapped strategy's ``aggregate_evaluate``."""
        return self.strategy.aggregate_evaluate(server_round, replies)


def _with_codec(content: RecordDict, extra: dict[str, str | int]) -> RecordDict:
    """A copy of ``content`` whose (first) ConfigRecord also holds ``extra``; the other records are shared."""
    out = RecordDict()
    added = False
    for key, record in content.items():
        if isinstance(record, ConfigRecord) and not added:
            record = ConfigRecord({**record, **extra})
            added = True
        out[key] = record
    if not added:
        out["config" if "config" not in out else "fedsqueeze.config"] = ConfigRecord(dict(extra))
    return out


def _rebuild(
    framed: FrameReply, sent: ArrayRecord | None, cache: dict[tuple[int, str], np.ndarray]
) -> ArrayRecord:
    """``θ_sent − û`` as a dense ArrayRecord in the sent dtypes and key order, plus the passed-through arrays.

    Raises
    ------
    PayloadError
        The frame does not decode against the arrays sent to that node (or none were sent).
    """
    if sent is None:
        raise PayloadError("no single ArrayRecord was sent to this node in this round")
    keys = [k for k in float_keys(sent) if k not in framed.others]  # the client passed the others through
    spec = spec_of(sent, keys)
    if framed.spec_hex != spec.digest.hex():
        raise SpecMismatchError("the frame was encoded for other arrays (names or shapes) than those sent")
    decoded = spec.unflatten(decode_flat(framed.frame, spec))
    out: dict[str, Array] = {}
    for key, arr in sent.items():
        if key in decoded:
            if (id(sent), key) not in cache:
                cache[(id(sent), key)] = np.asarray(arr.numpy(), dtype=np.float64)
            value = cache[(id(sent), key)] - decoded[key].numpy().astype(np.float64)
            out[key] = Array(value.astype(np.dtype(arr.dtype)))
        elif key in framed.others:
            out[key] = framed.others[key]
    for key, arr in framed.others.items():
        out.setdefault(key, arr)
    return ArrayRecord(out)

"""``Compressed``: a Flower strategy wrapper that names the codec for ``compress_mod`` and decodes replies.

``Compressed(FedAvg(...), codec="flm_topk")`` works like Flower's DP wrapper strategies: it delegates every
call to the wrapped strategy and only touches the train messages on their way out (the codec goes into the
train config) and the train replies on their way in (each frame is decoded against the arrays sent to that
node and turned back into the dense ArrayRecord the wrapped strategy expects). With ``downlink=<codec>`` the
train messages' float arrays go out compressed too (:mod:`.downlink`; the ClientApp then needs
:func:`~fedsqueeze.flower.downlink_mod` before ``compress_mod``). See ``docs/flower-dropin.md``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..codecs import decode_flat
from ..errors import ConfigError, FedsqueezeError, PayloadError, SpecMismatchError, UsageError
from ..seeding import derive_seed
from .downlink import DOWN_META_KEY, DownlinkSender
from .frames import (
    FRAME_KEY,
    META_KEY,
    FrameReply,
    codec_config,
    content_bytes,
    float_keys,
    is_float,
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
        Node -> bytes of the train message's arrays sent to it (Flower's ``count_bytes``), plus the downlink
        ConfigRecord with a compressed downlink.
    dense_downlink
        Node -> bytes of the arrays the wrapped strategy built for it (what a stock server sends).
    delivery
        Node -> its downlink delivery: the number of delta frames, or ``-1`` for the dense state (with a
        compressed downlink only).
    resync
        Nodes that will get the dense state the next time they are sampled (an error reply or no reply).
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
    dense_downlink: dict[int, int] = dataclasses.field(default_factory=dict)
    delivery: dict[int, int] = dataclasses.field(default_factory=dict)
    resync: list[int] = dataclasses.field(default_factory=list)
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
            "fedsqueeze_dense_downlink_bytes": sum(self.dense_downlink.values()),
            "fedsqueeze_uplink_bytes_per_reply": list(self.uplink.values()),
            "fedsqueeze_downlink_bytes_per_node": list(self.downlink.values()),
            "fedsqueeze_compressed_replies": len(self.frame),
            "fedsqueeze_plain_replies": len(self.plain),
            "fedsqueeze_dropped_replies": len(self.dropped),
            "fedsqueeze_downlink_dense_deliveries": sum(1 for v in self.delivery.values() if v < 0),
            "fedsqueeze_downlink_resyncs": len(self.resync),
        }


class Compressed(Strategy):
    """Wrap any Flower strategy so that ``train`` replies travel as fedsqueeze frames.

    The ClientApp needs :func:`~fedsqueeze.flower.compress_mod` (first in its ``mods``). Replies from
    clients without it pass through unchanged; a compressed reply that cannot be decoded (corrupted,
    truncated, of another spec) is dropped with a log line and the round goes on with the others.

    With ``downlink`` the train messages go out compressed too, per node: the delta frames of the broadcast
    state ``θ̃`` that node missed, or the dense ``θ̃`` (the protocol of :class:`fedsqueeze.fl.server.Downlink`,
    ``docs/downlink.md``). The clients train from ``θ̃`` and their frames hold ``û_i ≈ θ̃ − θ_local``; the
    wrapped strategy receives ``θ_global − û_i`` (as the engine applies ``θ ← θ − ū``), so it sees each
    client's own update and what the downlink frame dropped stays in ``θ_global`` for later rounds. The
    ClientApp then needs :func:`~fedsqueeze.flower.downlink_mod` before ``compress_mod``.

    Parameters
    ----------
    strategy
        The strategy to wrap (``FedAvg``, ``FedAvgM``, ``FedAdam``, a DP wrapper, ...). Its
        ``aggregate_train`` receives dense ArrayRecords ``θ_sent − û`` in the sent dtypes and key order.
    codec
        Codec name (``fedsqueeze codecs`` lists them); sent to the clients in the train config. ``None``:
        only with a strategy that names its codecs itself and decodes the frames (``decodes_frames = True``,
        e.g. fedsqueeze's own :class:`~fedsqueeze.flower.job_strategy.FederationStrategy`, which asks for
        version-2 replies in parts): the replies then reach it intact, and this wrapper counts the bytes.
    error_feedback
        Whether each client keeps the part of its update the codec dropped and adds it to its next update
        (the default). Turn it off where every round's update must stay within a bound, e.g. under
        client-side DP clipping (see ``docs/flower-dropin.md``).
    downlink
        ``None`` (the default): the train messages go out as the wrapped strategy built them (dense). A codec
        name: the downlink codec, e.g. ``"wf_ecq"``; ``"identity"`` sends the dense fp32 state as one frame.
    downlink_options
        The downlink codec's options (JSON scalars), e.g. ``{"rate": 0.25}``.
    downlink_window
        Rounds of downlink frames the server keeps for catch-up; a node whose copy is older gets the dense
        state.
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
        Unknown codec or option, or an invalid value (checked here, so a bad codec fails at start-up), for
        the uplink or the downlink; a downlink codec that predicts from a reference.
    UsageError
        ``strategy`` is not a Flower ``Strategy``.
    """

    def __init__(
        self,
        strategy: Strategy,
        codec: str | None = "flm_topk",
        *,
        error_feedback: bool = True,
        downlink: str | None = None,
        downlink_options: Mapping[str, Any] | None = None,
        downlink_window: int = 32,
        **options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise UsageError(
                f"Compressed wraps a flwr.serverapp.strategy.Strategy, got {type(strategy).__name__}"
            )
        if not isinstance(error_feedback, bool):
            raise ConfigError(f"Compressed: error_feedback must be True or False, got {error_feedback!r}")
        self.passes_frames = getattr(strategy, "decodes_frames", False) is True
        if codec is None and not self.passes_frames:
            raise ConfigError("Compressed: codec=None only wraps a strategy that names its codecs itself")
        if codec is not None:
            make_codec(codec, options)
        self.strategy = strategy
        self.codec_name = codec
        self.error_feedback = bool(error_feedback)
        self.codec_options: dict[str, Any] = json.loads(json.dumps(options, sort_keys=True))
        self.downlink_name, self.downlink_options, self.downlink_window = _check_downlink(
            downlink, downlink_options, downlink_window
        )
        self.sender: DownlinkSender | None = None
        if self.downlink_name is not None:
            down_codec = make_codec(self.downlink_name, self.downlink_options)
            self.sender = DownlinkSender(down_codec, self.downlink_window)
        self.history: list[RoundBytes] = []
        self._sent: dict[int, dict[int, ArrayRecord | None]] = {}
        self._down: dict[int, dict[int, int]] = {}
        self._dense_down: dict[int, dict[int, int]] = {}
        self._delivery: dict[int, dict[int, int]] = {}
        self._as_sent: dict[int, tuple[ArrayRecord, ArrayRecord]] = {}

    def __repr__(self) -> str:
        return (
            f"Compressed({self.strategy!r}, codec={self.codec_name!r}, error_feedback={self.error_feedback}, "
            f"downlink={self.downlink_name!r}, downlink_options={self.downlink_options!r}, "
            f"**{self.codec_options!r})"
        )

    def summary(self) -> None:
        """Log the codec, then the wrapped strategy's summary."""
        log(INFO, "\t├──> fedsqueeze compression: codec %s %s, error feedback %s",
            self.codec_name, self.codec_options, "on" if self.error_feedback else "off")  # fmt: skip
        if self.downlink_name is None:
            log(INFO, "\t├──> fedsqueeze downlink: dense (as the wrapped strategy sends it)")
        else:
            log(INFO, "\t├──> fedsqueeze downlink: codec %s %s, window %d rounds",
                self.downlink_name, self.downlink_options, self.downlink_window)  # fmt: skip
        self.strategy.summary()

    # -- training ----------------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages, with the codec added to their train config.

        The messages' content is replaced by a copy whose ConfigRecord holds the codec keys (messages that
        shared one RecordDict share the copy); the arrays are the same objects and are kept for decoding.
        With a compressed downlink each message gets its own RecordDict: its delivery in place of the float
        arrays, plus the ``"fedsqueeze.downlink"`` ConfigRecord (:mod:`.downlink`).
        """
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        extra = (
            {}
            if self.codec_name is None
            else codec_config(self.codec_name, self.codec_options, server_round, self.error_feedback)
        )
        copies: dict[int, RecordDict] = {}
        sent: dict[int, ArrayRecord | None] = {}
        down: dict[int, int] = {}
        dense_down: dict[int, int] = {}
        live = [m for m in messages if not m.has_error()]  # a strategy does not send errors
        for msg in live:
            content = msg.content
            if extra:
                if id(content) not in copies:
                    copies[id(content)] = _with_codec(content, extra)
                msg.content = copies[id(content)]
            records = content.array_records
            node = msg.metadata.dst_node_id
            sent[node] = next(iter(records.values())) if len(records) == 1 else None
            down[node] = dense_down[node] = sum(r.count_bytes() for r in records.values())
        delivery = self._compress_downlink(server_round, live, sent, down) if self.sender is not None else {}
        self._sent = {server_round: sent}  # only this round's arrays are kept
        self._down = {server_round: down}
        self._dense_down = {server_round: dense_down}
        self._delivery = {server_round: delivery}
        return messages

    def _compress_downlink(
        self,
        server_round: int,
        messages: list[Message],
        sent: dict[int, ArrayRecord | None],
        down: dict[int, int],
    ) -> dict[int, int]:
        """Replace each message's float arrays by its downlink delivery (in place; ``sent`` and ``down`` are
        updated). Returns node -> frames delivered (``-1``: dense)."""
        assert self.sender is not None
        record = sent.get(messages[0].metadata.dst_node_id) if messages else None
        ours = [] if record is None or not float_keys(record) else [
            m for m in messages if sent.get(m.metadata.dst_node_id) is record
        ]  # fmt: skip
        mine = {id(m) for m in ours}
        for msg in messages:
            if id(msg) not in mine:  # other arrays than the broadcast (or none): sent as built, densely
                node = msg.metadata.dst_node_id
                log(WARNING, "configure_train: fedsqueeze sends node %s its arrays as built (not one "
                    "ArrayRecord of floats shared by all messages)", node)  # fmt: skip
                self.sender.lost(node)  # it will not hold this round's broadcast state
        if not ours:
            return {}
        assert record is not None
        nodes = [m.metadata.dst_node_id for m in ours]
        seed = derive_seed(0, server_round, -1, "downlink")
        as_sent, per_node = self.sender.deliver(server_round, record, nodes, seed=seed)
        (key,) = [k for k, r in ours[0].content.items() if r is record]
        # The nodes train from θ̃ (as_sent); their frames decode against the same spec as θ_global's, and the
        # replies are rebuilt on θ_global (sent[node] stays `record`): θ_i = θ_global − û_i, so the wrapped
        # strategy sees each client's own update and what the downlink frame dropped stays in θ_global.
        self._as_sent = {server_round: (as_sent, record)}
        delivery: dict[int, int] = {}
        for msg in ours:
            node = msg.metadata.dst_node_id
            arrays, meta = per_node[node]
            meta["record"] = key
            content = RecordDict()
            for name, value in msg.content.items():
                content[name] = arrays if name == key else value
            content[DOWN_META_KEY] = meta
            msg.content = content
            down[node] = arrays.count_bytes() + meta.count_bytes()
            frames = meta["frames"]
            assert isinstance(frames, int), "DownlinkSender writes the frame count as an int"
            delivery[node] = frames
        return delivery

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode the compressed replies, then delegate to the wrapped strategy's ``aggregate_train``.

        The aggregated MetricRecord gets the ``fedsqueeze_*`` byte counts (:meth:`RoundBytes.metrics`).
        """
        sent = self._sent.pop(server_round, {})
        rb = RoundBytes(
            server_round,
            downlink=self._down.pop(server_round, {}),
            dense_downlink=self._dense_down.pop(server_round, {}),
            delivery=self._delivery.pop(server_round, {}),
        )
        replies = list(replies)
        rebase = self._as_sent.pop(server_round, None)
        cache: dict[tuple[int, str], np.ndarray] = {}
        kept: list[Message] = []
        for reply in replies:
            if reply.has_error():
                kept.append(reply)  # the wrapped strategy logs and skips it, as without compression
                continue
            node, content = reply.metadata.src_node_id, reply.content
            rb.uplink[node] = content_bytes(content)
            if self.passes_frames:  # the wrapped strategy decodes (and screens) the frames itself
                rb.frame[node] = _frame_bytes(content)
                rb.dense[node] = rb.uplink[node]
                kept.append(reply)
                continue
            try:
                framed = read_frame_reply(content)
                if framed is None:
                    rb.plain.append(node)
                    rb.dense[node] = rb.uplink[node]
                    if rebase is not None and node in rb.delivery and len(content.array_records) == 1:
                        key, local = next(iter(content.array_records.items()))
                        content[key] = _rebase(local, *rebase)  # trained from θ̃: onto θ_global
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
        if self.sender is not None:  # a node that failed or did not answer may not hold θ̃: resync it densely
            answered = {r.metadata.src_node_id for r in replies if not r.has_error()}
            rb.resync = [node for node in rb.delivery if node not in answered]
            for node in rb.resync:
                self.sender.lost(node)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        metrics = MetricRecord() if metrics is None else metrics
        for key, value in rb.metrics().items():
            metrics[key] = value
        self.history.append(rb)
        if self.passes_frames:  # the wrapped strategy decodes and reports its rounds itself (the job)
            return arrays, metrics
        log(
            INFO,
            "aggregate_train: fedsqueeze %d compressed, %d plain, %d dropped; uplink %d B (dense %d B), "
            "downlink %d B (dense %d B)",
            len(rb.frame), len(rb.plain), len(rb.dropped), sum(rb.uplink.values()), sum(rb.dense.values()),
            sum(rb.downlink.values()), sum(rb.dense_downlink.values()),
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


def _check_downlink(
    name: object, options: Mapping[str, Any] | None, window: object
) -> tuple[str | None, dict[str, Any], int]:
    """The checked ``(downlink codec name or None, its options, window)`` of :class:`Compressed`."""
    if name is None:
        if options:
            raise ConfigError(f"Compressed got downlink_options {sorted(options)} but no downlink=")
        return None, {}, 32 if not isinstance(window, int) else window
    if not isinstance(options, Mapping | None):
        raise ConfigError(f"downlink_options must be a mapping of option -> value, got {options!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"downlink_window must be an int >= 1 (rounds), got {window!r}")
    opts = dict(options or {})
    codec = make_codec(name, opts)
    if type(codec).uses_reference:
        raise ConfigError(f"downlink codec {name!r} predicts from a reference; use a plain codec")
    return str(name), json.loads(json.dumps(opts, sort_keys=True)), int(window)


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


def _frame_bytes(content: RecordDict) -> int:
    """Bytes of the frames a reply carries (``fedsqueeze.frame`` and ``fedsqueeze.frame.<part>`` arrays)."""
    return sum(
        len(a.data)
        for record in content.array_records.values()
        for k, a in record.items()
        if k == FRAME_KEY or k.startswith(FRAME_KEY + ".")
    )


def _rebase(local: ArrayRecord, as_sent: ArrayRecord, base: ArrayRecord) -> ArrayRecord:
    """A plain reply of a node that trained from ``as_sent`` (θ̃), moved onto ``base`` (θ_global):
    ``θ_local + (θ_global − θ̃)`` for the float arrays of the state; the other arrays unchanged."""
    out: dict[str, Array] = {}
    for key, arr in local.items():
        sent, glob = as_sent.get(key), base.get(key)
        if (
            sent is None
            or glob is None
            or sent is glob
            or not is_float(arr)
            or not is_float(sent)
            or tuple(arr.shape) != tuple(sent.shape)
        ):
            out[key] = arr
            continue
        shift = np.asarray(glob.numpy(), dtype=np.float64) - np.asarray(sent.numpy(), dtype=np.float64)
        value = np.asarray(np.asarray(arr.numpy(), dtype=np.float64) + shift)  # 0-d arithmetic gives a scalar
        out[key] = Array(value.astype(np.dtype(arr.dtype)))
    return ArrayRecord(out)


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
            out[key] = Array(np.asarray(value).astype(np.dtype(arr.dtype)))  # 0-d arithmetic gives a scalar
        elif key in framed.others:
            out[key] = framed.others[key]
    for key, arr in framed.others.items():
        out.setdefault(key, arr)
    return ArrayRecord(out)

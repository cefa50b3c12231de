"""The drop-in's compressed downlink: how a delivery looks inside a train ``Message``, and both of its ends.

``Compressed(..., downlink="wf_ecq")`` (server) builds each node's delivery with :class:`DownlinkSender`, a
thin layer over the engine's own protocol, :class:`fedsqueeze.fl.server.Downlink` (``docs/downlink.md``);
:func:`~fedsqueeze.flower.mods.downlink_mod` (client) turns it back into the dense arrays with
:func:`rebuild`. The state ``θ̃`` is the message's *float* arrays flattened in record order (fp32 on the
wire); the other arrays (integer buffers, ...) travel unchanged.

A train message with a compressed downlink keeps its ArrayRecord key (e.g. ``"arrays"``), but that record
holds

* the arrays that are not in the state, unchanged and in record order;
* either ``"fedsqueeze.downlink.dense"`` (one frame: the whole ``θ̃``) or ``"fedsqueeze.downlink.0"``,
  ``"fedsqueeze.downlink.1"``, ... (the delta frames the node missed, in round order): ``uint8`` Arrays with
  ``stype = "fedsqueeze.downlink/1"``;

and the message gets one extra ConfigRecord ``"fedsqueeze.downlink"``: ``format``, ``version``, ``record``
(the ArrayRecord key), ``protocol``, ``round``, ``since`` (the round of the copy the frames apply to; ``-1``
for a dense delivery), ``frames`` (their number; ``-1``: dense), ``sha256``
(:func:`~fedsqueeze.fl.server.state_sha256` of ``θ̃``), ``layout-digest`` and, in a dense delivery only,
``layout`` (JSON: the record's key order and the state's keys, dtypes and shapes). A node keeps the layout
with its copy, so a frame delivery does not repeat it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from logging import INFO
from typing import Any, TypeGuard

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore import log

from ..codecs import Codec, decode_flat
from ..errors import PayloadError
from ..fl.server import Downlink, state_sha256
from ..spec import UpdateSpec
from .frames import float_keys, is_float
from .records import array_bytes

__all__ = [
    "DENSE_KEY",
    "DOWN_FORMAT",
    "DOWN_META_KEY",
    "DOWN_STYPE",
    "DOWN_VERSION",
    "DownlinkSender",
    "Layout",
    "frame_key",
    "is_downlink_key",
    "rebuild",
]

DOWN_FORMAT = "fedsqueeze.downlink"
DOWN_VERSION = 1
DOWN_META_KEY = "fedsqueeze.downlink"  # the ConfigRecord of a train message with a compressed downlink
DOWN_STYPE = f"{DOWN_FORMAT}/{DOWN_VERSION}"
DENSE_KEY = "fedsqueeze.downlink.dense"
_FRAME_PREFIX = "fedsqueeze.downlink."


def frame_key(i: int) -> str:
    """Key of the ``i``-th delta frame of a delivery inside the ArrayRecord."""
    return f"{_FRAME_PREFIX}{i}"


def is_downlink_key(key: str) -> bool:
    """True for the keys of downlink frames inside an ArrayRecord."""
    return key.startswith(_FRAME_PREFIX)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which arrays of an ArrayRecord make the downlink state, and how to put the record back together.

    Attributes
    ----------
    order
        Every key of the record, in record order.
    state
        ``(key, dtype, shape)`` of the float arrays in the state, in record order.
    """

    order: tuple[str, ...]
    state: tuple[tuple[str, str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, record: ArrayRecord) -> Layout:
        """The layout of ``record``: its float arrays make the state."""
        keys = float_keys(record)
        state = tuple((k, str(record[k].dtype), tuple(int(x) for x in record[k].shape)) for k in keys)
        return cls(tuple(record.keys()), state)

    def fits(self, record: ArrayRecord) -> bool:
        """True when ``record`` has the same keys in the same order and the state's arrays are still floats
        of the same dtype and shape (other arrays may change, e.g. an int buffer FedAvg made a float)."""
        if tuple(record.keys()) != self.order:
            return False
        return all(
            is_float(record[k]) and str(record[k].dtype) == dt and tuple(record[k].shape) == shape
            for k, dt, shape in self.state
        )

    @property
    def keys(self) -> list[str]:
        return [k for k, _, _ in self.state]

    @property
    def spec(self) -> UpdateSpec:
        return UpdateSpec.from_shapes({k: shape for k, _, shape in self.state})

    def to_json(self) -> str:
        return json.dumps({"order": list(self.order), "state": [[k, d, list(s)] for k, d, s in self.state]})

    @classmethod
    def from_json(cls, text: object) -> Layout:
        """The layout a dense delivery carries.

        Raises
        ------
        PayloadError
            Not a layout.
        """
        try:
            raw: Any = json.loads(text) if isinstance(text, str) else None  # JSON; None raises TypeError
            order = tuple(str(k) for k in raw["order"])
            state = tuple((str(k), str(np.dtype(d)), tuple(int(x) for x in s)) for k, d, s in raw["state"])
        except (TypeError, ValueError, KeyError) as exc:
            raise PayloadError(f"the downlink layout is malformed ({type(exc).__name__})") from None
        if not set(k for k, _, _ in state) <= set(order):
            raise PayloadError("the downlink layout names state arrays outside its key order")
        return cls(order, state)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def record(self, flat: torch.Tensor, others: Mapping[str, Array]) -> ArrayRecord:
        """The dense ArrayRecord: the state ``flat`` (fp32) cast to each array's dtype, ``others`` for the
        rest of the keys, in the layout's order.

        Raises
        ------
        PayloadError
            ``others`` lacks a key of the layout.
        """
        state = self.spec.unflatten(flat)
        dtypes = {k: d for k, d, _ in self.state}
        missing = [k for k in self.order if k not in dtypes and k not in others]
        if missing:
            raise PayloadError(f"the downlink delivery lacks the arrays {missing[:5]}")
        out = {
            k: Array(state[k].numpy().astype(np.dtype(dtypes[k]))) if k in dtypes else others[k]
            for k in self.order
        }
        return ArrayRecord(out)


def _frame_array(frame: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(frame),), stype=DOWN_STYPE, data=bytes(frame))


class DownlinkSender:
    """The server end: one :class:`~fedsqueeze.fl.server.Downlink` over the train arrays, keyed by node id.

    Parameters
    ----------
    codec
        The downlink codec (``identity``: the dense fp32 state to every node, every round).
    window
        Rounds of delta frames kept for catch-up.

    Memory: ``θ̃``, the last ``window`` frames and two ints per node served (:class:`Downlink` with
    ``num_clients=None``).
    """

    def __init__(self, codec: Codec, window: int) -> None:
        self.codec, self.window = codec, int(window)
        self.downlink: Downlink | None = None
        self.layout: Layout | None = None
        self.last_round = 0

    def lost(self, node: int) -> None:
        """``node`` may not hold the last state sent to it: send it the dense state next time."""
        if self.downlink is not None:
            self.downlink.lost(node)

    def deliver(
        self, server_round: int, record: ArrayRecord, nodes: Sequence[int], *, seed: int
    ) -> tuple[ArrayRecord, dict[int, tuple[ArrayRecord, ConfigRecord]]]:
        """Broadcast round ``server_round``'s global ``record`` to ``nodes``.

        Returns
        -------
        tuple
            ``(as_sent, per_node)``: the dense record every node rebuilds (``θ̃`` in the sent dtypes, the
            other arrays as given), and for each node the ArrayRecord and ConfigRecord of its delivery.
        """
        if (
            self.layout is None
            or self.downlink is None
            or not self.layout.fits(record)
            or (server_round <= self.last_round)
        ):
            why = "first round" if self.layout is None else "the arrays or the rounds changed"
            self.layout = Layout.of(record)
            initial = {k: torch.from_numpy(np.asarray(record[k].numpy())) for k in self.layout.keys}
            self.downlink = Downlink(
                self.codec, self.layout.spec, UpdateSpec.from_shapes({}), initial, None, window=self.window
            )
            log(INFO, "configure_train: fedsqueeze downlink %s over %d values (%s): every node starts dense",
                self.downlink.protocol, self.layout.spec.numel, why)  # fmt: skip
        self.last_round = server_round
        layout, downlink = self.layout, self.downlink
        state = {k: torch.from_numpy(np.asarray(record[k].numpy())) for k in layout.keys}
        lora, _, _ = downlink.broadcast(server_round, state, {}, list(nodes), seed=seed)
        flat = layout.spec.flatten(lora)
        others = {k: a for k, a in record.items() if k not in lora}
        as_sent = layout.record(flat, others)
        common: dict[str, Any] = {
            "format": DOWN_FORMAT,
            "version": DOWN_VERSION,
            "protocol": downlink.protocol,
            "round": int(server_round),
            "sha256": state_sha256(flat),
            "layout-digest": layout.digest,
        }
        arrays_of: dict[int, Array] = {}  # one Array per frame, shared by the nodes it goes to

        def arr(frame: bytes) -> Array:
            if id(frame) not in arrays_of:
                arrays_of[id(frame)] = _frame_array(frame)
            return arrays_of[id(frame)]

        per_node: dict[int, tuple[ArrayRecord, ConfigRecord]] = {}
        for node in nodes:
            d = downlink.deliveries[node]
            arrays = dict(others)
            meta = dict(common)
            if d.frames is None:
                assert d.dense is not None
                arrays[DENSE_KEY] = arr(d.dense)
                meta.update({"since": -1, "frames": -1, "layout": layout.to_json()})
            else:
                arrays.update((frame_key(i), arr(f)) for i, f in enumerate(d.frames))
                meta.update({"since": int(d.since), "frames": len(d.frames)})
            per_node[node] = (ArrayRecord(arrays), ConfigRecord(meta))
        return as_sent, per_node


# -- the client end ------------------------------------------------------------------------------------------
def _is_int(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool`` (a record value that counts something)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _frame_of(record: ArrayRecord, key: str) -> bytes:
    return array_bytes(record, key, stype=DOWN_STYPE, what="downlink delivery")


def rebuild(content: RecordDict, held: Mapping[str, Any] | None) -> tuple[str, ArrayRecord, dict[str, Any]]:
    """Turn a train message's delivery back into the dense ArrayRecord the server's state gives.

    Parameters
    ----------
    content
        The message's content (with the ``"fedsqueeze.downlink"`` ConfigRecord).
    held
        The copy this node kept from its last delivery (``None``: none).

    Returns
    -------
    tuple
        ``(record key, dense ArrayRecord in the original keys, dtypes and order, the new copy to keep)``.

    Raises
    ------
    PayloadError
        The delivery cannot be applied: a malformed record, a corrupt frame, frames for a copy this node does
        not hold (lost, never received, another layout), or a rebuilt state whose SHA-256 is not the server's.
    """
    meta = content.config_records[DOWN_META_KEY]
    if meta.get("format") != DOWN_FORMAT or meta.get("version") != DOWN_VERSION:
        raise PayloadError(f"downlink record format {meta.get('format')!r} version {meta.get('version')!r}, "
                           f"this fedsqueeze reads {DOWN_FORMAT!r} version {DOWN_VERSION}")  # fmt: skip
    key, nframes, since, rnd = meta.get("record"), meta.get("frames"), meta.get("since"), meta.get("round")
    sha, digest = meta.get("sha256"), meta.get("layout-digest")
    if not isinstance(key, str) or key not in content.array_records:
        raise PayloadError(f"the downlink record names ArrayRecord {key!r}, which the message lacks")
    if not (_is_int(nframes) and _is_int(since) and _is_int(rnd)):
        raise PayloadError("the downlink record lacks its round, since or frames")
    if not isinstance(sha, str) or not isinstance(digest, str):
        raise PayloadError("the downlink record lacks its sha256 or layout digest")
    record = content.array_records[key]
    if nframes < 0:
        layout = Layout.from_json(meta.get("layout"))
        if layout.digest != digest:
            raise PayloadError("the downlink layout does not match its digest")
        spec = layout.spec
        flat = decode_flat(_frame_of(record, DENSE_KEY), spec) if spec.numel else torch.zeros(0)
    else:
        if held is None or held.get("round") != since or held.get("layout-digest") != digest:
            have = "no copy" if held is None else f"the copy of round {held.get('round')}"
            raise PayloadError(f"the server sent frames for the state of round {since} but this node holds "
                               f"{have}; it needs a dense resync (sent when next sampled)")  # fmt: skip
        layout = Layout.from_json(held.get("layout"))
        spec = layout.spec
        theta = held.get("theta")
        if (
            not isinstance(theta, torch.Tensor)
            or theta.dtype != torch.float32
            or theta.shape != (spec.numel,)
        ):
            raise PayloadError("this node's copy of the downlink state is malformed; it needs a dense resync")
        flat = theta
        for i in range(nframes):
            flat = flat + decode_flat(_frame_of(record, frame_key(i)), spec)  # the server's own additions
    if state_sha256(flat) != sha:
        raise PayloadError("the rebuilt state differs from the server's (SHA-256); refusing to train")
    others = {k: a for k, a in record.items() if not is_downlink_key(k)}
    dense = layout.record(flat, others)
    copy = {"round": rnd, "theta": flat.clone(), "layout": layout.to_json(), "layout-digest": digest}
    return key, dense, copy

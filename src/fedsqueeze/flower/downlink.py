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

Version 2 adds an optional second part, the *head* (fedsqueeze's own job sends it: the trainable tensors
outside LoRA, :class:`fedsqueeze.fl.server.Downlink`): the layout then also lists the head's arrays (and the
name prefixes its two parts carry in the record, ``lora.`` and ``head.``), the ConfigRecord adds
``head-version`` and ``head-sha256``, and the record holds ``"fedsqueeze.downlink.head"`` (the head's
identity frame) only when the node's head is stale. A delivery without a head part is written as version 1.
A node may also be given the round-0 copy (``initial``, :func:`rebuild`): then frames ``since = 0`` apply to
the initial state every node can make, as in ``fedsqueeze run``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from logging import INFO
from typing import Any, TypeGuard

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore import log

from ..codecs import Codec, decode_flat
from ..errors import PayloadError
from ..fl.server import Delivery, Downlink, state_sha256
from ..spec import UpdateSpec
from .frames import float_keys, is_float
from .records import array_bytes

__all__ = [
    "DENSE_KEY",
    "DOWN_FORMAT",
    "DOWN_META_KEY",
    "DOWN_STYPE",
    "DOWN_VERSION",
    "HEAD_KEY",
    "DownlinkSender",
    "Layout",
    "frame_arrays",
    "frame_key",
    "is_downlink_key",
    "pack_delivery",
    "rebuild",
]

DOWN_FORMAT = "fedsqueeze.downlink"
DOWN_VERSION = 2  # the newest version written; 1 (no head part) is still written and read
READ_VERSIONS = (1, 2)
DOWN_META_KEY = "fedsqueeze.downlink"  # the ConfigRecord of a train message with a compressed downlink
DOWN_STYPE = f"{DOWN_FORMAT}/1"  # the frames' storage type (unchanged by version 2)
DENSE_KEY = "fedsqueeze.downlink.dense"
HEAD_KEY = "fedsqueeze.downlink.head"
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
    head
        ``(key, dtype, shape)`` of the head's arrays (version 2; empty: no head part).
    prefixes
        What the record keys of the state and of the head add to the names of the spec their frames are
        coded with (version 2; fedsqueeze's job: ``("lora.", "head.")``).
    """

    order: tuple[str, ...]
    state: tuple[tuple[str, str, tuple[int, ...]], ...]
    head: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    prefixes: tuple[str, str] = ("", "")

    @classmethod
    def of(cls, record: ArrayRecord) -> Layout:
        """The layout of ``record``: its float arrays make the state."""
        keys = float_keys(record)
        state = tuple((k, str(record[k].dtype), tuple(int(x) for x in record[k].shape)) for k in keys)
        return cls(tuple(record.keys()), state)

    @classmethod
    def of_specs(cls, lora: UpdateSpec, head: UpdateSpec) -> Layout:
        """fedsqueeze's job: ``lora.<name>`` arrays (the state), then ``head.<name>`` (the head); fp32."""
        state = tuple((f"lora.{n}", "float32", tuple(s)) for n, s in lora.entries)
        heads = tuple((f"head.{n}", "float32", tuple(s)) for n, s in head.entries)
        order = tuple(k for k, _, _ in state + heads)
        return cls(order, state, heads, ("lora.", "head."))

    @property
    def version(self) -> int:
        """The downlink version a delivery of this layout is written in (2 when it uses a version-2 field)."""
        return 2 if self.head or self.prefixes != ("", "") else 1

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
        """The spec the state's frames are coded with."""
        cut = len(self.prefixes[0])
        return UpdateSpec.from_shapes({k[cut:]: shape for k, _, shape in self.state})

    @property
    def head_spec(self) -> UpdateSpec:
        """The spec of the head's frame."""
        cut = len(self.prefixes[1])
        return UpdateSpec.from_shapes({k[cut:]: shape for k, _, shape in self.head})

    def to_json(self) -> str:
        raw: dict[str, Any] = {
            "order": list(self.order),
            "state": [[k, d, list(s)] for k, d, s in self.state],
        }
        if self.version > 1:  # version 1 layouts keep their JSON (and digest)
            raw["head"] = [[k, d, list(s)] for k, d, s in self.head]
            raw["prefixes"] = list(self.prefixes)
        return json.dumps(raw)

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
            state, head = (
                tuple((str(k), str(np.dtype(d)), tuple(int(x) for x in s)) for k, d, s in raw.get(part, ()))
                for part in ("state", "head")
            )
            first, second = (str(p) for p in raw.get("prefixes", ("", "")))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise PayloadError(f"the downlink layout is malformed ({type(exc).__name__})") from None
        if not set(k for k, _, _ in state + head) <= set(order):
            raise PayloadError("the downlink layout names state arrays outside its key order")
        if not all(k.startswith(first) for k, _, _ in state) or not all(
            k.startswith(second) for k, _, _ in head
        ):
            raise PayloadError("the downlink layout's keys lack their prefixes")
        return cls(order, state, head, (first, second))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def record(
        self, flat: torch.Tensor, others: Mapping[str, Array], head: torch.Tensor | None = None
    ) -> ArrayRecord:
        """The dense ArrayRecord: the state ``flat`` (fp32) and the ``head`` cast to each array's dtype,
        ``others`` for the rest of the keys, in the layout's order.

        Raises
        ------
        PayloadError
            ``others`` lacks a key of the layout.
        """
        keys = [k for k, _, _ in self.state]
        state = dict(zip(keys, self.spec.unflatten(flat).values(), strict=True))
        if self.head:
            assert head is not None, "a layout with a head part needs the head"
            heads = [k for k, _, _ in self.head]
            state.update(zip(heads, self.head_spec.unflatten(head).values(), strict=True))
        dtypes = {k: d for k, d, _ in self.state + self.head}
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


def frame_arrays() -> Callable[[bytes], Array]:
    """``frame -> Array``, one Array per frame object: the nodes a frame goes to share it."""
    made: dict[int, Array] = {}

    def array_of(frame: bytes) -> Array:
        if id(frame) not in made:
            made[id(frame)] = _frame_array(frame)
        return made[id(frame)]

    return array_of


def pack_delivery(
    d: Delivery,
    layout: Layout,
    common: Mapping[str, Any],
    others: Mapping[str, Array],
    array_of: Callable[[bytes], Array],
) -> tuple[ArrayRecord, ConfigRecord]:
    """One node's delivery in the message layout: its ArrayRecord (``others``, then the dense frame or the
    delta frames, and the head's frame when sent) and its ``"fedsqueeze.downlink"`` ConfigRecord (``common``
    plus ``since``, ``frames``, the version and, when dense, the layout). A re-encoded catch-up carries the
    hash of the node's own copy (``d.sha256``) in place of ``common``'s."""
    arrays = dict(others)
    meta = {**common, "format": DOWN_FORMAT, "version": layout.version, "layout-digest": layout.digest}
    if d.sha256 is not None:
        meta["sha256"] = d.sha256
    if d.frames is None:
        assert d.dense is not None, "a delivery without frames sends the dense state"
        arrays[DENSE_KEY] = array_of(d.dense)
        meta.update({"since": -1, "frames": -1, "layout": layout.to_json()})
    else:
        arrays.update((frame_key(i), array_of(f)) for i, f in enumerate(d.frames))
        meta.update({"since": int(d.since), "frames": len(d.frames)})
    if layout.head and d.head is not None:
        arrays[HEAD_KEY] = array_of(d.head)
    return ArrayRecord(arrays), ConfigRecord(meta)


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
        common = {"protocol": downlink.protocol, "round": int(server_round), "sha256": state_sha256(flat)}
        array_of = frame_arrays()
        per_node = {
            node: pack_delivery(downlink.deliveries[node], layout, common, others, array_of) for node in nodes
        }
        return as_sent, per_node


# -- the client end ------------------------------------------------------------------------------------------
def _is_int(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool`` (a record value that counts something)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _frame_of(record: ArrayRecord, key: str) -> bytes:
    return array_bytes(record, key, stype=DOWN_STYPE, what="downlink delivery")


def rebuild(
    content: RecordDict,
    held: Mapping[str, Any] | None,
    initial: Callable[[], Mapping[str, Any]] | None = None,
) -> tuple[str, ArrayRecord, dict[str, Any]]:
    """Turn a train message's delivery back into the dense ArrayRecord the server's state gives.

    This is the one rebuild of a downlink delivery: the drop-in's (``Compressed(..., downlink=...)``) and
    fedsqueeze's own job's.

    Parameters
    ----------
    content
        The message's content (with the ``"fedsqueeze.downlink"`` ConfigRecord).
    held
        The copy this node kept from its last delivery (``None``: none).
    initial
        Makes the round-0 copy every node can build itself (fedsqueeze's job: the seeded initial LoRA and
        head); called only when the delivery starts from it (frames ``since = 0``, or head version 0 without
        a head frame). ``None``: a node holds no state it did not receive.

    Returns
    -------
    tuple
        ``(record key, dense ArrayRecord in the original keys, dtypes and order, the new copy to keep)``.
        The copy holds ``round``, ``theta`` (float32, flat), ``layout``, ``layout-digest``, with a head part
        ``head`` and ``head-version``, and after delta frames ``step``: the last frame decoded (what a
        predictive uplink codes against).

    Raises
    ------
    PayloadError
        The delivery cannot be applied: a malformed record, a corrupt frame, frames for a copy this node does
        not hold (lost, never received, another layout), or a rebuilt state whose SHA-256 is not the server's.
    """
    meta = content.config_records[DOWN_META_KEY]
    if meta.get("format") != DOWN_FORMAT or meta.get("version") not in READ_VERSIONS:
        raise PayloadError(f"downlink record format {meta.get('format')!r} version {meta.get('version')!r}, "
                           f"this fedsqueeze reads {DOWN_FORMAT!r} versions {READ_VERSIONS}")  # fmt: skip
    key, nframes, since, rnd = meta.get("record"), meta.get("frames"), meta.get("since"), meta.get("round")
    sha, digest = meta.get("sha256"), meta.get("layout-digest")
    if not isinstance(key, str) or key not in content.array_records:
        raise PayloadError(f"the downlink record names ArrayRecord {key!r}, which the message lacks")
    if not (_is_int(nframes) and _is_int(since) and _is_int(rnd)):
        raise PayloadError("the downlink record lacks its round, since or frames")
    if not isinstance(sha, str) or not isinstance(digest, str):
        raise PayloadError("the downlink record lacks its sha256 or layout digest")
    record = content.array_records[key]
    start: Mapping[str, Any] | None = None  # the round-0 copy, made once if needed

    def initial_copy() -> Mapping[str, Any] | None:
        nonlocal start
        if start is None and initial is not None:
            start = initial()
            if start.get("layout-digest") != digest:
                raise PayloadError("the server's downlink layout is not this node's (another model?)")
        return start

    step = None
    if nframes < 0:
        layout = Layout.from_json(meta.get("layout"))
        if layout.digest != digest:
            raise PayloadError("the downlink layout does not match its digest")
        spec = layout.spec
        flat = decode_flat(_frame_of(record, DENSE_KEY), spec) if spec.numel else torch.zeros(0)
    else:
        base = initial_copy() if since == 0 and initial is not None else held
        if base is None or base.get("round") != since or base.get("layout-digest") != digest:
            have = "no copy" if base is None else f"the copy of round {base.get('round')}"
            raise PayloadError(f"the server sent frames for the state of round {since} but this node holds "
                               f"{have}; it needs a dense resync (sent when next sampled)")  # fmt: skip
        layout = Layout.from_json(base.get("layout"))
        spec = layout.spec
        theta = base.get("theta")
        if not _flat_of(theta, spec.numel):
            raise PayloadError("this node's copy of the downlink state is malformed; it needs a dense resync")
        flat = theta
        for i in range(nframes):
            step = decode_flat(_frame_of(record, frame_key(i)), spec)
            flat = flat + step  # the server's own additions
    if state_sha256(flat) != sha:
        raise PayloadError("the rebuilt state differs from the server's (SHA-256); refusing to train")
    copy: dict[str, Any] = {
        "round": rnd,
        "theta": flat.clone(),
        "layout": layout.to_json(),
        "layout-digest": digest,
    }
    head = _rebuild_head(meta, record, layout, held, initial_copy) if layout.head else None
    if head is not None:
        copy.update({"head": head.clone(), "head-version": meta["head-version"]})
    if step is not None:
        copy["step"] = step
    others = {k: a for k, a in record.items() if not is_downlink_key(k)}
    return key, layout.record(flat, others, head), copy


def _flat_of(value: object, numel: int) -> TypeGuard[torch.Tensor]:
    return isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.shape == (numel,)


def _rebuild_head(
    meta: ConfigRecord,
    record: ArrayRecord,
    layout: Layout,
    held: Mapping[str, Any] | None,
    initial_copy: Callable[[], Mapping[str, Any] | None],
) -> torch.Tensor:
    """The head a version-2 delivery gives: its frame, else the node's copy of that head version (or the
    initial head, version 0), checked by SHA-256."""
    version, sha = meta.get("head-version"), meta.get("head-sha256")
    if not _is_int(version) or not isinstance(sha, str):
        raise PayloadError("the downlink record lacks its head-version or head-sha256")
    spec = layout.head_spec
    if HEAD_KEY in record:
        frame = _frame_of(record, HEAD_KEY)
        head = decode_flat(frame, spec) if spec.numel else torch.zeros(0)
    else:
        source = None
        digest = meta.get("layout-digest")
        for copy in (held, initial_copy() if version == 0 else None):
            if (
                copy is not None
                and copy.get("head-version") == version
                and copy.get("layout-digest") == digest
            ):
                source = copy.get("head")
                break
        if not _flat_of(source, spec.numel):
            raise PayloadError("this node does not hold the current head; it needs a dense resync")
        head = source
    if state_sha256(head) != sha:
        raise PayloadError("the rebuilt head differs from the server's (SHA-256); refusing to train")
    return head

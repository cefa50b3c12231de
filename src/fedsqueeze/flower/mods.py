"""``compress_mod``: a Flower client mod that compresses any ClientApp's ``train`` reply with a codec, and
``downlink_mod``: one that rebuilds the dense train arrays from a compressed downlink delivery.

Add it to a stock ClientApp (``ClientApp(mods=[compress_mod()])``) and wrap the server's strategy with
:class:`~fedsqueeze.flower.strategy.Compressed`, which names the codec in the train config and decodes the
replies. The reply layout is in :mod:`.frames`; the design and its caveats in ``docs/flower-dropin.md``.

Both keep their per-node state in one :class:`~.store.StateStore`, one version per round: the
error-feedback state (residual + codec state, part ``"ef"``) and this node's copy of the broadcast state
``θ̃`` (part ``"downlink"``). By default the store is ``context.state`` (``"fedsqueeze.ef"``,
``"fedsqueeze.downlink"``): it survives across rounds for as long as the SuperNode keeps the run's Context;
a restarted SuperNode starts again from a zero residual, and a node that lost its copy is resynced densely
(``docs/flower-dropin.md``). fedsqueeze's ClientApp passes ``store=`` to keep them in the node's state dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode

from ..codecs import Codec, ErrorFeedback, get
from ..codecs.registry import with_path
from ..errors import ConfigError, FedsqueezeError
from ..fl.client import relative_error
from ..seeding import derive_seed
from ..spec import UpdateSpec
from .downlink import DOWN_META_KEY, rebuild
from .frames import (
    FRAME_KEY,
    META_KEY,
    float_keys,
    frame_array,
    frame_meta,
    is_float,
    make_codec,
    part_key,
    parts_meta,
    read_codec_config,
    read_parts_config,
    spec_of,
    to_float64,
)
from .store import StateStore

__all__ = [
    "DOWNLINK_STATE_KEY",
    "EF_STATE_KEY",
    "NEEDS_DOWNLINK_MOD",
    "NO_CODEC",
    "StoreFor",
    "compress_mod",
    "downlink_mod",
    "load_downlink_state",
    "load_ef_state",
]

log = logging.getLogger("fedsqueeze.flower")

EF_PART, DOWNLINK_PART = "ef", "downlink"  # the store's parts
EF_STATE_KEY = f"fedsqueeze.{EF_PART}"  # their records in context.state (the default store)
DOWNLINK_STATE_KEY = f"fedsqueeze.{DOWNLINK_PART}"
StoreFor = Callable[[Message, Context], StateStore]
"""Which store a train message's state lives in (may raise :class:`~fedsqueeze.FedsqueezeError`)."""
NEEDS_DOWNLINK_MOD = (
    "compress_mod: this train message carries a compressed downlink (fedsqueeze.downlink): add "
    "fedsqueeze.flower.downlink_mod() before compress_mod: ClientApp(mods=[downlink_mod(), compress_mod()])"
)
NO_CODEC = (
    "compress_mod has no codec: wrap the ServerApp's strategy with fedsqueeze.flower.Compressed(strategy, "
    "codec=...) or pass compress_mod(codec=...)"
)


def _default_store(msg: Message, context: Context) -> StateStore:
    return StateStore(context)


CodecFor = Callable[[Message, Context, str], Codec | None]
"""The codec of a part of a version-2 reply, for a codec that its name and options cannot rebuild (``None``:
build it from them)."""


def compress_mod(
    codec: str | None = None,
    *,
    error_feedback: bool = True,
    store: StoreFor | None = None,
    codec_for: CodecFor | None = None,
    **options: Any,
) -> Mod:
    """A Flower ``Mod`` that replaces a ``train`` reply's float arrays by one fedsqueeze frame.

    On a ``train`` message it keeps the float arrays it received, calls the app, forms
    ``u = θ_received − θ_local`` over those arrays (in the order received), encodes ``u`` plus this node's
    error-feedback residual and puts the frame, plus the reply's other arrays unchanged, in place of the
    reply's ArrayRecord (layout: :mod:`fedsqueeze.flower.frames`). Other messages pass through untouched.

    Parameters
    ----------
    codec
        Codec name (``fedsqueeze codecs`` lists them). The codec named in the train config by
        :class:`~fedsqueeze.flower.Compressed` wins (one source of truth); this one is used when the server
        names none. With neither, the mod replies with a Flower error that says so.
    error_feedback
        Keep this node's residual (what the codec dropped) and add it to its next update. Used with
        ``codec`` when the server names none; otherwise ``Compressed(..., error_feedback=...)`` decides.
    store
        Where the residual is kept (:class:`~fedsqueeze.flower.store.StateStore`); default: ``context.state``.
    codec_for
        ``(msg, context, part) -> Codec | None``: the codec of a part of a version-2 reply (a train message
        with ``fedsqueeze-parts``, sent by fedsqueeze's own job) that its name and options cannot rebuild,
        e.g. one with a trained model.
    **options
        Options of ``codec`` (e.g. ``density=0.01``).

    Returns
    -------
    Mod
        ``(msg, context, call_next) -> Message``. Put it *first* in ``ClientApp(mods=[...])`` (the outermost
        mod) so that it compresses what the other mods, e.g. Flower's DP clipping mods, produced.

    Raises
    ------
    ConfigError
        ``codec`` or ``options`` are invalid (checked here, when the ClientApp is built).
    """
    if not isinstance(error_feedback, bool):
        raise ConfigError(f"compress_mod: error_feedback must be True or False, got {error_feedback!r}")
    local = None
    if codec is not None:
        make_codec(codec, options)
        local = (codec, json.loads(json.dumps(options, sort_keys=True)), bool(error_feedback))
    elif options:
        raise ConfigError(f"compress_mod got codec options {sorted(options)} but no codec=")
    codecs: dict[str, Codec] = {}
    warned: set[str] = set()
    store_for = store or _default_store

    def compress(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type.split(".", 1)[0] != MessageType.TRAIN:
            return call_next(msg, context)
        if DOWN_META_KEY in msg.content.config_records:  # no downlink_mod before: the arrays are frames
            return _error(msg, NEEDS_DOWNLINK_MOD)
        records = list(msg.content.array_records.values())
        if len(records) == 1 and not float_keys(records[0]):
            return call_next(msg, context)  # no float arrays (e.g. a model as bytes): nothing to compress
        try:
            asked = read_codec_config(msg.content)
            in_parts = read_parts_config(msg.content)
            where = store_for(msg, context) if in_parts is not None else None
        except FedsqueezeError as exc:
            return _error(msg, f"compress_mod: {exc}")
        if in_parts is not None and where is not None:
            return _train_parts(msg, context, call_next, in_parts, where, codec_for)
        if asked is not None:
            name, opts, rnd, ef = asked
            if local is not None and (name, opts, ef) != local and "differs" not in warned:
                warned.add("differs")
                log.warning("compress_mod: the server asks for %s %s; codec=%s given here is ignored",
                            name, opts, local[0])  # fmt: skip
        elif local is not None:
            (name, opts, ef), rnd = local, _server_round(msg.content)
        else:
            return _error(msg, NO_CODEC)
        sig = json.dumps([name, opts], sort_keys=True)
        if sig not in codecs:
            try:
                codecs[sig] = make_codec(name, opts)
            except FedsqueezeError as exc:
                return _error(msg, f"compress_mod: {exc}")
        try:
            where = store_for(msg, context)
        except FedsqueezeError as exc:
            return _error(msg, f"compress_mod: {exc}")
        return _train(msg, context, call_next, codecs[sig], rnd, ef, where)

    compress.__name__ = compress.__qualname__ = "compress_mod"
    return compress


def downlink_mod(
    *,
    initial: Callable[[Message, Context], Mapping[str, Any]] | None = None,
    store: StoreFor | None = None,
) -> Mod:
    """A Flower ``Mod`` that turns a compressed downlink delivery back into the dense train arrays.

    On a ``train`` message sent by ``Compressed(..., downlink=...)`` (or by fedsqueeze's own job) it rebuilds
    the broadcast state ``θ̃`` with :func:`~fedsqueeze.flower.downlink.rebuild`: from the dense frame, or from
    the copy this node kept (the newest version of a round before this one) plus the delta frames it
    missed (the server's own float32 additions, so the copy equals the server's ``θ̃`` bit for bit). It
    checks the SHA-256 the server sent, puts the dense arrays in the message's ArrayRecord (original keys,
    dtypes and order; the arrays that travelled unchanged stay), removes the downlink record, keeps the new
    copy and calls the app. Other messages, and train messages without a compressed downlink, pass through.

    If the delivery cannot be applied (this node lost its copy, a frame is corrupt, the hash differs) it
    replies with a Flower error (``ErrorCode.MOD_FAILED_PRECONDITION``) and does not call the app; the
    server then sends this node the dense state the next time it samples it.

    Parameters
    ----------
    initial
        ``(msg, context) -> the round-0 copy`` (see :func:`~fedsqueeze.flower.downlink.rebuild`), for a
        server whose nodes all start from a state they can make themselves (fedsqueeze's job).
    store
        Where the copy is kept (:class:`~fedsqueeze.flower.store.StateStore`); default: ``context.state``.

    Returns
    -------
    Mod
        ``(msg, context, call_next) -> Message``. Put it *before* :func:`compress_mod`:
        ``ClientApp(mods=[downlink_mod(), compress_mod()])``.
    """
    store_for = store or _default_store

    def downlink(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type.split(".", 1)[0] != MessageType.TRAIN:
            return call_next(msg, context)
        if DOWN_META_KEY not in msg.content.config_records:
            return call_next(msg, context)
        said = msg.content.config_records[DOWN_META_KEY].get("round")
        rnd = said if isinstance(said, int) and not isinstance(said, bool) else None
        try:
            where = store_for(msg, context)
        except FedsqueezeError as exc:
            return _error(msg, f"downlink_mod: {exc}")
        try:
            held = where.load(DOWNLINK_PART, before=rnd)
        except (FedsqueezeError, RuntimeError, OSError, EOFError) as exc:  # unreadable: as good as lost
            log.warning("downlink_mod: the held downlink state is unreadable (%s)", exc)
            held = None
        start = None if initial is None else (lambda: initial(msg, context))
        try:
            key, record, copy = rebuild(msg.content, held, start)
        except FedsqueezeError as exc:
            return _error(msg, f"downlink_mod: {exc}")
        content = RecordDict()
        for name, value in msg.content.items():
            if name != DOWN_META_KEY:
                content[name] = record if name == key else value
        msg.content = content
        where.save(DOWNLINK_PART, int(copy["round"]), copy)
        log.info("downlink_mod: round %s, state of %d values rebuilt and verified",
                 copy["round"], int(copy["theta"].numel()))  # fmt: skip
        return call_next(msg, context)

    downlink.__name__ = downlink.__qualname__ = "downlink_mod"
    return downlink


def load_downlink_state(context: Context) -> dict[str, Any] | None:
    """The newest copy of the broadcast state :func:`downlink_mod` keeps in ``context.state`` (``None``:
    none).

    Keys: ``round``, ``theta`` (float32, flat), ``layout`` (JSON) and ``layout-digest`` (and those of
    :func:`~fedsqueeze.flower.downlink.rebuild`'s copy).
    """
    return StateStore(context).load(DOWNLINK_PART)


def _train(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    codec: Codec,
    rnd: int | None,
    ef_on: bool,
    store: StateStore,
) -> Message:
    if len(msg.content.array_records) != 1:
        return _error(msg, f"compress_mod expects one ArrayRecord in a train message, got "
                           f"{len(msg.content.array_records)}")  # fmt: skip
    received = next(iter(msg.content.array_records.values()))
    floats = float_keys(received)
    if not floats:
        return call_next(msg, context)  # nothing to compress
    sent = {k: received[k] for k in floats}  # Arrays hold immutable bytes: these are the values received

    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    content = reply.content
    if len(content.array_records) != 1:
        return _error(msg, f"compress_mod expects one ArrayRecord in a train reply, got "
                           f"{len(content.array_records)}")  # fmt: skip
    record_key, local = next(iter(content.array_records.items()))
    if FRAME_KEY in local or META_KEY in content:
        return _error(msg, f"compress_mod: the reply already uses the key {FRAME_KEY!r}")
    missing = [k for k in floats if k not in local]
    if missing:
        return _error(msg, f"compress_mod: the reply lacks the received float arrays {missing[:5]} (it must "
                           "return every float array it received)")  # fmt: skip
    # The frame carries the received float arrays that come back as floats of the same shape; the others
    # (e.g. an integer buffer the server averaged into a float) travel unchanged, so the server can tell.
    keys = [k for k in floats if is_float(local[k]) and tuple(local[k].shape) == tuple(sent[k].shape)]
    if not keys:
        return reply  # no float array came back as sent: nothing to compress, a plain reply
    spec = spec_of(received, keys)

    flat = torch.cat([(to_float64(sent[k]) - to_float64(local[k])).reshape(-1) for k in keys])
    ef = ErrorFeedback(codec, enabled=ef_on)
    state_from = _load_ef(store, ef, codec, spec, rnd) if ef_on else "off"
    seed = derive_seed(context.run_id, rnd or 0, context.node_id, "encode")
    try:
        frame = ef.encode_flat(flat, spec, seed=seed)
    except FedsqueezeError as exc:
        return _error(msg, f"compress_mod: cannot encode this update: {exc}")
    if ef_on:
        _save_ef(store, ef, codec, spec, rnd)

    out = {FRAME_KEY: frame_array(frame)}
    framed = set(keys)
    out.update((k, a) for k, a in local.items() if k not in framed)
    content[record_key] = ArrayRecord(out)
    content[META_KEY] = frame_meta(record_key, codec.name, spec)
    log.info("compress_mod: round %s, %s frame of %d bytes for %d values (error feedback: %s)",
             rnd, codec.name, len(frame), spec.numel, state_from)  # fmt: skip
    return reply


def _train_parts(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    asked: tuple[list[dict[str, Any]], int | None, int | None],
    store: StateStore,
    codec_for: CodecFor | None,
) -> Message:
    """A version-2 reply: one frame per part, ``u = θ_received − θ_local`` in float32 (as the engine forms
    it, so the frames equal ``fedsqueeze run``'s byte for byte)."""
    parts, seed, rnd = asked
    if len(msg.content.array_records) != 1:
        return _error(msg, "compress_mod expects one ArrayRecord in a train message")
    received = next(iter(msg.content.array_records.values()))
    sent = {k: received[k] for k in float_keys(received)}
    if seed is None:
        seed = derive_seed(context.run_id, rnd or 0, context.node_id, "encode")
    try:
        copy = store.load(DOWNLINK_PART, before=None if rnd is None else rnd + 1)
    except (FedsqueezeError, RuntimeError, OSError, EOFError):
        copy = None
    step = copy.get("step") if copy is not None and copy.get("round") == rnd else None

    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    content = reply.content
    if len(content.array_records) != 1:
        return _error(msg, "compress_mod expects one ArrayRecord in a train reply")
    record_key, local = next(iter(content.array_records.items()))
    out: dict[str, Any] = {}
    framed: set[str] = set()
    described = []
    for part in parts:
        name, prefix = str(part["name"]), str(part.get("prefix", ""))
        keys = [k for k in sent if k.startswith(prefix)]
        missing = [k for k in keys if k not in local or tuple(local[k].shape) != tuple(sent[k].shape)]
        if missing:
            return _error(msg, f"compress_mod: the reply lacks the received float arrays {missing[:5]}")
        framed.update(keys)
        spec = UpdateSpec.from_shapes({k[len(prefix) :]: tuple(sent[k].shape) for k in keys})
        info: dict[str, Any] = {
            "name": name,
            "codec": part.get("codec"),
            "spec": spec.digest.hex(),
            "round": rnd,
        }
        if part.get("send") is False:
            described.append({**info, "sent": False})
            continue
        try:
            codec = codec_for(msg, context, name) if codec_for is not None else None
            codec = codec or get(str(part.get("codec")), **dict(part.get("options") or {}))
        except FedsqueezeError as exc:
            return _error(msg, f"compress_mod: part {name!r}: {exc}")
        f32 = [
            torch.from_numpy(np.array(a.numpy(), dtype=np.float32)).reshape(-1)
            for a in (sent[k] for k in keys)
        ]
        mine = [torch.from_numpy(np.array(local[k].numpy(), dtype=np.float32)).reshape(-1) for k in keys]
        u = torch.cat(f32) - torch.cat(mine) if keys else torch.zeros(0)
        ef_on = part.get("error-feedback") is True
        ef = ErrorFeedback(codec, enabled=ef_on)
        ef_part = EF_PART if name == "lora" else f"{EF_PART}.{name}"
        state_from = _load_ef(store, ef, codec, spec, rnd, ef_part) if ef_on else "off"
        reference = step if part.get("reference") is True else None
        before = ef.residual.clone() if ef_on and ef.residual is not None else None
        try:
            frame = b"" if spec.numel == 0 else ef.encode_flat(u, spec, seed=seed, reference=reference)
        except FedsqueezeError as exc:
            return _error(msg, f"compress_mod: cannot encode part {name!r}: {exc}")
        if ef_on:
            _save_ef(store, ef, codec, spec, rnd, ef_part)
        rel = None
        if spec.numel and ef.last_decoded is not None:
            p = u.to(torch.float64) if before is None else u.to(torch.float64) + before
            rel = relative_error(p, ef.last_decoded)
        out[part_key(name)] = frame_array(frame)
        described.append(
            {
                **info,
                "sent": True,
                "state-from": state_from,
                "residual-norm": ef.residual_norm,
                "rel-error": rel,
            }
        )
    out.update((k, a) for k, a in local.items() if k not in framed)
    content[record_key] = ArrayRecord(out)
    content[META_KEY] = parts_meta(record_key, described)
    return reply


def _server_round(content: RecordDict) -> int | None:
    """The ``server-round`` a Flower strategy puts in its train config (``FedAvg`` does), if any."""
    for record in content.config_records.values():
        value = record.get("server-round")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _error(msg: Message, reason: str) -> Message:
    log.error("%s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


# -- error-feedback state in context.state -------------------------------------------------------------------
def _state_id(codec: Codec, spec: UpdateSpec) -> str:
    """Which state a residual belongs to: the codec, its options but the rate, and the spec (another one
    starts fresh; another rate of the same codec, a rate schedule's, keeps the residual)."""
    options = codec.options()
    path = codec.rate_path(options)
    if path is not None:
        options = with_path(options, path, None)
    blob = json.dumps([codec.name, options, spec.digest.hex()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_ef_state(context: Context) -> dict[str, Any] | None:
    """The newest error-feedback state this mod keeps in ``context.state`` (``None`` before the first
    round).

    Keys: ``codec-id`` (codec, options and spec digest), ``round`` and ``ef``
    (:meth:`fedsqueeze.ErrorFeedback.state_dict`: ``residual`` float64, ``spec``, ``codec_state``).
    """
    return StateStore(context).load(EF_PART)


def _load_ef(
    store: StateStore, ef: ErrorFeedback, codec: Codec, spec: UpdateSpec, rnd: int | None, part: str = EF_PART
) -> str:
    try:
        state = store.load(part, before=rnd)
    except (FedsqueezeError, RuntimeError, OSError, EOFError) as exc:  # unreadable: start clean
        log.warning("compress_mod: error-feedback state unreadable (%s); starting from zero", exc)
        return "fresh"
    if state is None or state.get("codec-id") != _state_id(codec, spec):
        return "fresh"  # first round, or another codec / model: the old residual does not apply
    ef.load_state_dict(state["ef"])
    ef.set_codec(codec)  # this round's options (a rate schedule); the codec's state stays if they are equal
    return store.where


def _save_ef(
    store: StateStore, ef: ErrorFeedback, codec: Codec, spec: UpdateSpec, rnd: int | None, part: str = EF_PART
) -> None:
    store.save(part, -1 if rnd is None else rnd, {"codec-id": _state_id(codec, spec), "ef": ef.state_dict()})

"""How a compressed reply looks inside a Flower ``Message``: the layout shared by the drop-in mod and wrapper.

:func:`~fedsqueeze.flower.mods.compress_mod` (client) writes it and
:class:`~fedsqueeze.flower.strategy.Compressed` (server) reads it. A compressed ``train`` reply keeps the
reply's ArrayRecord key (e.g. ``"arrays"``), but that record then holds

* ``"fedsqueeze.frame"``: one ``uint8`` Array (``stype = "fedsqueeze.frame/1"``) whose data is the codec
  frame of ``u = θ_received − θ_local`` over the *float* arrays the client received, in the order received;
* the reply's other arrays (integer buffers such as BatchNorm's ``num_batches_tracked``, non-NumPy arrays,
  float arrays the server did not send), unchanged;

and the reply gets one extra ConfigRecord ``"fedsqueeze.frame"``: ``format``, ``version``, ``record`` (the
ArrayRecord key), ``codec`` (name) and ``spec`` (hex digest of the frame's
:class:`~fedsqueeze.UpdateSpec`). The server rebuilds the dense record from the arrays it sent.

The codec travels the other way in the train ConfigRecord: ``fedsqueeze-codec`` (name),
``fedsqueeze-codec-options`` (JSON object), ``fedsqueeze-round`` and ``fedsqueeze-error-feedback``. See
``docs/flower-dropin.md``.

Version 2 (fedsqueeze's own job) codes the update in named parts: the train ConfigRecord holds
``fedsqueeze-parts`` (JSON, :func:`read_parts_config`) and ``fedsqueeze-seed``; the reply holds one frame per
part sent, ``"fedsqueeze.frame.<part>"``, and its ConfigRecord ``"fedsqueeze.frame"`` has ``version = 2`` and
``parts`` (JSON: per part its codec, spec digest, round, ``state-from``, ``residual-norm``, ``rel-error``).
Version 1 is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from ..codecs import Codec, get
from ..errors import ConfigError, PayloadError
from ..spec import UpdateSpec

__all__ = [
    "CODEC_KEY",
    "EF_KEY",
    "FORMAT",
    "FRAME_KEY",
    "FRAME_STYPE",
    "META_KEY",
    "OPTIONS_KEY",
    "PARTS_KEY",
    "PARTS_VERSION",
    "ROUND_KEY",
    "SEED_KEY",
    "VERSION",
    "FrameReply",
    "PartsReply",
    "codec_config",
    "content_bytes",
    "float_keys",
    "frame_array",
    "frame_meta",
    "is_float",
    "make_codec",
    "part_key",
    "parts_meta",
    "read_codec_config",
    "read_frame_reply",
    "read_parts_config",
    "read_parts_reply",
    "read_parts_round",
    "spec_of",
    "to_float64",
]

FORMAT = "fedsqueeze.frame"
VERSION = 1
FRAME_KEY = "fedsqueeze.frame"  # the frame's key inside the reply's ArrayRecord
META_KEY = "fedsqueeze.frame"  # the ConfigRecord beside it (a RecordDict keeps the kinds apart)
FRAME_STYPE = f"{FORMAT}/{VERSION}"
NUMPY_STYPE = "numpy.ndarray"  # flwr.common.constant.SType.NUMPY

CODEC_KEY = "fedsqueeze-codec"
OPTIONS_KEY = "fedsqueeze-codec-options"
ROUND_KEY = "fedsqueeze-round"
EF_KEY = "fedsqueeze-error-feedback"


# -- the codec and the train config: server -> client -----------------------------------------------------
def make_codec(name: object, options: Mapping[str, Any]) -> Codec:
    """The codec ``name`` with ``options``, checked for use over Flower.

    Raises
    ------
    ConfigError
        Unknown codec or option, an invalid value (:func:`fedsqueeze.codecs.get`), an option that does not
        survive the JSON of the train config, or a codec that needs a trained model (the drop-in has no way
        to hand one to the server's decoder).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"codec must be a codec name such as 'topk' or 'flm_topk', got {name!r}")
    try:
        plain = json.loads(json.dumps(dict(options)))
    except (TypeError, ValueError):  # not JSON-serialisable (NaN is, but it is no option value either)
        plain = None
    if plain is None or any(isinstance(v, dict | list) for v in plain.values()):
        raise ConfigError(f"codec {name!r}: options travel as JSON: give numbers, strings, booleans or None")
    codec = get(name, **options)
    if get(name, **plain) != codec:
        raise ConfigError(f"codec {name!r}: the options change when sent as JSON: {options!r} -> {plain!r}")
    if type(codec).needs_trained_model or options.get("model_path"):
        raise ConfigError(f"codec {name!r} with a trained model is not supported by the Flower drop-in")
    return codec


def codec_config(
    name: str, options: Mapping[str, Any], server_round: int, error_feedback: bool
) -> dict[str, str | int | bool]:
    """The keys :class:`~fedsqueeze.flower.strategy.Compressed` adds to every train ConfigRecord."""
    return {
        CODEC_KEY: name,
        OPTIONS_KEY: json.dumps(dict(options), sort_keys=True),
        ROUND_KEY: int(server_round),
        EF_KEY: bool(error_feedback),
    }


def read_codec_config(content: RecordDict) -> tuple[str, dict[str, Any], int | None, bool] | None:
    """``(codec name, options, round, error feedback)`` from the message's ConfigRecords, or ``None`` when
    none carries a codec.

    Raises
    ------
    ConfigError
        The options are not a JSON object.
    """
    for record in content.config_records.values():
        if CODEC_KEY not in record:
            continue
        raw = record.get(OPTIONS_KEY, "{}")
        try:
            options = json.loads(raw) if isinstance(raw, str) else None
        except json.JSONDecodeError:
            options = None
        if not isinstance(options, dict):
            raise ConfigError(f"{OPTIONS_KEY} must be a JSON object, got {raw!r}")
        rnd = record.get(ROUND_KEY, record.get("server-round"))
        ef = record.get(EF_KEY, True)
        return str(record[CODEC_KEY]), options, int(rnd) if isinstance(rnd, int) else None, ef is not False
    return None


# -- arrays ------------------------------------------------------------------------------------------------
def is_float(arr: Array) -> bool:
    """True for a NumPy-serialised Array of a floating dtype (what the frame carries)."""
    if arr.stype != NUMPY_STYPE:
        return False
    try:
        return np.dtype(arr.dtype).kind == "f"
    except TypeError:
        return False


def float_keys(record: ArrayRecord) -> list[str]:
    """Keys of ``record``'s float arrays, in record order."""
    return [k for k, a in record.items() if is_float(a)]


def spec_of(record: ArrayRecord, keys: list[str]) -> UpdateSpec:
    """The :class:`~fedsqueeze.UpdateSpec` (names, shapes) of ``record[k]`` for ``k`` in ``keys``."""
    return UpdateSpec.from_shapes({k: tuple(record[k].shape) for k in keys})


def to_float64(arr: Array) -> torch.Tensor:
    """An Array's values as a float64 CPU tensor (a copy)."""
    return torch.from_numpy(np.array(arr.numpy(), dtype=np.float64, copy=True))


def frame_array(frame: bytes) -> Array:
    """The frame as the marked 1-D ``uint8`` Array."""
    return Array(dtype="uint8", shape=(len(frame),), stype=FRAME_STYPE, data=bytes(frame))


def content_bytes(content: RecordDict) -> int:
    """Bytes a reply's arrays occupy on the wire (Flower's ``count_bytes``: data plus key names), plus the
    frame's ConfigRecord where there is one. Metrics and other configs are the same with or without
    compression and are not counted."""
    total = sum(r.count_bytes() for r in content.array_records.values())
    if META_KEY in content.config_records:
        total += content.config_records[META_KEY].count_bytes()
    return total


# -- the compressed reply: client -> server -----------------------------------------------------------------
class FrameReply:
    """A compressed reply as found in a Message's content (see :func:`read_frame_reply`).

    Attributes
    ----------
    record_key
        Key of the reply's ArrayRecord.
    frame
        The codec frame.
    spec_hex
        Hex digest of the spec the client encoded against.
    others
        The reply's arrays that are not in the frame, in reply order.
    """

    def __init__(self, record_key: str, frame: bytes, spec_hex: str, others: dict[str, Array]) -> None:
        self.record_key = record_key
        self.frame = frame
        self.spec_hex = spec_hex
        self.others = others


def read_frame_reply(content: RecordDict) -> FrameReply | None:
    """The compressed reply in ``content``, or ``None`` when it carries none (a plain Flower reply).

    Raises
    ------
    PayloadError
        The content says it is compressed but the frame record is malformed (unknown version, missing or
        mislabelled frame array).
    """
    meta = content.config_records.get(META_KEY)
    if meta is None or meta.get("format") != FORMAT:
        return None
    if meta.get("version") != VERSION:
        raise PayloadError(f"frame record version {meta.get('version')!r}, this fedsqueeze reads {VERSION}")
    key = meta.get("record")
    if not isinstance(key, str) or key not in content.array_records:
        raise PayloadError(f"the frame record names ArrayRecord {key!r}, which the reply lacks")
    record = content.array_records[key]
    if FRAME_KEY not in record:
        raise PayloadError(f"ArrayRecord {key!r} has no {FRAME_KEY!r} array")
    arr = record[FRAME_KEY]
    if arr.dtype != "uint8" or arr.stype != FRAME_STYPE or tuple(arr.shape) != (len(arr.data),):
        raise PayloadError(
            f"{FRAME_KEY!r} is not a frame (dtype {arr.dtype}, stype {arr.stype}, shape {tuple(arr.shape)})"
        )
    spec_hex = meta.get("spec")
    if not isinstance(spec_hex, str):
        raise PayloadError("the frame record has no spec digest")
    others = {k: a for k, a in record.items() if k != FRAME_KEY}
    return FrameReply(key, bytes(arr.data), spec_hex, others)


def frame_meta(record_key: str, codec: str, spec: UpdateSpec) -> ConfigRecord:
    """The ConfigRecord that marks a compressed reply."""
    return ConfigRecord(
        {
            "format": FORMAT,
            "version": VERSION,
            "record": record_key,
            "codec": codec,
            "spec": spec.digest.hex(),
        }
    )


# -- version 2: an update in named parts (fedsqueeze's own job) ---------------------------------------------
PARTS_VERSION = 2
SEED_KEY = "fedsqueeze-seed"  # the encode seed as a decimal string (a uint64 does not fit Flower's sint64)
PARTS_KEY = "fedsqueeze-parts"  # JSON: the parts a version-2 reply codes (see read_parts_config)
_PART_FIELDS = {"name", "prefix", "codec", "options", "error-feedback", "reference", "send"}


def part_key(name: str) -> str:
    """Key of part ``name``'s frame inside a version-2 reply's ArrayRecord."""
    return f"{FRAME_KEY}.{name}"


def read_parts_config(content: RecordDict) -> tuple[list[dict[str, Any]], int | None, int | None] | None:
    """``(parts, seed, round)`` of a train message that asks for a version-2 reply, or ``None``.

    Each part is a JSON object: ``name``, ``prefix`` (its arrays are the received float arrays whose keys
    start with it, in record order; its spec names drop the prefix), ``codec`` and ``options``,
    ``error-feedback``, ``reference`` (code against the last downlink frame ``downlink_mod`` decoded) and
    ``send`` (``false``: the part is not sent this round).

    Raises
    ------
    ConfigError
        The parts or the seed are malformed.
    """
    for record in content.config_records.values():
        if PARTS_KEY not in record:
            continue
        raw, seed = record.get(PARTS_KEY), record.get(SEED_KEY)
        try:
            parts = json.loads(raw) if isinstance(raw, str) else None
        except json.JSONDecodeError:
            parts = None
        names = [p.get("name") for p in parts] if isinstance(parts, list) and all(
            isinstance(p, dict) and set(p) <= _PART_FIELDS for p in parts
        ) else None  # fmt: skip
        if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"{PARTS_KEY} must be a JSON list of parts with distinct names, got {raw!r}")
        if seed is not None and not (isinstance(seed, str) and seed.isdigit() and int(seed) < 1 << 64):
            raise ConfigError(f"{SEED_KEY} must be a uint64 as a decimal string, got {seed!r}")
        return list(parts), None if seed is None else int(seed), _record_round(record)  # type: ignore[arg-type]
    return None


def read_parts_round(content: RecordDict) -> int | None:
    """The round of a train message that asks for a version-2 reply (as :func:`read_parts_config` gives it),
    without parsing its parts; ``None`` when it asks for none or names no round."""
    for record in content.config_records.values():
        if PARTS_KEY in record:
            return _record_round(record)
    return None


def _record_round(record: ConfigRecord) -> int | None:
    rnd = record.get(ROUND_KEY, record.get("server-round"))
    return rnd if isinstance(rnd, int) and not isinstance(rnd, bool) else None


def parts_meta(record_key: str, parts: list[dict[str, Any]]) -> ConfigRecord:
    """The ConfigRecord of a version-2 reply: ``parts`` is one JSON object per part (``name``, ``codec``,
    ``spec``, ``sent``, ``round``, ``state-from``, ``residual-norm``, ``rel-error``)."""
    return ConfigRecord(
        {"format": FORMAT, "version": PARTS_VERSION, "record": record_key, "parts": json.dumps(parts)}
    )


class PartsReply:
    """A version-2 reply (see :func:`read_parts_reply`).

    Attributes
    ----------
    frames
        Part name -> its frame (``b""``: not sent).
    info
        Part name -> its JSON object from the reply's ``parts``.
    """

    def __init__(self, frames: dict[str, bytes], info: dict[str, dict[str, Any]]) -> None:
        self.frames, self.info = frames, info


def read_parts_reply(content: RecordDict) -> PartsReply:
    """The parts of a version-2 reply; :class:`~fedsqueeze.PayloadError` if it is not one or is malformed.

    Decoding comes later: this checks the records (the reply is untrusted)."""
    meta = content.config_records.get(META_KEY)
    if meta is None or meta.get("format") != FORMAT:
        raise PayloadError(f"reply lacks record {META_KEY!r}")
    if meta.get("version") != PARTS_VERSION:
        raise PayloadError(f"frame record version {meta.get('version')!r}, expected {PARTS_VERSION}")
    key = meta.get("record")
    if not isinstance(key, str) or key not in content.array_records:
        raise PayloadError(f"the frame record names ArrayRecord {key!r}, which the reply lacks")
    raw = meta.get("parts")
    try:
        parts = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        parts = None
    if not isinstance(parts, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) for p in parts
    ):
        raise PayloadError("the frame record's parts are not a JSON list of named parts")
    record = content.array_records[key]
    frames: dict[str, bytes] = {}
    info: dict[str, dict[str, Any]] = {}
    for part in parts:
        name = part["name"]
        if name in info:
            raise PayloadError(f"the frame record names part {name!r} twice")
        info[name] = part
        if part.get("sent") is False:
            frames[name] = b""
            continue
        arr = record.get(part_key(name))
        if arr is None:
            raise PayloadError(f"ArrayRecord {key!r} has no {part_key(name)!r} array")
        if arr.dtype != "uint8" or arr.stype != FRAME_STYPE or tuple(arr.shape) != (len(arr.data),):
            raise PayloadError(f"{part_key(name)!r} is not a frame (dtype {arr.dtype}, stype {arr.stype})")
        frames[name] = bytes(arr.data)
    return PartsReply(frames, info)

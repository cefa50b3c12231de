"""Hostile replies for the Flower tests: one train reply of an honest ClientApp, made hostile in place.

:func:`make_hostile` rewrites the LoRA frame of the reply (version 2 of the ``fedsqueeze.frame`` layout,
so it passes the record checks and reaches the decoders) or breaks its records;
``tests/support/hostile_app.py`` does it on a real SuperNode, the fake-grid tests in-process. No tests here.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedsqueeze.codecs.dense import Identity
from fedsqueeze.flower.frames import META_KEY, frame_array, part_key
from fedsqueeze.spec import UpdateSpec
from fedsqueeze.wire.frame import pack_frame

# What reaches the decoders (the transport check passes), then what is malformed in the records.
FRAME_KINDS = ("garbage", "other-spec", "nan", "huge-norm")
RECORD_KINDS = ("bad-version", "wrong-round", "parts-as-text", "no-metrics", "nan-loss", "zero-examples")
# What the server's ``dropped`` reason says for each kind.
REASONS = {
    "garbage": "undecodable",
    "other-spec": "undecodable",
    "nan": "undecodable",  # the decoder refuses non-finite values (screen_replies checks again)
    "huge-norm": "x median",
    "bad-version": "frame record version",
    "wrong-round": "expected",
    "parts-as-text": "not a JSON list",
    "no-metrics": "lacks record",
    "nan-loss": "train-loss must be a finite number",
    "zero-examples": "num-examples must be > 0",
}


def hostile_lora(kind: str, spec: UpdateSpec, honest: bytes) -> bytes:
    """A LoRA frame of ``kind`` (one of :data:`FRAME_KINDS`) for a server expecting ``spec``."""
    if kind == "garbage":
        rng = np.random.default_rng(len(honest))
        return rng.integers(0, 256, size=max(len(honest), 64), dtype=np.uint8).tobytes()
    if kind == "other-spec":  # a valid frame, but of another model's tensors
        return Identity().encode({"not.this.model": torch.ones(7, 3)})
    if kind == "nan":  # a well-formed identity frame whose values are NaN
        body = np.full(spec.numel, np.nan, dtype="<f4").view("<i4").tobytes()
        return pack_frame(Identity.codec_id, spec, 0, body)
    if kind == "huge-norm":  # a valid, finite frame of the right spec, 1e6 per coordinate
        return Identity().encode_with_spec(torch.full((spec.numel,), 1e6), spec)
    raise ValueError(kind)


def make_hostile(reply: Message, kind: str, spec: UpdateSpec) -> Message:
    """Make ``reply`` (an honest train reply) hostile in place; returns it."""
    content = reply.content
    meta = dict(content.config_records[META_KEY])
    key = str(meta["record"])
    parts = json.loads(str(meta["parts"]))
    if kind in FRAME_KINDS:
        record = dict(content.array_records[key].items())
        record[part_key("lora")] = frame_array(hostile_lora(kind, spec, bytes(record[part_key("lora")].data)))
        content.array_records[key] = ArrayRecord(record)
    elif kind == "bad-version":
        meta["version"] = 99
    elif kind == "wrong-round":
        parts[0]["round"] = int(parts[0]["round"]) + 1
    elif kind == "parts-as-text":
        meta["parts"] = "lora and head"
    elif kind == "no-metrics":
        del content.metric_records["metrics"]
    elif kind == "nan-loss":
        metrics = dict(content.metric_records["metrics"])
        content.metric_records["metrics"] = MetricRecord({**metrics, "train-loss": float("nan")})
    elif kind == "zero-examples":
        metrics = dict(content.metric_records["metrics"])
        content.metric_records["metrics"] = MetricRecord({**metrics, "num-examples": 0})
    else:
        raise ValueError(kind)
    if kind == "wrong-round":
        meta["parts"] = json.dumps(parts)
    content.config_records[META_KEY] = ConfigRecord(meta)
    return reply

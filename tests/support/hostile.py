"""Hostile replies for the Flower tests: one train reply of an honest ClientApp, made hostile in place.

:func:`make_hostile` rewrites the reply's LoRA payload (and fixes up its SHA-256/length so it passes the
transport check and reaches the decoders) or breaks its records; ``tests/support/hostile_app.py`` does it
on a real SuperNode, the fake-grid tests in-process. No tests here.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedsqueeze.codecs.dense import Identity
from fedsqueeze.flower.records import bytes_array, sha256
from fedsqueeze.spec import UpdateSpec
from fedsqueeze.wire.frame import pack_frame

# What reaches the decoders (the transport check passes), then what is malformed in the records.
FRAME_KINDS = ("garbage", "other-spec", "nan", "huge-norm")
RECORD_KINDS = ("bad-sha", "wrong-round", "client-as-text", "no-metrics", "nan-loss", "zero-examples")
# What the server's ``dropped`` reason says for each kind.
REASONS = {
    "garbage": "undecodable",
    "other-spec": "undecodable",
    "nan": "undecodable",  # the decoder refuses non-finite values (screen_replies checks again)
    "huge-norm": "x median",
    "bad-sha": "SHA-256/length",
    "wrong-round": "expected",
    "client-as-text": "client must be an integer",
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
    meta = content.config_records["meta"]
    if kind in FRAME_KINDS:
        blob = hostile_lora(kind, spec, bytes(content.array_records["payload"]["lora"].data))
        payload = content.array_records["payload"]
        content.array_records["payload"] = ArrayRecord({"lora": bytes_array(blob), "head": payload["head"]})
        meta["lora-sha256"], meta["lora-bytes"] = sha256(blob), len(blob)
    elif kind == "bad-sha":
        meta["lora-sha256"] = "0" * 64
    elif kind == "wrong-round":
        meta["server-round"] = int(meta["server-round"]) + 1
    elif kind == "client-as-text":
        meta["client"] = "zero"
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
    content.config_records["meta"] = ConfigRecord(dict(meta))
    return reply

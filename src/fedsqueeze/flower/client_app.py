"""The Flower ``ClientApp``: one SuperNode = one data partition (client id = ``partition-id``).

``train`` runs :func:`fedsqueeze.fl.client.client_step` (the very step and codec of ``fedsqueeze run``) from
the global frames it received and replies with the LoRA and head payloads as ``uint8`` arrays plus their
SHA-256. ``query`` tells the server which partition this node serves (how the server maps its seeded sample of
client ids onto Flower node ids).

Per-client error-feedback state (residual + codec state) survives across rounds:

* with ``state-dir`` in the SuperNode's ``--node-config``: in
  ``STATE_DIR/ef-<config digest>-run<run id>-p<id>.pt`` (atomic writes), so it also survives a SuperNode
  restart; every payload sent is also logged to ``STATE_DIR/sent.jsonl``;
* otherwise in ``context.state`` (in memory: lost if the SuperNode restarts; the client then starts again
  from a zero residual, like a new client).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..codecs import ErrorFeedback, decode_flat
from ..errors import ConfigError
from ..fl.checkpoint import atomic_write
from ..fl.client import client_step
from ..fl.seeding import derive_seed
from ..spec import UpdateSpec
from .env import apply_offline_env
from .records import array_bytes, blob_to_state, bytes_array, sha256, state_to_blob
from .settings import FlowerSettings, make_workload, settings_from_context

__all__ = ["app", "handle_query", "handle_train", "partition_id"]

log = logging.getLogger("fedsqueeze.flower")
STATE_KEY = "fedsqueeze-ef"

app = ClientApp()


def partition_id(context: Context) -> int:
    """This node's client id (``partition-id`` in ``--node-config``; set by Flower in simulation)."""
    pid = context.node_config.get("partition-id")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise ConfigError(f'start the SuperNode with --node-config "partition-id=<int>=0..N-1>", got {pid!r}')
    return pid


@app.query()
def handle_query(msg: Message, context: Context) -> Message:
    """Reply with this node's partition id and the digest of the run config it sees."""
    apply_offline_env()
    settings = settings_from_context(context.run_config)
    info = ConfigRecord({"partition-id": partition_id(context), "digest": settings.digest})
    return Message(RecordDict({"node": info}), reply_to=msg)


def _decode_tensors(frame: bytes, spec: UpdateSpec) -> dict[str, torch.Tensor]:
    flat = torch.zeros(0) if spec.numel == 0 else decode_flat(frame, spec)
    return {k: v.clone() for k, v in spec.unflatten(flat).items()}


def _state_file(context: Context, settings: FlowerSettings, client: int) -> Path | None:
    root = context.node_config.get("state-dir")
    if not root:
        return None
    return Path(str(root)) / f"ef-{settings.digest}-run{context.run_id}-p{client}.pt"


def _load_ef(context: Context, settings: FlowerSettings, client: int, ef: ErrorFeedback) -> str:
    path = _state_file(context, settings, client)
    blob: bytes | None = None
    if path is not None and path.is_file():
        blob, where = path.read_bytes(), "file"
    elif STATE_KEY in context.state.array_records:
        blob, where = array_bytes(context.state.array_records[STATE_KEY], "state"), "context"
    if blob is None:
        return "fresh"
    state = blob_to_state(blob)
    if state.get("digest") != settings.digest or state.get("client") != client:
        return "fresh"  # another run's or another partition's state: start clean
    ef.load_state_dict(state["ef"])
    return where


def _save_ef(context: Context, settings: FlowerSettings, client: int, ef: ErrorFeedback, rnd: int) -> None:
    blob = state_to_blob({"digest": settings.digest, "client": client, "round": rnd, "ef": ef.state_dict()})
    path = _state_file(context, settings, client)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))
    else:
        context.state.array_records[STATE_KEY] = ArrayRecord({"state": bytes_array(blob)})


def _log_sent(context: Context, row: dict[str, Any]) -> None:
    log.info("sent %s", row)
    root = context.node_config.get("state-dir")
    if root:
        path = Path(str(root)) / "sent.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


@app.train()
def handle_train(msg: Message, context: Context) -> Message:
    """Train this partition from the received global state and reply with the compressed update.

    Sets offline mode first (:func:`.env.apply_offline_env`), before the workload imports transformers.
    """
    apply_offline_env()
    t0 = time.perf_counter()
    settings = settings_from_context(context.run_config)
    req = msg.content.config_records["round"]
    if req["digest"] != settings.digest:
        raise ConfigError("the server's run config differs from this node's (config digest mismatch)")
    client, rnd = int(req["client"]), int(req["server-round"])
    if client != partition_id(context):
        raise ConfigError(f"asked to train client {client} on the node of partition {partition_id(context)}")
    cfg = settings.config
    wl = make_workload(settings)
    glob = msg.content.array_records["global"]
    lora = _decode_tensors(array_bytes(glob, "lora"), wl.lora_spec)
    head = _decode_tensors(array_bytes(glob, "head"), wl.head_spec)

    ef = ErrorFeedback(cfg.codec.build(), enabled=cfg.fl.error_feedback)
    state_from = _load_ef(context, settings, client, ef)
    seed = cfg.fl.seed
    rep = client_step(
        wl, client, lora, head, cfg.train, ef,
        train_seed=derive_seed(seed, rnd, client, "train"),
        encode_seed=derive_seed(seed, rnd, client, "encode"),
        train_head=wl.head_spec.numel > 0 and cfg.model.trains_head(rnd),
    )  # fmt: skip
    _save_ef(context, settings, client, ef, rnd)

    meta = {
        "client": client,
        "server-round": rnd,
        "lora-sha256": sha256(rep.lora_payload),
        "head-sha256": sha256(rep.head_payload),
        "lora-bytes": len(rep.lora_payload),
        "head-bytes": len(rep.head_payload),
        "state-from": state_from,
    }
    metrics = {
        "num-examples": rep.num_examples,
        "train-loss": rep.train_loss,
        "residual-norm": rep.residual_norm,
        "client-s": time.perf_counter() - t0,
    }
    if rep.rel_error is not None:
        metrics["rel-error"] = rep.rel_error
    _log_sent(context, {"run_id": context.run_id, **meta})
    content = RecordDict(
        {
            "payload": ArrayRecord(
                {"lora": bytes_array(rep.lora_payload), "head": bytes_array(rep.head_payload)}
            ),
            "metrics": MetricRecord(metrics),
            "meta": ConfigRecord(meta),
        }
    )
    return Message(content, reply_to=msg)

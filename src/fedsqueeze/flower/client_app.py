"""The Flower ``ClientApp``: one SuperNode = one data partition (client id = ``partition-id``).

The node trains on slice ``partition-id`` of the job's dataset, or with its own data (``data-path`` in its
node config, ``fedsqueeze flower supernode --data PATH``) on every row of that (:mod:`.node_data`).

``train`` rebuilds the global state from its downlink delivery (the dense state, or the delta frames it
missed added to the copy it holds; the head when it changed), checks it against the SHA-256 the server
sent, runs :func:`fedsqueeze.fl.client.client_step` (the very step and codec of ``fedsqueeze run``) and
replies with the LoRA and head payloads as ``uint8`` arrays plus their
SHA-256. ``query`` tells the server which partition this node serves (how the server maps its seeded sample of
client ids onto Flower node ids).

A node that cannot rebuild the state (it lost its copy, a frame is corrupt, the hash differs) refuses to
train and replies with an error; the server then resyncs it densely the next time it is sampled.

The app (:func:`client_app`) has ``downlink_mod`` and ``compress_mod`` in its mods. The messages above carry
no float arrays and pass both untouched; a stock Flower strategy's dense train message (``FedAdam``, a DP
wrapper, ... wrapped in :class:`~fedsqueeze.flower.Compressed`) goes to :func:`handle_stock_train`, whose
dense reply ``compress_mod`` compresses.

Per-client state (the error-feedback residual + codec state, and the downlink copy it holds) survives
across rounds:

* with a state dir (``state-dir`` in the SuperNode's ``--node-config``, else the run config's
  ``node-state-dir``/``p<id>``, which ``fedsqueeze flower simulate`` sets to ``OUT/nodes``): in
  ``STATE_DIR/ef-<state digest>-<job id>-p<id>-r<round>.pt`` (atomic writes), one version per round the
  node trained in, the newest :data:`KEEP_VERSIONS` kept. The job id comes with every train message (the
  ServerApp draws it when a job starts and keeps it in its checkpoint), so the files survive a SuperNode
  restart and a resumed job (a new ``flwr run``) finds them, while a new job starts clean. A train message
  of round ``r`` loads the newest version of a round before ``r``: a round that a resumed job replays
  (the server stopped after the nodes trained, before it checkpointed) starts from the same state as the
  first time, so the resumed job equals the uninterrupted one bit for bit. Every payload sent is also
  logged to ``STATE_DIR/sent.jsonl``;
* otherwise in ``context.state`` (in memory: lost if the SuperNode restarts and not carried over to a
  resumed job; the client then starts again from a zero residual, like a new client, and gets the dense
  state).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import ConfigRecordValues, MetricRecordValues
from flwr.common.constant import ErrorCode

from ..codecs import ErrorFeedback, decode_flat
from ..errors import ConfigError, FedsqueezeError, PayloadError
from ..fl.checkpoint import atomic_write
from ..fl.client import client_step
from ..fl.federation import trains_head
from ..fl.hooks import hooks_for
from ..seeding import derive_seed
from ..spec import UpdateSpec
from .env import apply_offline_env
from .node_data import NodeSettings, node_settings, node_workload
from .records import array_bytes, blob_to_state, bytes_array, sha256, state_to_blob
from .settings import FlowerSettings, make_workload

__all__ = ["KEEP_VERSIONS", "app", "client_app", "handle_query", "handle_train", "partition_id", "state_dir"]

log = logging.getLogger("fedsqueeze.flower")
STATE_KEY = "fedsqueeze-ef"
KEEP_VERSIONS = 2  # state versions a node keeps: the one a replayed round needs, and the newest
_JOB_ID = re.compile(r"[0-9a-f]{1,64}")


def partition_id(context: Context) -> int:
    """This node's client id (``partition-id`` in ``--node-config``; set by Flower in simulation)."""
    pid = context.node_config.get("partition-id")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise ConfigError(f'start the SuperNode with --node-config "partition-id=<int>=0..N-1>", got {pid!r}')
    return pid


def handle_query(msg: Message, context: Context) -> Message:
    """Reply with this node's partition id and the digest of the run config it sees."""
    apply_offline_env()
    settings = node_settings(context.run_config, context.node_config)
    pid = partition_id(context)
    durable = state_dir(context, settings, pid) is not None
    info = ConfigRecord({"partition-id": pid, "digest": settings.digest, "durable": durable})
    return Message(RecordDict({"node": info}), reply_to=msg)


def state_dir(context: Context, settings: FlowerSettings, client: int) -> Path | None:
    """Where this node keeps its state on disk: ``state-dir`` of its node config, else the run config's
    ``node-state-dir``/``p<client>``; ``None``: in ``context.state`` (memory)."""
    root = context.node_config.get("state-dir")
    if root:
        return Path(str(root))
    if settings.node_state_dir:
        return Path(settings.node_state_dir) / f"p{client}"
    return None


def _versions(root: Path, stem: str) -> dict[int, Path]:
    """round -> file of the state versions ``root`` holds for ``stem`` (``ef-<digest>-<job>-p<id>``)."""
    found = {}
    for path in root.glob(f"{stem}-r*.pt"):
        tail = path.name[len(stem) + 2 : -3]
        if tail.isdigit():
            found[int(tail)] = path
    return found


def _stem(settings: FlowerSettings, job: str, client: int) -> str:
    return f"ef-{settings.state_digest}-{job}-p{client}"


def _load_state(
    context: Context, settings: FlowerSettings, client: int, job: str, rnd: int
) -> tuple[dict[str, Any] | None, str]:
    """The newest state saved after a round before ``rnd`` (the state this round starts from)."""
    root = state_dir(context, settings, client)
    blob: bytes | None = None
    if root is not None:
        older = {r: p for r, p in _versions(root, _stem(settings, job, client)).items() if r < rnd}
        if older:
            blob, where = older[max(older)].read_bytes(), "file"
    elif STATE_KEY in context.state.array_records:
        blob, where = array_bytes(context.state.array_records[STATE_KEY], "state"), "context"
    if blob is None:
        return None, "fresh"
    state = blob_to_state(blob)
    key = (state.get("digest"), state.get("client"), state.get("job"))
    same = key == (settings.state_digest, client, job)
    if not same or int(state.get("round", 0)) >= rnd:
        return None, "fresh"  # another job's or another partition's state (or a later one): start clean
    return state, where


def _rebuild(
    glob: ArrayRecord, req: Any, wl: Any, held: dict[str, Any] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The global ``(lora, head)`` flats this delivery gives, checked by hash (else an error: no training),
    and its last delta frame decoded (``None`` for a dense delivery): a predictive uplink's reference."""
    from ..fl.server import state_sha256

    lspec, hspec = wl.lora_spec, wl.head_spec
    init_lora, init_head = (s.flatten(t) for s, t in zip((lspec, hspec), wl.initial_params(), strict=True))
    nframes, since = int(req["frames"]), int(req["since"])
    step = None
    if nframes < 0:
        lora = _flat(array_bytes(glob, "lora"), lspec)
    else:
        if since == 0:
            lora = init_lora  # every client can make the initial state
        elif held is not None and held.get("round") == since:
            lora = held["lora"]
        else:
            raise ConfigError(f"this node lacks the downlink state of round {since}; it needs a resync")
        for i in range(nframes):
            step = _flat(array_bytes(glob, f"lora-{i}"), lspec)
            lora = lora + step  # the server's own additions, in order
    if "head" in glob:
        head = _flat(array_bytes(glob, "head"), hspec)
    elif int(req["head-version"]) == 0:
        head = init_head
    elif held is not None and held.get("head_version") == int(req["head-version"]):
        head = held["head"]
    else:
        raise ConfigError("this node does not hold the current head; it needs a resync")
    if state_sha256(lora) != req["lora-sha256"] or state_sha256(head) != req["head-sha256"]:
        raise PayloadError("the rebuilt global state differs from the server's (SHA-256); refusing to train")
    return lora, head, step


def _own_data_hint(settings: FlowerSettings, wl: Any) -> str:
    """What to check when a node with its own classification data cannot rebuild the server's head."""
    classes = getattr(getattr(wl, "task", None), "num_classes", None)
    if not isinstance(settings, NodeSettings) or wl.head_spec.numel == 0 or classes is None:
        return ""
    return (
        f" (this node's own data has {classes} classes: its file must hold every label of the job, as the "
        "label ids are the sorted label values)"
    )


def _flat(frame: bytes, spec: UpdateSpec) -> torch.Tensor:
    return torch.zeros(0) if spec.numel == 0 else decode_flat(frame, spec)


def _save_state(
    context: Context,
    settings: FlowerSettings,
    client: int,
    job: str,
    ef: ErrorFeedback,
    rnd: int,
    held: dict[str, Any],
) -> None:
    """Save the state after round ``rnd`` as a new version; keep the newest :data:`KEEP_VERSIONS`."""
    state = {
        "digest": settings.state_digest, "client": client, "job": job, "round": rnd, "ef": ef.state_dict(),
        **held,
    }  # fmt: skip
    blob = state_to_blob(state)
    root = state_dir(context, settings, client)
    if root is None:
        context.state.array_records[STATE_KEY] = ArrayRecord({"state": bytes_array(blob)})
        return
    root.mkdir(parents=True, exist_ok=True)
    stem = _stem(settings, job, client)
    atomic_write(root / f"{stem}-r{rnd}.pt", lambda tmp: Path(tmp).write_bytes(blob))
    versions = _versions(root, stem)
    for r in sorted(versions)[:-KEEP_VERSIONS]:
        versions[r].unlink(missing_ok=True)


def _log_sent(context: Context, settings: FlowerSettings, client: int, row: dict[str, Any]) -> None:
    log.info("sent %s", row)
    root = state_dir(context, settings, client)
    if root is not None:
        path = root / "sent.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def handle_train(msg: Message, context: Context) -> Message:
    """Train this partition from the received global state and reply with the compressed update.

    A message of fedsqueeze's own strategy (:class:`~.job_strategy.FederationStrategy`: a ``"round"``
    ConfigRecord and the ``"global"`` delivery) gets the job's reply; any other train message is a stock
    Flower strategy's (:func:`handle_stock_train`). Sets offline mode first (:func:`.env.apply_offline_env`),
    before the workload imports transformers.
    """
    apply_offline_env()
    t0 = time.perf_counter()
    settings = node_settings(context.run_config, context.node_config)
    if "round" not in msg.content.config_records or "global" not in msg.content.array_records:
        return handle_stock_train(msg, context, settings)
    req: Mapping[str, Any] = msg.content.config_records["round"]  # the server's values, checked below
    if req["digest"] != settings.digest:
        raise ConfigError("the server's run config differs from this node's (config digest mismatch)")
    client, rnd, job = int(req["client"]), int(req["server-round"]), str(req.get("job-id", ""))
    if not _JOB_ID.fullmatch(job):
        raise ConfigError(f"the train message has no valid job-id (got {job!r}); is the server older?")
    if client != partition_id(context):
        raise ConfigError(f"asked to train client {client} on the node of partition {partition_id(context)}")
    cfg = settings.config
    wl = node_workload(settings, client) if isinstance(settings, NodeSettings) else make_workload(settings)
    codec = None
    for hook in hooks_for(cfg):  # the phases before the rounds (TGAP) changed the rounds' workload or codec
        wl, changed = hook.for_client(wl, req)
        codec = changed if changed is not None else codec
    glob = msg.content.array_records["global"]
    state, state_from = _load_state(context, settings, client, job, rnd)
    held = None if state is None else state.get("held")
    try:
        lora_flat, head_flat, reference = _rebuild(glob, req, wl, held)
    except FedsqueezeError as exc:  # never train on a state that is not the server's: say so instead
        reason = str(exc) + (_own_data_hint(settings, wl) if isinstance(exc, PayloadError) else "")
        log.warning("round %s: refusing to train client %s: %s", rnd, client, reason)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
    lora, head = wl.lora_spec.unflatten(lora_flat), wl.head_spec.unflatten(head_flat)

    ef = ErrorFeedback(codec if codec is not None else cfg.codec.build(), enabled=cfg.fl.error_feedback)
    if state is not None:
        ef.load_state_dict(state["ef"])
    seed = cfg.fl.seed
    rep = client_step(
        wl, client, lora, head, cfg.train, ef,
        train_seed=derive_seed(seed, rnd, client, "train"),
        encode_seed=derive_seed(seed, rnd, client, "encode"),
        train_head=trains_head(cfg, wl, rnd),
        reference=reference,  # the last delta frame received: the server predicts from the same one
    )  # fmt: skip
    version = int(req["head-version"])
    copy = {"round": rnd, "lora": lora_flat.clone(), "head": head_flat.clone(), "head_version": version}
    _save_state(context, settings, client, job, ef, rnd, {"held": copy})

    meta: dict[str, ConfigRecordValues] = {
        "client": client,
        "server-round": rnd,
        "lora-sha256": sha256(rep.lora_payload),
        "head-sha256": sha256(rep.head_payload),
        "lora-bytes": len(rep.lora_payload),
        "head-bytes": len(rep.head_payload),
        "state-from": state_from,
    }
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": rep.num_examples,
        "train-loss": rep.train_loss,
        "residual-norm": rep.residual_norm,
        "client-s": time.perf_counter() - t0,
    }
    if rep.rel_error is not None:
        metrics["rel-error"] = rep.rel_error
    _log_sent(context, settings, client, {"run_id": context.run_id, "job-id": job, **meta})
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


def handle_stock_train(msg: Message, context: Context, settings: FlowerSettings) -> Message:
    """Train this partition on the dense arrays a stock Flower strategy sent (``FedAvg``, ``FedAdam``, a DP
    wrapper, ...) and reply with the trained arrays, under the same keys, plus ``num-examples`` and
    ``train-loss``.

    The message holds one ArrayRecord with the ``lora.<name>`` and ``head.<name>`` arrays
    (:meth:`~.job_strategy.FederationStrategy.global_arrays`; other arrays pass through) and the strategy's
    ConfigRecord (``server-round``). The seeds are the engine's for this partition and round. The reply is
    dense: ``compress_mod`` (in :func:`client_app`'s mods) turns it into a frame of the codec that
    ``Compressed`` names, and ``downlink_mod`` has rebuilt a compressed downlink before this runs.
    """
    t0 = time.perf_counter()
    cfg, client = settings.config, partition_id(context)
    if hooks_for(cfg):
        return _refuse(msg, "the phases before the rounds (TGAP) need fedsqueeze's own strategy")
    if len(msg.content.array_records) != 1:
        return _refuse(msg, f"expected one ArrayRecord, got {len(msg.content.array_records)}")
    ((key, record),) = msg.content.array_records.items()
    rnd = 0
    for conf in msg.content.config_records.values():
        said = conf.get("server-round")
        if isinstance(said, int) and not isinstance(said, bool):
            rnd = said
    wl = node_workload(settings, client) if isinstance(settings, NodeSettings) else make_workload(settings)
    try:
        lora = _tensors(record, "lora.", wl.lora_spec)
        head = _tensors(record, "head.", wl.head_spec)
    except FedsqueezeError as exc:
        return _refuse(msg, str(exc))
    new_lora, new_head, loss = wl.train_client(
        client, dict(lora), dict(head), cfg.train,
        seed=derive_seed(cfg.fl.seed, rnd, client, "train") & ((1 << 63) - 1),
        train_head=trains_head(cfg, wl, rnd),
    )  # fmt: skip
    trained = {f"lora.{k}": v for k, v in new_lora.items()} | {f"head.{k}": v for k, v in new_head.items()}
    out: dict[str, Array] = {}
    for name, arr in record.items():  # same keys and order; each array back in the dtype it came in
        value = trained.get(name)
        out[name] = arr if value is None else Array(value.detach().cpu().numpy().astype(arr.dtype))
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": int(wl.client_num_examples(client)),
        "train-loss": float(loss),
        "client-s": time.perf_counter() - t0,
    }
    return Message(RecordDict({key: ArrayRecord(out), "metrics": MetricRecord(metrics)}), reply_to=msg)


def _tensors(record: ArrayRecord, prefix: str, spec: UpdateSpec) -> dict[str, torch.Tensor]:
    """The tensors of ``spec`` under ``prefix`` in ``record``, as float32; :class:`~fedsqueeze.PayloadError`
    when one is missing or of another shape."""
    out = {}
    for name, shape in spec.entries:
        arr = record.get(prefix + name)
        if arr is None or tuple(arr.shape) != tuple(shape):
            raise PayloadError(f"the train message lacks the array {prefix + name!r} of shape {tuple(shape)}")
        out[name] = torch.from_numpy(np.array(arr.numpy(), dtype=np.float32, copy=True))
    return out


def _refuse(msg: Message, reason: str) -> Message:
    log.warning("refusing to train: %s", reason)
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)


def client_app(*mods: Any) -> ClientApp:
    """fedsqueeze's ClientApp: ``downlink_mod`` and ``compress_mod``, then ``mods`` (e.g. Flower's
    ``fixedclipping_mod``, which must run before the update is compressed), around :func:`handle_train`
    and :func:`handle_query`.

    Messages of fedsqueeze's own strategy carry their frames already and pass both mods untouched; a stock
    strategy wrapped in :class:`~fedsqueeze.flower.Compressed` gets compressed replies (and, with its
    ``downlink=``, sends a compressed downlink).
    """
    from .mods import compress_mod, downlink_mod

    built = ClientApp(mods=[downlink_mod(), compress_mod(), *mods])
    built.train()(handle_train)
    built.query()(handle_query)
    return built


app = client_app()

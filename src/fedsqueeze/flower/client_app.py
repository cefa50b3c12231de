"""The Flower ``ClientApp``: one SuperNode = one data partition (client id = ``partition-id``).

The node trains on slice ``partition-id`` of the job's dataset, or with its own data (``data-path`` in its
node config, ``fedsqueeze flower supernode --data PATH``) on every row of that (:mod:`.node_data`).

A train message of fedsqueeze's own strategy holds the node's downlink delivery in the drop-in's layout
(:mod:`.downlink`, version 2: the dense state, or the delta frames it missed; the head when it changed).
``downlink_mod`` (with :func:`initial_copy`: frames since round 0 apply to the seeded initial state) rebuilds
it into dense ``lora.*`` / ``head.*`` arrays and checks the SHA-256 the server sent; :func:`handle_train` then
trains with the engine's seeds and replies densely, and ``compress_mod`` codes the reply in parts
(``fedsqueeze.frame`` version 2: the LoRA update with the job's codec and error feedback, byte for byte the
frame of :func:`fedsqueeze.fl.client.client_step`; the head's update densely), which
:class:`~fedsqueeze.flower.Compressed` hands intact to the job's strategy. :func:`sent_log_mod` logs every
frame sent. ``query`` tells the server which partition this node serves (how the server maps
its seeded sample of client ids onto Flower node ids).

A node that cannot rebuild the state (it lost its copy, a frame is corrupt, the hash differs) refuses to
train: ``downlink_mod`` replies with an error, and the server resyncs it densely the next time it is sampled.
A stock Flower strategy's dense train message (``FedAdam``, a DP wrapper, ... wrapped in
:class:`~fedsqueeze.flower.Compressed`) goes to :func:`handle_stock_train`, whose dense reply
``compress_mod`` compresses.

Per-client state (the error-feedback residual + codec state, and the downlink copy) is one versioned
:class:`~.store.StateStore` (:func:`job_store`), one version per round the node trained in, the newest
:data:`KEEP_VERSIONS` kept:

* with a state dir (``state-dir`` in the SuperNode's ``--node-config``, else the run config's
  ``node-state-dir``/``p<id>``, which ``fedsqueeze flower simulate`` sets to ``OUT/nodes``): in
  ``STATE_DIR/<part>-<state digest>-<job id>-p<id>-r<round>.pt`` (``ef`` and ``downlink``; atomic writes).
  The job id comes with every train message (the ServerApp draws it when a job starts and keeps it in its
  checkpoint), so the files survive a SuperNode restart and a resumed job (a new ``flwr run``) finds them,
  while a new job starts clean. A train message of round ``r`` loads the newest version of a round before
  ``r``: a round that a resumed job replays (the server stopped after the nodes trained, before it
  checkpointed) starts from the same state as the first time, so the resumed job equals the uninterrupted
  one bit for bit. Every payload sent is also logged to ``STATE_DIR/sent.jsonl``;
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
from flwr.common import MetricRecordValues
from flwr.common.constant import ErrorCode

from ..errors import ConfigError, FedsqueezeError, PayloadError
from ..fl.federation import at_rate, trains_head
from ..fl.hooks import hooks_for
from ..seeding import derive_seed
from ..spec import UpdateSpec
from .downlink import DOWN_META_KEY, Layout
from .env import apply_offline_env
from .frames import read_parts_reply, read_parts_round
from .job_strategy import ARRAYS_KEY, CONFIG_KEY
from .node_data import NodeSettings, node_settings, node_workload
from .records import sha256
from .settings import FlowerSettings, make_workload
from .store import KEEP_VERSIONS, StateStore

__all__ = [
    "KEEP_VERSIONS",
    "app",
    "client_app",
    "client_mods",
    "handle_query",
    "handle_train",
    "initial_copy",
    "job_store",
    "partition_id",
    "state_dir",
]

log = logging.getLogger("fedsqueeze.flower")
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


def _job_config(msg: Message) -> Mapping[str, Any] | None:
    """The job's ConfigRecord of a train message of fedsqueeze's own strategy (``None``: another one's)."""
    conf = msg.content.config_records.get(CONFIG_KEY)
    return conf if conf is not None and "job-id" in conf else None


def job_store(msg: Message, context: Context) -> StateStore:
    """The store of this node's state for a train message (the ``store=`` of both mods): for fedsqueeze's
    job, the versions of this job and partition, in the node's state dir (:func:`state_dir`) when it has
    one; ``context.state`` otherwise, and for a stock strategy's messages."""
    conf = _job_config(msg)
    if conf is None:
        return StateStore(context)
    job = str(conf.get("job-id", ""))
    if not _JOB_ID.fullmatch(job):
        raise ConfigError(f"the train message has no valid job-id (got {job!r}); is the server older?")
    settings = node_settings(context.run_config, context.node_config)
    client = partition_id(context)
    return StateStore(
        context, state_dir(context, settings, client), f"{settings.state_digest}-{job}-p{client}"
    )


def _job_workload(settings: FlowerSettings, client: int, conf: Mapping[str, Any]) -> tuple[Any, Any]:
    """The rounds' workload of this client and the uplink codec the phases before the rounds set (or
    ``None``: the config's)."""
    wl = node_workload(settings, client) if isinstance(settings, NodeSettings) else make_workload(settings)
    codec = None
    for hook in hooks_for(
        settings.config
    ):  # the phases before the rounds (TGAP) changed the workload or codec
        wl, changed = hook.for_client(wl, conf)
        codec = changed if changed is not None else codec
    return wl, codec


def initial_copy(msg: Message, context: Context) -> dict[str, Any]:
    """The round-0 downlink copy every node of the job can make (``downlink_mod``'s ``initial=``): the
    seeded initial LoRA and head, head version 0.

    Raises
    ------
    PayloadError
        The server's layout is not this node's (another model, or own data with other labels).
    """
    conf = _job_config(msg)
    if conf is None:
        raise PayloadError("this train message is not fedsqueeze's job's: there is no initial state")
    settings = node_settings(context.run_config, context.node_config)
    wl, _ = _job_workload(settings, partition_id(context), conf)
    layout = Layout.of_specs(wl.lora_spec, wl.head_spec)
    if msg.content.config_records[DOWN_META_KEY].get("layout-digest") != layout.digest:
        raise PayloadError(
            "the server's model (LoRA and head shapes) is not this node's" + _own_data_hint(settings, wl)
        )
    lora, head = wl.initial_params()
    return {
        "round": 0, "theta": wl.lora_spec.flatten(lora), "layout": layout.to_json(),
        "layout-digest": layout.digest, "head": wl.head_spec.flatten(head), "head-version": 0,
    }  # fmt: skip


def _own_data_hint(settings: FlowerSettings, wl: Any) -> str:
    """What to check when a node with its own classification data cannot rebuild the server's head."""
    classes = getattr(getattr(wl, "task", None), "num_classes", None)
    if not isinstance(settings, NodeSettings) or wl.head_spec.numel == 0 or classes is None:
        return ""
    return (
        f" (this node's own data has {classes} classes: its file must hold every label of the job, as the "
        "label ids are the sorted label values)"
    )


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

    A message of fedsqueeze's own strategy (:class:`~.job_strategy.FederationStrategy`: a ``"config"``
    ConfigRecord with a ``job-id``, and the ``"arrays"`` that ``downlink_mod`` rebuilt) trains with the
    engine's seeds and replies densely (``compress_mod`` codes it in parts, version 2); any other train
    message is a stock Flower strategy's (:func:`handle_stock_train`). Sets offline mode first
    (:func:`.env.apply_offline_env`), before the workload imports transformers.
    """
    apply_offline_env()
    t0 = time.perf_counter()
    settings = node_settings(context.run_config, context.node_config)
    req = _job_config(msg)
    if req is None:
        return handle_stock_train(msg, context, settings)
    if DOWN_META_KEY in msg.content.config_records:
        return _refuse(msg, "the train message's delivery was not rebuilt: the ClientApp needs downlink_mod")
    if req.get("digest") != settings.digest:
        raise ConfigError("the server's run config differs from this node's (config digest mismatch)")
    client, rnd = int(req["client"]), int(req["server-round"])
    if client != partition_id(context):
        raise ConfigError(f"asked to train client {client} on the node of partition {partition_id(context)}")
    job_store(msg, context)  # checks the job id
    cfg = settings.config
    wl, _ = _job_workload(settings, client, req)
    try:
        record = msg.content.array_records[ARRAYS_KEY]
        lora, head = _tensors(record, "lora.", wl.lora_spec), _tensors(record, "head.", wl.head_spec)
    except (KeyError, FedsqueezeError) as exc:
        return _refuse(msg, f"the rebuilt train message lacks its arrays ({exc})")
    new_lora, new_head, loss = wl.train_client(
        client, dict(lora), dict(head), cfg.train,
        seed=derive_seed(cfg.fl.seed, rnd, client, "train") & ((1 << 63) - 1),
        train_head=trains_head(cfg, wl, rnd),
    )  # fmt: skip
    return _dense_reply(msg, ARRAYS_KEY, record, new_lora, new_head, wl, client, loss, t0)


def _dense_reply(
    msg: Message,
    key: str,
    record: ArrayRecord,
    new_lora: Mapping[str, torch.Tensor],
    new_head: Mapping[str, torch.Tensor],
    wl: Any,
    client: int,
    loss: float,
    t0: float,
) -> Message:
    """The trained arrays under the received keys and in their dtypes (other arrays pass through), plus
    ``num-examples``, ``train-loss`` and ``client-s``; ``compress_mod`` turns it into frames."""
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
    return _dense_reply(msg, key, record, new_lora, new_head, wl, client, loss, t0)


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


def _job_codec(msg: Message, context: Context, part: str) -> Any:
    """``compress_mod``'s ``codec_for``: the job's LoRA codec (the config's, or the one the phases before the
    rounds made, e.g. with TGAP's trained model) at the round's rate of ``fl.uplink_rates``; ``None`` for the
    other parts (built from the message)."""
    conf = _job_config(msg)
    if conf is None or part != "lora":
        return None
    settings = node_settings(context.run_config, context.node_config)
    _, codec = _job_workload(settings, partition_id(context), conf)
    codec = codec if codec is not None else settings.config.codec.build()
    rnd = read_parts_round(msg.content)  # compress_mod has checked the parts; only the round matters here
    rate = None if rnd is None else settings.config.uplink_rate(rnd)
    return codec if rate is None else at_rate(codec, rate)


def sent_log_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Log every frame a job's reply carries (and append it to ``STATE_DIR/sent.jsonl`` when the node has a
    state dir): what the server must have decoded."""
    conf = _job_config(msg)
    reply = call_next(msg, context)
    if conf is None or reply.has_error() or msg.metadata.message_type.split(".", 1)[0] != "train":
        return reply
    try:
        parts = read_parts_reply(reply.content)
    except FedsqueezeError:
        return reply
    row: dict[str, Any] = {
        "run_id": context.run_id, "job-id": conf.get("job-id"), "client": conf.get("client"),
        "server-round": conf.get("server-round"),
    }  # fmt: skip
    for name, frame in parts.frames.items():
        row.update({f"{name}-sha256": sha256(frame), f"{name}-bytes": len(frame)})
    row["state-from"] = parts.info.get("lora", {}).get("state-from")
    settings = node_settings(context.run_config, context.node_config)
    _log_sent(context, settings, partition_id(context), row)
    return reply


def client_mods() -> list[Any]:
    """fedsqueeze's ClientApp mods: the sent log, ``downlink_mod`` (with the round-0 copy and the node's
    store) and ``compress_mod`` (with the same store and the job's LoRA codec)."""
    from .mods import compress_mod, downlink_mod

    return [
        sent_log_mod,
        downlink_mod(initial=initial_copy, store=job_store),
        compress_mod(store=job_store, codec_for=_job_codec),
    ]


def client_app(*mods: Any) -> ClientApp:
    """fedsqueeze's ClientApp: ``downlink_mod`` and ``compress_mod``, then ``mods`` (e.g. Flower's
    ``fixedclipping_mod``, which must run before the update is compressed), around :func:`handle_train`
    and :func:`handle_query`.

    ``downlink_mod`` rebuilds every compressed delivery (fedsqueeze's own strategy's, and a stock strategy's
    wrapped in :class:`~fedsqueeze.flower.Compressed` with a ``downlink=``), and ``compress_mod`` compresses
    every dense reply: in parts (version 2) for fedsqueeze's own strategy, in one frame for a stock one.
    """
    built = ClientApp(mods=[*client_mods(), *mods])
    built.train()(handle_train)
    built.query()(handle_query)
    return built


app = client_app()

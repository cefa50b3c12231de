"""fedsqueeze's own server strategy: the :class:`~fedsqueeze.fl.federation.Federation` core as a Flower
``Strategy``.

:meth:`FederationStrategy.configure_train` asks the core for the round's plan
(:meth:`~fedsqueeze.fl.federation.Federation.configure_round`: the engine's seeded sampling and the downlink
:class:`~fedsqueeze.fl.server.Delivery` of each sampled client), maps client ids to SuperNodes by
``partition-id`` (asked once per node with a ``query`` message) and builds one train message per node in the
drop-in's downlink layout (:mod:`.downlink`, version 2): an ``"arrays"`` ArrayRecord with the delta frames it
missed, or the dense state, and the head's frame when its copy is stale; the ``"fedsqueeze.downlink"``
ConfigRecord with the SHA-256 of the state and head they must rebuild; and a ``"config"`` ConfigRecord with
the job's fields (``server-round``, ``client``, ``digest``, ``job-id``, what the phases before the rounds tell
the clients). The ClientApp's ``downlink_mod`` rebuilds it (:func:`.downlink.rebuild`).
:meth:`FederationStrategy.aggregate_train` reads the replies (untrusted: anything malformed is dropped with
its reason, :func:`read_reply`) and hands them to :meth:`~fedsqueeze.fl.federation.Federation.finish_round`
(screening, robust aggregation, server momentum, ledger, health, evaluation); it returns the global state and
the round's scalar metrics, and keeps the row in :attr:`FederationStrategy.last_row`. A client that errs or
does not reply may hold a stale copy, so it gets a dense resync the next time it is sampled. Evaluation is the
server's (``fl.eval_every``), so ``configure_evaluate`` sends nothing.

The outer loop (checkpoint, resume, hooks, outputs) is :func:`fedsqueeze.fl.driver.drive`; the transport
between the two train calls is ``grid.send_and_receive`` (:mod:`.server_app`).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import ConfigRecordValues, MetricRecordValues
from flwr.serverapp.strategy import Strategy

from ..errors import ConfigError, FedsqueezeError, PayloadError, UsageError
from ..fl.client import ClientReply
from ..fl.console import round_line
from ..fl.federation import Federation, RoundPlan, trains_head
from ..fl.hooks import RunContext
from ..fl.server import state_sha256
from ..seeding import derive_seed
from .binding import PartitionBinding
from .downlink import DOWN_META_KEY, Layout, frame_arrays, pack_delivery
from .frames import PARTS_KEY, SEED_KEY, read_parts_reply
from .settings import FlowerSettings, make_workload

__all__ = ["ARRAYS_KEY", "CONFIG_KEY", "FederationStrategy", "GridLike", "binding_of", "read_reply"]

ARRAYS_KEY, CONFIG_KEY = (
    "arrays",
    "config",
)  # a train message's records (as a stock Flower strategy names them)

log = logging.getLogger("fedsqueeze.flower")


class GridLike(Protocol):
    """The part of ``flwr.serverapp.Grid`` the strategy and the loop use (tests pass a fake)."""

    def get_node_ids(self) -> Iterable[int]: ...

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]: ...


class _NodeMap:
    """partition id -> Flower node id, learned by asking every new node (``query`` message).

    With a :class:`~.binding.PartitionBinding` on, a claim counts only from the identity the partition belongs
    to; refused claims wait in :attr:`refused` (``{"client", "node", "reason"}``) for the round's ``dropped``.
    A node that went offline is asked again when it comes back."""

    def __init__(self, digest: str, n: int, binding: PartitionBinding | None = None) -> None:
        self.digest, self.n = digest, n
        self.binding = binding or PartitionBinding()
        self.by_partition: dict[int, int] = {}
        self.durable: dict[int, bool] = {}  # partition -> its node keeps its state on disk
        self.rejected: set[int] = set()
        self.refused: list[dict[str, Any]] = []

    def refresh(self, grid: GridLike, timeout: float) -> list[int]:
        """Map the nodes not seen yet; returns the partitions (re)mapped to a new node."""
        live = set(grid.get_node_ids())
        self.by_partition = {p: n for p, n in self.by_partition.items() if n in live}
        self.rejected &= live  # a node that restarts is asked again
        new = sorted(live - set(self.by_partition.values()) - self.rejected)
        if not new:
            return []
        keys = _public_keys(grid, new) if self.binding.enabled else {}
        mapped = []
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
        for rep in grid.send_and_receive(msgs, timeout=timeout):
            node = rep.metadata.src_node_id
            if node not in new:
                continue
            if rep.has_error() or "node" not in rep.content.config_records:
                continue  # try again next round
            pid = self._claim(node, rep.content.config_records["node"], keys.get(node, b""))
            if pid is not None:
                mapped.append(pid)
        return mapped

    def _claim(self, node: int, info: ConfigRecord, public_key: bytes) -> int | None:
        """Map ``node`` to the partition its ``query`` reply claims; ``None`` if the claim does not count."""
        if info.get("digest") != self.digest:
            log.warning("node %s runs another config (digest %s); ignoring it", node, info.get("digest"))
            self.rejected.add(node)
            return None
        pid = info.get("partition-id")
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < self.n:
            log.warning("node %s serves no partition of 0..%d (%r); ignoring it", node, self.n - 1, pid)
            self.rejected.add(node)
            return None
        reason = self.binding.admit(node, public_key, pid)
        if reason is not None:
            log.warning("refused a partition claim: %s", reason)
            self.refused.append({"client": pid, "node": node, "reason": f"claim refused: {reason}"})
            self.rejected.add(node)
            return None
        self.by_partition[pid] = node  # without a binding, a restarted node replaces the old id
        self.durable[pid] = info.get("durable") is True
        return pid

    def take_refused(self) -> list[dict[str, Any]]:
        """The claims refused since the last call (for the round's ``dropped``)."""
        out, self.refused = self.refused, []
        return out


def _public_keys(grid: GridLike, nodes: Iterable[int]) -> dict[int, bytes]:
    """Node id -> its public key as the SuperLink registered it (``grid.get_nodes()``: Flower's ``NodeInfo``;
    empty for a grid without it)."""
    get_nodes = getattr(grid, "get_nodes", None)
    if get_nodes is None:
        return {}
    want = set(nodes)
    return {int(info.node_id): bytes(info.public_key) for info in get_nodes() if info.node_id in want}


def binding_of(settings: FlowerSettings) -> PartitionBinding:
    """The job's partition binding: ``partition-map``, else ``bind-partitions`` (first contact), else off."""
    return PartitionBinding(settings.bind_partitions, settings.partition_entries)


class FederationStrategy(Strategy):
    """fedsqueeze's server as a Flower ``Strategy`` over the :class:`~fedsqueeze.fl.federation.Federation`
    core; raw updates never leave the clients (``raw_updates=False``).

    It decodes the replies' frames itself (``decodes_frames``: screening decodes each frame once), so
    :class:`~fedsqueeze.flower.Compressed` hands them over intact; the job's ServerApp is
    ``Compressed(FederationStrategy(...), codec=None)``.

    Parameters
    ----------
    settings
        The job's settings (config, workload, round timeout).
    ctx
        The run context after the phases before the rounds (:mod:`fedsqueeze.fl.hooks`): the rounds'
        workload, uplink codec and what the clients must be told (``client_config``). ``None``: the
        settings' workload and ``config.codec``.

    Attributes
    ----------
    fed
        The federation core (its ``rows``, ``ledger``, global state).
    last_row
        The ``metrics.jsonl`` row of the last aggregated round.
    """

    decodes_frames = True  # Compressed passes the replies' frames through (version 2, in parts)

    def __init__(self, settings: FlowerSettings, ctx: RunContext | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.config = settings.config
        self.wl = ctx.workload if ctx is not None else make_workload(settings)
        codec = ctx.codec if ctx is not None else None  # a phase of the run (TGAP) may set the uplink codec
        self.fed = Federation(self.config, self.wl, codec=codec, raw_updates=False, logger=log)
        self.layout = Layout.of_specs(self.wl.lora_spec, self.wl.head_spec)  # the train messages' arrays
        self.nodes = _NodeMap(settings.digest, self.fed.n, binding_of(settings))
        self.job_id = secrets.token_hex(8)  # what the nodes key their state by; kept in the checkpoint
        self.resumed = False
        # what the phases before the rounds tell every client (sent with each train message)
        self.client_config: dict[str, str] = dict(ctx.client_config) if ctx is not None else {}
        self.last_row: dict[str, Any] | None = None
        self._round: tuple[RoundPlan, dict[int, int], list[dict[str, Any]], list[Message]] | None = None

    def summary(self) -> None:
        """Log the federation's settings."""
        fl = self.config.fl
        log.info("fedsqueeze federation: %s, %d of %d clients per round, aggregation %s, server momentum %s",
                 self.config.codec.name, fl.clients_per_round, self.fed.n, fl.aggregation,
                 fl.server_momentum)  # fmt: skip

    # -- checkpoint --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the federation's state plus the job's Flower part (``"flower"``)."""
        flower = {
            "job_id": self.job_id,
            "workload": self.settings.workload,
            "partition_keys": self.nodes.binding.state_dict(),  # the bound partitions stay bound on resume
        }
        return {**self.fed.state_dict(), "flower": flower}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (:class:`~fedsqueeze.ConfigError` if it is not this job's)."""
        flower = state.get("flower")
        if not isinstance(flower, dict):
            raise ConfigError(
                "the checkpoint was written by `fedsqueeze run`, not a Flower job; continue it with "
                "`fedsqueeze run --resume`"
            )
        if flower.get("workload") != self.settings.workload:
            raise ConfigError(
                f"--resume with another workload ({self.settings.workload!r}, the run used "
                f"{flower.get('workload')!r})"
            )
        self.fed.load_state_dict(dict(state))
        self.job_id, self.resumed = str(flower["job_id"]), True
        self.nodes.binding.load_state_dict(flower.get("partition_keys") or {})

    # -- training ----------------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any
    ) -> Iterable[Message]:
        """One train message per sampled client that a SuperNode serves, holding exactly its delivery.

        ``arrays`` and ``config`` are not used: the global state lives in the core, which decides what each
        client downloads."""
        r, timeout = server_round, self.settings.round_timeout
        for c in self.nodes.refresh(grid, timeout):
            if self.resumed and not self.nodes.durable[c]:
                self.fed.downlink.lost(c)  # its state did not survive the restart: resync it densely
        plan = self.fed.configure_round(r)
        wl, downlink = self.wl, self.fed.downlink
        # Each client gets exactly the bytes the ledger charges it, and the hashes of what they rebuild.
        common: dict[str, Any] = {
            "record": ARRAYS_KEY,
            "protocol": downlink.protocol,
            "round": r,
            "sha256": state_sha256(wl.lora_spec.flatten(plan.lora)),
            "head-version": downlink.head_version,
            "head-sha256": state_sha256(wl.head_spec.flatten(plan.head)),
        }
        array_of = frame_arrays()  # a frame sent to several clients is one Array
        parts = json.dumps(self.parts(r))
        dropped = self.nodes.take_refused()  # claims of partitions that belong to another node
        msgs, node_of = [], {}
        for c in plan.clients:
            node = self.nodes.by_partition.get(c)
            if node is None:
                dropped.append({"client": c, "reason": "no SuperNode serves this partition"})
                continue
            node_of[node] = c
            delivery = downlink.deliveries[c]
            arrays, down = pack_delivery(delivery, self.layout, common, {}, array_of)
            conf: dict[str, ConfigRecordValues] = {
                "server-round": r,
                "client": c,
                "digest": self.settings.digest,
                "job-id": self.job_id,
                SEED_KEY: str(derive_seed(self.config.fl.seed, r, c, "encode")),  # a uint64: as text
                PARTS_KEY: parts,
            }
            conf.update(self.client_config)
            content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: ConfigRecord(conf), DOWN_META_KEY: down})
            msgs.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        self._round = (plan, node_of, dropped, msgs)
        return msgs

    def parts(self, server_round: int) -> list[dict[str, Any]]:
        """The parts a client's reply codes (``fedsqueeze-parts``, :func:`.frames.read_parts_config`): the
        LoRA update with the job's codec and error feedback, against the last downlink frame; the head's
        update densely (identity, no error feedback), sent only in the rounds the head trains."""
        codec = self.config.uplink_codec(server_round)  # fl.uplink_rates: the round's rate
        return [
            {"name": "lora", "prefix": "lora.", "codec": codec.name, "options": dict(codec.options),
             "error-feedback": self.config.fl.error_feedback, "reference": True},
            {"name": "head", "prefix": "head.", "codec": "identity", "options": {}, "error-feedback": False,
             "send": trains_head(self.config, self.wl, server_round)},
        ]  # fmt: skip

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Read the replies, then screen, aggregate and apply them (:meth:`Federation.finish_round`).

        Returns the new global state (``lora.*`` and ``head.*`` arrays) and the row's scalar metrics; the
        whole row is :attr:`last_row`.

        Raises
        ------
        UsageError
            No :meth:`configure_train` of this round came first.
        """
        if self._round is None or self._round[0].round != server_round:
            raise UsageError(f"aggregate_train({server_round}) without configure_train of that round")
        (plan, node_of, dropped, sent), self._round = self._round, None
        timeout = self.settings.round_timeout
        # The SuperLink answers for a node it considers gone (NODE_UNAVAILABLE): an error reply from the
        # SuperLink's own node id, tied to the message by reply_to_message_id (set when the grid pushed it).
        by_message = {
            m.metadata.message_id: node_of[m.metadata.dst_node_id] for m in sent if m.metadata.message_id
        }
        got: dict[int, ClientReply | None] = {}
        for ans in replies:
            sender = node_of.get(ans.metadata.src_node_id)
            if sender is None and ans.has_error():
                sender = by_message.get(ans.metadata.reply_to_message_id)
            if sender is None or sender in got:
                continue
            try:
                got[sender] = read_reply(ans, sender, server_round)
            except FedsqueezeError as exc:
                dropped.append({"client": sender, "reason": str(exc)})
                got[sender] = None
        for c in node_of.values():
            if c not in got:
                dropped.append({"client": c, "reason": f"no reply within {timeout:g} s"})
        kept = [rep for rep in got.values() if rep is not None]
        for c in {int(d["client"]) for d in dropped if "node" not in d}:  # not a refused claim
            self.fed.downlink.lost(c)  # it may not hold this round's state: resync it densely next time
        # the downlink is charged to the clients a frame was sent to
        row = self.fed.finish_round(plan, kept, dropped=dropped, reached=node_of.values())
        self.last_row = row
        log.info("%s", round_line(row, self.config.fl.rounds))  # the line `fedsqueeze run` prints for a round
        log.debug("round %d: kept %s dropped %d", server_round, row["kept"], row["num_dropped"])
        return self.global_arrays(), MetricRecord(_scalars(row))

    def global_arrays(self) -> ArrayRecord:
        """The global state as an ArrayRecord: ``lora.<name>`` and ``head.<name>`` tensors."""
        parts = {f"lora.{k}": v for k, v in self.fed.lora.items()}
        parts.update({f"head.{k}": v for k, v in self.fed.head.items()})
        return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in parts.items()})

    # -- evaluation: the server's own (fl.eval_every), inside finish_round ------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates the global model (``fl.eval_every``)."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Nothing to aggregate (see :meth:`configure_evaluate`)."""
        return None


def _scalars(row: Mapping[str, Any]) -> dict[str, MetricRecordValues]:
    """The row's finite numbers (Flower's MetricRecord holds numbers and lists of them only)."""
    return {
        k: v
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def read_reply(rep: Message, client: int, r: int) -> ClientReply:
    """The frames and metrics of one reply (:func:`.frames.read_parts_reply`, version 2);
    :class:`~fedsqueeze.PayloadError` if it is unusable.

    The reply is untrusted: a missing or mistyped record or field, a part of another round or a non-finite
    metric is refused with a one-line reason (decoding comes later)."""
    if rep.has_error():
        raise PayloadError(f"client error: {rep.error.reason}")
    content = rep.content
    parts = read_parts_reply(content)
    if "metrics" not in content.metric_records:
        raise PayloadError("reply lacks record 'metrics'")
    metrics = content.metric_records["metrics"]
    try:
        lora = parts.info["lora"]
        for name, info in parts.info.items():
            if info.get("round") != r:
                raise PayloadError(f"reply part {name!r} for round {info.get('round')!r}, expected {r}")
        num_examples = _int_field(metrics, "num-examples")
        if num_examples <= 0:
            raise PayloadError(f"num-examples must be > 0, got {num_examples}")
        floats = {k: _float_field(metrics, k) for k in ("train-loss", "client-s")}
        residual = _float_field(lora, "residual-norm")
        rel = None if lora.get("rel-error") is None else _float_field(lora, "rel-error")
    except KeyError as exc:
        raise PayloadError(f"reply lacks field {exc}") from None
    return ClientReply(
        client=client,
        num_examples=num_examples,
        lora_payload=parts.frames["lora"],
        head_payload=parts.frames.get("head", b""),
        train_loss=floats["train-loss"],
        raw_update=None,  # stays on the client
        rel_error=rel,
        residual_norm=residual,
        seconds=floats["client-s"],
    )


def _int_field(record: Any, key: str) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{key} must be an integer, got {type(value).__name__}")
    return value


def _float_field(record: Any, key: str) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError(f"{key} must be a finite number, got {value!r}")
    return float(value)

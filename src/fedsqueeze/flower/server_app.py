"""The Flower ``ServerApp``: the Flower driver of the federation core (:mod:`fedsqueeze.fl.federation`).

Each round: :meth:`~fedsqueeze.fl.federation.Federation.configure_round` samples ``K`` of the ``N`` client
ids (the engine's seeded sampling) and broadcasts the global state; the driver maps the ids to SuperNodes by
``partition-id`` (asked once per node with a ``query`` message), sends each exactly its downlink
:class:`~fedsqueeze.fl.server.Delivery` (the delta frames it missed, or the dense state, and the head when
its copy is stale, as ``uint8`` arrays, with the SHA-256 of the state they must rebuild) through
``grid.send_and_receive``, waits up to ``round-timeout`` seconds and checks each reply's SHA-256. A client
that errs or does not reply may hold a stale copy, so it gets a dense resync the next time it is sampled.
:meth:`~fedsqueeze.fl.federation.Federation.finish_round` then screens, decodes, aggregates and applies
the replies, evaluates and returns the row. The outputs are those of ``fedsqueeze run``
(:func:`fedsqueeze.fl.summary.write_run_outputs`), except ``rel_error`` and ``mean_update_norm``, which
need the raw updates that never leave the clients (``None`` here). With fewer valid replies than
``fl.min_replies`` the model is left unchanged for that round.

After every round the server state (:meth:`~fedsqueeze.fl.federation.Federation.state_dict`, plus the
job id the nodes key their state by) goes to ``OUT/checkpoint/state.pt`` (atomic, with its SHA-256); with
``resume`` the job continues from it, like ``fedsqueeze run --resume``. Nodes with a state dir keep a
version of their state per round (:mod:`.client_app`), so a resumed job equals the uninterrupted one bit for
bit; a node without one (``durable = false`` in its ``query`` reply) starts from a zero residual and, when
the job resumed, gets the dense state the first time it is sampled.

Replies are untrusted: anything malformed (missing or mistyped records and fields, non-finite metrics,
payloads that differ from their stated SHA-256/length, frames that do not decode, non-finite or outlying
updates) is dropped with its reason in the row's ``dropped``; it never stops the job."""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import ConfigRecordValues
from flwr.serverapp import ServerApp

from ..errors import ConfigError, FedsqueezeError, PayloadError
from ..fl.client import ClientReply
from ..fl.console import round_line
from ..fl.driver import Outputs, drive
from ..fl.federation import Federation
from ..fl.final import FINAL_PARAMS
from ..fl.hooks import RunContext
from ..fl.loop import simulate
from ..fl.server import state_sha256
from .env import apply_offline_env
from .records import array_bytes, bytes_array, sha256
from .settings import FlowerSettings, check_job_out_dir, default_out_dir, make_workload, settings_from_context

__all__ = ["GridLike", "app", "run_rounds"]

log = logging.getLogger("fedsqueeze.flower")

app = ServerApp()


class GridLike(Protocol):
    """The part of ``flwr.serverapp.Grid`` the loop uses (tests pass a fake)."""

    def get_node_ids(self) -> Iterable[int]: ...

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]: ...


@app.main()
def main(grid: Any, context: Context) -> None:
    """Flower entry point: offline mode (:func:`.env.apply_offline_env`), settings from
    ``context.run_config``, then :func:`run_rounds`."""
    apply_offline_env()
    run_rounds(grid, settings_from_context(context.run_config))


def _wait_for_nodes(grid: GridLike, want: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < want and time.monotonic() < end:
        time.sleep(0.5)


class _NodeMap:
    """partition id -> Flower node id, learned by asking every new node (``query`` message)."""

    def __init__(self, digest: str, n: int) -> None:
        self.digest, self.n = digest, n
        self.by_partition: dict[int, int] = {}
        self.durable: dict[int, bool] = {}  # partition -> its node keeps its state on disk
        self.rejected: set[int] = set()

    def refresh(self, grid: GridLike, timeout: float) -> list[int]:
        """Map the nodes not seen yet; returns the partitions (re)mapped to a new node."""
        live = set(grid.get_node_ids())
        self.by_partition = {p: n for p, n in self.by_partition.items() if n in live}
        new = sorted(live - set(self.by_partition.values()) - self.rejected)
        if not new:
            return []
        mapped = []
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
        for rep in grid.send_and_receive(msgs, timeout=timeout):
            node = rep.metadata.src_node_id
            if node not in new:
                continue
            if rep.has_error() or "node" not in rep.content.config_records:
                continue  # try again next round
            info = rep.content.config_records["node"]
            if info.get("digest") != self.digest:
                log.warning("node %s runs another config (digest %s); ignoring it", node, info.get("digest"))
                self.rejected.add(node)
                continue
            pid = info.get("partition-id")
            if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < self.n:
                log.warning("node %s serves no partition of 0..%d (%r); ignoring it", node, self.n - 1, pid)
                self.rejected.add(node)
                continue
            self.by_partition[pid] = node  # a restarted node replaces the old id
            self.durable[pid] = info.get("durable") is True
            mapped.append(pid)
        return mapped


class _FlowerFederation:
    """The Flower driver of the federation core: ``configure_round`` → ``grid.send_and_receive`` →
    ``finish_round``. Raw updates never leave the clients (``raw_updates=False``)."""

    def __init__(self, settings: FlowerSettings, grid: GridLike, ctx: RunContext | None = None) -> None:
        self.settings, self.grid = settings, grid
        self.config = settings.config
        self.wl = ctx.workload if ctx is not None else make_workload(settings)
        codec = ctx.codec if ctx is not None else None  # a phase of the run (TGAP) may set the uplink codec
        self.fed = Federation(self.config, self.wl, codec=codec, raw_updates=False, logger=log)
        self.nodes = _NodeMap(settings.digest, self.fed.n)
        self.job_id = secrets.token_hex(8)  # what the nodes key their state by; kept in the checkpoint
        self.resumed = False
        # what the phases before the rounds tell every client (sent with each train message)
        self.client_config: dict[str, str] = dict(ctx.client_config) if ctx is not None else {}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the federation's state plus the job's Flower part (``"flower"``)."""
        flower = {"job_id": self.job_id, "workload": self.settings.workload}
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

    def run_round(self, r: int, capture: bool = False) -> dict[str, Any]:
        """One round over the grid (``capture`` cannot be honoured: raw updates stay on the clients)."""
        grid, timeout = self.grid, self.settings.round_timeout
        for c in self.nodes.refresh(grid, timeout):
            if self.resumed and not self.nodes.durable[c]:
                self.fed.downlink.lost(c)  # its state did not survive the restart: resync it densely
        plan = self.fed.configure_round(r)
        wl, downlink = self.wl, self.fed.downlink
        # Each client gets exactly the bytes the ledger charges it, and the hashes of what they rebuild.
        expect: dict[str, ConfigRecordValues] = {
            "lora-sha256": state_sha256(wl.lora_spec.flatten(plan.lora)),
            "head-sha256": state_sha256(wl.head_spec.flatten(plan.head)),
            "head-version": downlink.head_version,
        }

        dropped: list[dict[str, Any]] = []
        msgs, node_of = [], {}
        for c in plan.clients:
            node = self.nodes.by_partition.get(c)
            if node is None:
                dropped.append({"client": c, "reason": "no SuperNode serves this partition"})
                continue
            node_of[node] = c
            d = downlink.deliveries[c]
            arrays: dict[str, Array] = {}
            if d.frames is None:
                assert d.dense is not None, "a delivery without frames sends the dense state"
                arrays["lora"] = bytes_array(d.dense)
            arrays.update({f"lora-{i}": bytes_array(f) for i, f in enumerate(d.frames or ())})
            if d.head is not None:
                arrays["head"] = bytes_array(d.head)
            meta: dict[str, ConfigRecordValues] = {
                "server-round": r,
                "client": c,
                "digest": self.settings.digest,
                "job-id": self.job_id,
            }
            meta.update(expect)
            meta.update(self.client_config)
            meta.update({"since": d.since, "frames": -1 if d.frames is None else len(d.frames)})
            content = RecordDict({"global": ArrayRecord(arrays), "round": ConfigRecord(meta)})
            msgs.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        answers = list(grid.send_and_receive(msgs, timeout=timeout)) if msgs else []

        got: dict[int, ClientReply | None] = {}
        for ans in answers:
            sender = node_of.get(ans.metadata.src_node_id)
            if sender is None or sender in got:
                continue
            try:
                got[sender] = _read_reply(ans, sender, r)
            except FedsqueezeError as exc:
                dropped.append({"client": sender, "reason": str(exc)})
                got[sender] = None
        for c in node_of.values():
            if c not in got:
                dropped.append({"client": c, "reason": f"no reply within {timeout:g} s"})
        replies = [rep for rep in got.values() if rep is not None]
        for c in {int(d["client"]) for d in dropped}:
            downlink.lost(c)  # it may not hold this round's state: resync it densely next time
        # the downlink is charged to the clients a frame was sent to
        row = self.fed.finish_round(plan, replies, dropped=dropped, reached=node_of.values(), capture=capture)
        log.info("%s", round_line(row, self.config.fl.rounds))  # the line `fedsqueeze run` prints for a round
        log.debug("round %d: kept %s dropped %d", r, row["kept"], row["num_dropped"])
        return row


def _read_reply(rep: Message, client: int, r: int) -> ClientReply:
    """The payloads and metrics of one reply; :class:`~fedsqueeze.PayloadError` if it is unusable.

    The reply is untrusted: a missing or mistyped record or field, a non-finite metric or a payload that
    differs from its stated SHA-256/length is refused with a one-line reason (decoding comes later)."""
    if rep.has_error():
        raise PayloadError(f"client error: {rep.error.reason}")
    content = rep.content
    try:
        meta = content.config_records["meta"]
        metrics = content.metric_records["metrics"]
        payload = content.array_records["payload"]
    except KeyError as exc:
        raise PayloadError(f"reply lacks record {exc}") from None
    try:
        said = (_int_field(meta, "client"), _int_field(meta, "server-round"))
        if said != (client, r):
            raise PayloadError(f"reply for client {said[0]} round {said[1]}, expected {client}/{r}")
        blobs = {}
        for part in ("lora", "head"):
            blob = array_bytes(payload, part)
            if sha256(blob) != meta[f"{part}-sha256"] or len(blob) != _int_field(meta, f"{part}-bytes"):
                raise PayloadError(f"{part} payload differs from what the client stated (SHA-256/length)")
            blobs[part] = blob
        num_examples = _int_field(metrics, "num-examples")
        if num_examples <= 0:
            raise PayloadError(f"num-examples must be > 0, got {num_examples}")
        floats = {k: _float_field(metrics, k) for k in ("train-loss", "residual-norm", "client-s")}
        rel = _float_field(metrics, "rel-error") if "rel-error" in metrics else None
    except KeyError as exc:
        raise PayloadError(f"reply lacks field {exc}") from None
    return ClientReply(
        client=client,
        num_examples=num_examples,
        lora_payload=blobs["lora"],
        head_payload=blobs["head"],
        train_loss=floats["train-loss"],
        raw_update=None,  # stays on the client
        rel_error=rel,
        residual_norm=floats["residual-norm"],
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


def run_rounds(grid: GridLike, settings: FlowerSettings, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run ``fl.rounds`` rounds over ``grid``; write ``metrics.jsonl`` / ``summary.json`` / the plot, and
    ``checkpoint/`` after every round.

    With ``settings.resume`` the run in ``out_dir`` continues from its checkpoint (one without a checkpoint
    yet starts from round 1), as ``fedsqueeze run --resume`` does.

    Returns the summary (like :func:`fedsqueeze.fl.run`, plus ``engine``, ``final_lora`` path).

    Raises
    ------
    ConfigError
        ``resume`` without an existing ``out_dir``; a checkpoint in it without ``resume``; a checkpoint of
        another config, workload or driver, or past ``fl.rounds``.
    """
    t_start = time.perf_counter()
    if out_dir is None and settings.resume and not settings.out_dir:
        raise ConfigError("--resume needs --out DIR (the run to continue)")
    out = Path(out_dir or settings.out_dir or default_out_dir(settings))
    cfg = settings.config
    check_job_out_dir(out, settings.resume)  # before the workload is built: a refusal should be quick
    wl = make_workload(settings)

    def wait(rounds: Any) -> None:
        _wait_for_nodes(grid, min(cfg.fl.clients_per_round, rounds.fed.n), settings.round_timeout)

    outputs = Outputs(
        engine="flower",
        title_suffix=" (Flower)",
        extra={"flower": {"round_timeout": settings.round_timeout, "workload": settings.workload}},
        versions={"flwr": _flwr_version()},
    )
    return drive(
        cfg, out, lambda ctx: _FlowerFederation(settings, grid, ctx), workload=wl, simulate=simulate,
        resume=settings.resume, outputs=outputs, t_start=t_start, on_start=wait,
    )  # fmt: skip


FINAL = FINAL_PARAMS


def _flwr_version() -> str:
    from importlib import metadata

    return metadata.version("flwr")

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
``fl.min_replies`` the model is left unchanged for that round."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import ServerApp

from ..errors import FedsqueezeError
from ..fl.checkpoint import append_jsonl, write_jsonl
from ..fl.client import ClientReply
from ..fl.console import round_line
from ..fl.federation import Federation
from ..fl.final import FINAL_PARAMS
from ..fl.server import state_sha256
from ..fl.summary import write_run_outputs
from .env import apply_offline_env
from .records import array_bytes, bytes_array, sha256
from .settings import FlowerSettings, default_out_dir, make_workload, settings_from_context

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

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.by_partition: dict[int, int] = {}
        self.rejected: set[int] = set()

    def refresh(self, grid: GridLike, timeout: float) -> None:
        live = set(grid.get_node_ids())
        self.by_partition = {p: n for p, n in self.by_partition.items() if n in live}
        new = sorted(live - set(self.by_partition.values()) - self.rejected)
        if not new:
            return
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
        for rep in grid.send_and_receive(msgs, timeout=timeout):
            node = rep.metadata.src_node_id
            if rep.has_error() or "node" not in rep.content.config_records:
                continue  # try again next round
            info = rep.content.config_records["node"]
            if info.get("digest") != self.digest:
                log.warning("node %s runs another config (digest %s); ignoring it", node, info.get("digest"))
                self.rejected.add(node)
                continue
            self.by_partition[int(info["partition-id"])] = node  # a restarted node replaces the old id


class _FlowerFederation:
    """The Flower driver of the federation core: ``configure_round`` → ``grid.send_and_receive`` →
    ``finish_round``. Raw updates never leave the clients (``raw_updates=False``)."""

    def __init__(self, settings: FlowerSettings) -> None:
        self.settings = settings
        self.config = settings.config
        self.wl = make_workload(settings)
        self.fed = Federation(self.config, self.wl, raw_updates=False, logger=log)
        self.nodes = _NodeMap(settings.digest)

    def run_round(self, grid: GridLike, r: int) -> dict[str, Any]:
        timeout = self.settings.round_timeout
        self.nodes.refresh(grid, timeout)
        plan = self.fed.configure_round(r)
        wl, downlink = self.wl, self.fed.downlink
        # Each client gets exactly the bytes the ledger charges it, and the hashes of what they rebuild.
        expect = {
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
            arrays = {"lora": bytes_array(d.dense)} if d.frames is None else {}
            arrays.update({f"lora-{i}": bytes_array(f) for i, f in enumerate(d.frames or ())})
            if d.head is not None:
                arrays["head"] = bytes_array(d.head)
            meta = {"server-round": r, "client": c, "digest": self.settings.digest, **expect}
            meta.update({"since": d.since, "frames": -1 if d.frames is None else len(d.frames)})
            content = RecordDict({"global": ArrayRecord(arrays), "round": ConfigRecord(meta)})
            msgs.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        answers = list(grid.send_and_receive(msgs, timeout=timeout)) if msgs else []

        got: dict[int, ClientReply | None] = {}
        for ans in answers:
            c = node_of.get(ans.metadata.src_node_id)
            if c is None or c in got:
                continue
            try:
                got[c] = _read_reply(ans, c, r)
            except FedsqueezeError as exc:
                dropped.append({"client": c, "reason": str(exc)})
                got[c] = None
        for c in node_of.values():
            if c not in got:
                dropped.append({"client": c, "reason": f"no reply within {timeout:g} s"})
        replies = [rep for rep in got.values() if rep is not None]
        for c in {int(d["client"]) for d in dropped}:
            downlink.lost(c)  # it may not hold this round's state: resync it densely next time
        # the downlink is charged to the clients a frame was sent to
        return self.fed.finish_round(plan, replies, dropped=dropped, reached=node_of.values())


def _read_reply(rep: Message, client: int, r: int) -> ClientReply:
    """The payloads and metrics of one reply; :class:`~fedsqueeze.FedsqueezeError` if it is unusable."""
    from ..errors import PayloadError

    if rep.has_error():
        raise PayloadError(f"client error: {rep.error.reason}")
    content = rep.content
    try:
        meta = content.config_records["meta"]
        metrics = content.metric_records["metrics"]
        payload = content.array_records["payload"]
    except KeyError as exc:
        raise PayloadError(f"reply lacks record {exc}") from None
    if int(meta["client"]) != client or int(meta["server-round"]) != r:
        raise PayloadError(
            f"reply for client {meta['client']} round {meta['server-round']}, expected {client}/{r}"
        )
    blobs = {}
    for part in ("lora", "head"):
        blob = array_bytes(payload, part)
        if sha256(blob) != meta[f"{part}-sha256"] or len(blob) != int(meta[f"{part}-bytes"]):
            raise PayloadError(f"{part} payload differs from what the client says it sent (SHA-256/length)")
        blobs[part] = blob
    return ClientReply(
        client=client,
        num_examples=metrics["num-examples"],
        lora_payload=blobs["lora"],
        head_payload=blobs["head"],
        train_loss=float(metrics["train-loss"]),
        raw_update=None,  # stays on the client
        rel_error=float(metrics["rel-error"]) if "rel-error" in metrics else None,
        residual_norm=float(metrics["residual-norm"]),
        seconds=float(metrics["client-s"]),
    )


def run_rounds(grid: GridLike, settings: FlowerSettings, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run ``fl.rounds`` rounds over ``grid``; write ``metrics.jsonl`` / ``summary.json`` / the plot.

    Returns the summary (like :func:`fedsqueeze.fl.run`, plus ``engine``, ``final_lora`` path).
    """
    t_start = time.perf_counter()
    out = Path(out_dir or settings.out_dir or default_out_dir(settings))
    cfg = settings.config
    driver = _FlowerFederation(settings)
    fed = driver.fed
    load_s = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "metrics.jsonl", [])
    _wait_for_nodes(grid, min(cfg.fl.clients_per_round, fed.n), settings.round_timeout)
    for r in range(1, cfg.fl.rounds + 1):
        row = driver.run_round(grid, r)
        append_jsonl(out / "metrics.jsonl", row)
        log.info("%s", round_line(row, cfg.fl.rounds))  # the line `fedsqueeze run` prints for a round
        log.debug("round %d: kept %s dropped %d", r, row["kept"], row["num_dropped"])
    title = f"{cfg.model.name} / {cfg.data.dataset} / {cfg.codec.name} (Flower)"
    return write_run_outputs(
        fed, out, engine="flower", t_start=t_start, load_s=load_s, title=title,
        extra={"flower": {"round_timeout": settings.round_timeout, "workload": settings.workload}},
        versions={"flwr": _flwr_version()},
    )  # fmt: skip


FINAL = FINAL_PARAMS


def _flwr_version() -> str:
    from importlib import metadata

    return metadata.version("flwr")

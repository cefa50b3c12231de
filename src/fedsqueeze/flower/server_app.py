"""The Flower ``ServerApp``: the round loop of ``fedsqueeze run`` over a Flower ``Grid``.

Each round: sample ``K`` of the ``N`` client ids with the engine's seeded sampling
(:func:`~fedsqueeze.fl.seeding.sample_clients`), map them to SuperNodes by ``partition-id`` (asked once per
node with a ``query`` message), send each the global LoRA/head as identity frames (``uint8`` arrays), wait up
to ``round-timeout`` seconds, check each reply's SHA-256, screen and decode the payloads
(:func:`fedsqueeze.fl.robust.screen_replies`, which calls ``fedsqueeze.decode``), aggregate
(:func:`fedsqueeze.fl.robust.aggregate`) and apply (:func:`~fedsqueeze.fl.server.apply_update`), evaluate,
and write the same ``metrics.jsonl`` / ``summary.json`` as ``fedsqueeze run`` (with the same ``warnings`` of
:class:`~fedsqueeze.fl.health.RunHealth`). With fewer valid replies than
``fl.min_replies`` the model is left unchanged for that round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import ServerApp

from ..errors import FedsqueezeError
from ..fl.checkpoint import append_jsonl, write_json, write_jsonl
from ..fl.client import encode_dense
from ..fl.console import round_line
from ..fl.final import FINAL_PARAMS, save_final
from ..fl.health import RunHealth, log_warnings
from ..fl.ledger import TrafficLedger
from ..fl.report import eval_columns, package_versions, plot_metric_vs_uplink, summarize, traffic_totals
from ..fl.robust import aggregate, merge_screens, screen_replies
from ..fl.seeding import derive_seed, sample_clients
from ..fl.server import Downlink, ServerMomentum, apply_update
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
    def __init__(self, settings: FlowerSettings) -> None:
        self.settings = settings
        self.config = cfg = settings.config
        self.wl = wl = make_workload(settings)
        self.n = wl.num_clients()
        self.lora, self.head = wl.initial_params()
        self.momentum = ServerMomentum(self.config.fl.server_momentum)
        self.downlink = Downlink(cfg.downlink.build(), wl.lora_spec, wl.head_spec, self.lora, self.n)
        self.ledger = TrafficLedger()
        self.rows: list[dict[str, Any]] = []
        self.health = RunHealth(error_feedback=cfg.fl.error_feedback)
        self.nodes = _NodeMap(settings.digest)

    def run_round(self, grid: GridLike, r: int) -> dict[str, Any]:
        wl, fl = self.wl, self.config.fl
        t0 = time.perf_counter()
        self.nodes.refresh(grid, self.settings.round_timeout)
        clients = sample_clients(fl.seed, r, self.n, fl.clients_per_round)
        dseed = derive_seed(fl.seed, r, -1, "downlink")
        lora0, head0, down = self.downlink.broadcast(r, self.lora, self.head, clients, seed=dseed)
        # Clients receive exactly the tensors the local engine hands its clients, as fp32 identity frames
        # (for a FLASC downlink the ledger still charges the protocol's cost, see docs/flower.md).
        lora_frame = encode_dense(wl.lora_spec.flatten(lora0), wl.lora_spec, seed=dseed)
        head_frame = encode_dense(wl.head_spec.flatten(head0), wl.head_spec, seed=dseed)

        dropped: list[dict[str, Any]] = []
        msgs, node_of = [], {}
        for c in clients:
            node = self.nodes.by_partition.get(c)
            if node is None:
                dropped.append({"client": c, "reason": "no SuperNode serves this partition"})
                continue
            node_of[node] = c
            content = RecordDict(
                {
                    "global": ArrayRecord({"lora": bytes_array(lora_frame), "head": bytes_array(head_frame)}),
                    "round": ConfigRecord({"server-round": r, "client": c, "digest": self.settings.digest}),
                }
            )
            msgs.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        replies = list(grid.send_and_receive(msgs, timeout=self.settings.round_timeout)) if msgs else []

        got: dict[int, dict[str, Any]] = {}
        for rep in replies:
            c = node_of.get(rep.metadata.src_node_id)
            if c is None or c in got:
                continue
            try:
                got[c] = _read_reply(rep, c, r)
            except FedsqueezeError as exc:
                dropped.append({"client": c, "reason": str(exc)})
                got[c] = {}
        for c in node_of.values():
            if c not in got:
                dropped.append({"client": c, "reason": f"no reply within {self.settings.round_timeout:g} s"})
        ok = sorted(c for c, v in got.items() if v)  # ascending client order, as the local engine
        weights = [got[c]["num_examples"] for c in ok]

        screens = [
            screen_replies(
                [got[c][part] for c in ok], weights, spec, norm_bound_factor=fl.norm_bound_factor, clients=ok
            )
            for part, spec in (("lora", wl.lora_spec), ("head", wl.head_spec))
        ]
        kept_idx, (lora_vecs, head_vecs), screened = merge_screens(len(ok), screens, ok)
        dropped += screened
        kept = [ok[i] for i in kept_idx]
        kw = [weights[i] for i in kept_idx]
        aggregated = len(kept) >= self.settings.min_replies
        if aggregated:
            mean_lora = aggregate(lora_vecs, kw, fl.aggregation, fl.trim_fraction)
            mean_head = aggregate(head_vecs, kw, fl.aggregation, fl.trim_fraction)
            mean_lora = self.momentum.step("lora", mean_lora)
            mean_head = self.momentum.step("head", mean_head)
            self.lora = apply_update(self.lora, mean_lora, wl.lora_spec, fl.server_lr)
            self.head = apply_update(self.head, mean_head, wl.head_spec, fl.server_lr)
        for d in dropped:
            log.warning("round %d: dropped client %s: %s", r, d["client"], d["reason"])
        traffic = self.ledger.record(
            r,
            {c: len(got[c]["lora"]) for c in ok},
            {c: len(got[c]["head"]) for c in ok},
            {c: down[c] for c in node_of.values()},  # charged to the clients a frame was sent to
        )
        train_s = time.perf_counter() - t0
        evaluate = r % fl.eval_every == 0 or r == fl.rounds
        ev = wl.evaluate(dict(self.lora), dict(self.head)) if evaluate else None
        rels = [got[c]["rel_error"] for c in kept if got[c]["rel_error"] is not None]
        row = {
            "round": r,
            "clients": clients,
            "num_examples": [got[c]["num_examples"] if got.get(c) else None for c in clients],
            **traffic.row_columns(self.rows[-1] if self.rows else None, wl.lora_spec.numel, len(ok)),
            "train_loss": sum(w * got[c]["train_loss"] for w, c in zip(kw, kept, strict=True)) / sum(kw)
            if kept
            else None,
            **eval_columns(ev, wl.metric_name),
            "rel_error": None,  # needs the raw updates, which never leave the clients under Flower
            "client_rel_error": sum(rels) / len(rels) if rels else None,
            "residual_norms": [got[c]["residual_norm"] for c in ok],
            "mean_update_norm": None,
            "aggregated": aggregated,
            "num_dropped": len(dropped),
            "dropped": dropped,
            "replied": ok,
            "kept": kept,
            "lora_sha256": {str(c): sha256(got[c]["lora"]) for c in ok},
            "head_sha256": {str(c): sha256(got[c]["head"]) for c in ok},
            "client_s": {str(c): got[c]["client_s"] for c in ok},
            "train_s": train_s,
            "wall_s": time.perf_counter() - t0,
        }
        row["warnings"] = self.health.observe(row)  # the checks of the local engine, on the same columns
        log_warnings(log, r, row["warnings"], self.health)
        self.rows.append(row)
        return row


def _read_reply(rep: Message, client: int, r: int) -> dict[str, Any]:
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
    out: dict[str, Any] = {}
    for part in ("lora", "head"):
        blob = array_bytes(payload, part)
        if sha256(blob) != meta[f"{part}-sha256"] or len(blob) != int(meta[f"{part}-bytes"]):
            raise PayloadError(f"{part} payload differs from what the client says it sent (SHA-256/length)")
        out[part] = blob
    out["num_examples"] = metrics["num-examples"]
    out["train_loss"] = float(metrics["train-loss"])
    out["residual_norm"] = float(metrics["residual-norm"])
    out["rel_error"] = float(metrics["rel-error"]) if "rel-error" in metrics else None
    out["client_s"] = float(metrics["client-s"])
    return out


def run_rounds(grid: GridLike, settings: FlowerSettings, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run ``fl.rounds`` rounds over ``grid``; write ``metrics.jsonl`` / ``summary.json`` / the plot.

    Returns the summary (like :func:`fedsqueeze.fl.run`, plus ``engine``, ``final_lora`` path).
    """
    out = Path(out_dir or settings.out_dir or default_out_dir(settings))
    cfg = settings.config
    fed = _FlowerFederation(settings)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "metrics.jsonl", [])
    _wait_for_nodes(grid, min(cfg.fl.clients_per_round, fed.n), settings.round_timeout)
    for r in range(1, cfg.fl.rounds + 1):
        row = fed.run_round(grid, r)
        append_jsonl(out / "metrics.jsonl", row)
        log.info("%s", round_line(row, cfg.fl.rounds))  # the line `fedsqueeze run` prints for a round
        log.debug("round %d: kept %s dropped %d", r, row["kept"], row["num_dropped"])
    save_final(out, fed.lora, fed.head, fed.wl)  # the same files as `fedsqueeze run` (fl/final.py)
    summary = summarize(fed.rows, fed.wl.metric_name, cfg.fl.target_metric)
    summary.update(
        {
            "engine": "flower",
            "codec": cfg.codec.name,
            "codec_options": cfg.codec.build().options(),
            "downlink_options": cfg.downlink.build().options(),
            "downlink_protocol": fed.downlink.protocol,
            "seed": cfg.fl.seed,
            "lora_numel": fed.wl.lora_spec.numel,
            "head_numel": fed.wl.head_spec.numel,
            "num_clients": fed.n,
            "workload": dict(getattr(fed.wl, "info", {}) or {}),
            "config": cfg.to_dict(),
            "flower": {"round_timeout": settings.round_timeout, "workload": settings.workload},
            "versions": {**package_versions(), "flwr": _flwr_version()},
            "out_dir": str(out),
            "warnings": fed.health.summary(),
        }
    )
    summary.update(
        traffic_totals(
            fed.ledger,
            fed.wl.lora_spec.numel,
            fed.wl.head_spec.numel,
            summary["total_uplink_bytes"],
            summary["total_downlink_bytes"],
        )
    )
    write_json(out / "summary.json", summary)
    title = f"{cfg.model.name} / {cfg.data.dataset} / {cfg.codec.name} (Flower)"
    plot_metric_vs_uplink(fed.rows, out / "accuracy_vs_uplink.png", title=title, target=cfg.fl.target_metric)
    return summary


FINAL = FINAL_PARAMS


def _flwr_version() -> str:
    from importlib import metadata

    return metadata.version("flwr")

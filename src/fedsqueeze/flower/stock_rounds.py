"""The driver's Flower transport for a *stock* Flower strategy: ``FedAvg``, ``FedAdam``, a DP wrapper, ...

``fedsqueeze flower``'s ServerApp normally runs fedsqueeze's own strategy
(:class:`~.job_strategy.FederationStrategy`). :func:`~.server_app.run_rounds` with ``strategy=`` runs the same
job (config, workload, ClientApp, codec, outputs) with any Flower strategy instead, wrapped in
:class:`~.strategy.Compressed` with the job's uplink codec (and its downlink codec, when the config names
one). Each round: the global state as one ArrayRecord (``lora.<name>``, ``head.<name>``) →
``Compressed.configure_train`` → ``grid.send_and_receive`` → ``Compressed.aggregate_train``, whose arrays
become the new global state.

The core's per-round work (sampling, screening, robust aggregation, server momentum, health) is the
strategy's then, so ``metrics.jsonl`` rows cannot come from
:meth:`~fedsqueeze.fl.federation.Federation.finish_round`. Each row holds instead:

* ``round``, ``strategy`` (the wrapped strategy's class), ``clients`` (the partitions sent a message),
  ``replied`` (those whose reply was used) and ``dropped`` (error replies, frames
  :class:`~.strategy.Compressed` could not decode and refused partition claims, with their reasons),
  ``aggregated``;
* the traffic columns of ``fedsqueeze run`` (``uplink_bytes``, ``cum_uplink_bytes``, ``downlink_bytes``,
  ...), from :attr:`Compressed.history <.strategy.Compressed.history>`: Flower's ``count_bytes`` of each
  reply as received and of each train message's arrays (the job's own strategy counts payload lengths);
* ``train_loss`` (the strategy's aggregated ``train-loss``), and the server-side evaluation of the global
  model every ``fl.eval_every`` rounds (``eval_metric``, ``eval``), as in the job;
* ``fedsqueeze``: :meth:`RoundBytes.metrics <.strategy.RoundBytes.metrics>` of the round;
* ``wall_s`` and ``warnings`` (always empty: the health checks read the job's own columns).

A stock strategy's own state (e.g. ``FedAdam``'s moments) is not in the checkpoint, so such a job does not
resume: ``--resume`` is refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import Strategy

from ..errors import ConfigError
from ..fl.federation import Federation
from ..fl.hooks import RunContext
from ..fl.report import eval_columns
from .job_strategy import GridLike, _NodeMap, binding_of
from .settings import FlowerSettings
from .strategy import Compressed

__all__ = ["StrategyRounds", "compressed_for"]

log = logging.getLogger("fedsqueeze.flower")


def compressed_for(strategy: Strategy, settings: FlowerSettings) -> Compressed:
    """``strategy`` wrapped in :class:`~.strategy.Compressed` with the job's uplink codec, error feedback
    and downlink codec (a dense downlink when the config's is ``identity``)."""
    cfg = settings.config
    down = cfg.downlink
    downlink = None if down.name == "identity" else down.name
    return Compressed(
        strategy,
        cfg.codec.name,
        error_feedback=cfg.fl.error_feedback,
        downlink=downlink,
        downlink_options=dict(down.options) if downlink else None,
        downlink_window=cfg.fl.downlink_window,
        **dict(cfg.codec.options),
    )


class StrategyRounds:
    """A :class:`~fedsqueeze.fl.driver.Rounds` over a stock Flower strategy wrapped in ``Compressed``.

    Parameters
    ----------
    strategy
        The wrapped strategy (:func:`compressed_for`).
    settings
        The job's settings.
    ctx
        The run context (its workload is the rounds').
    grid
        The Flower grid.

    Attributes
    ----------
    fed
        The federation core, used here as the holder of the global state, the rows, the ledger and the
        checkpoint (its round logic is the strategy's).
    """

    def __init__(
        self, strategy: Compressed, settings: FlowerSettings, ctx: RunContext, grid: GridLike
    ) -> None:
        if ctx.client_config:
            raise ConfigError("a stock Flower strategy cannot run the phases before the rounds (TGAP)")
        self.strategy, self.settings, self.grid = strategy, settings, grid
        self.fed = Federation(settings.config, ctx.workload, codec=ctx.codec, raw_updates=False, logger=log)
        self.nodes = _NodeMap(settings.digest, self.fed.n, binding_of(settings))

    def global_arrays(self) -> ArrayRecord:
        """The global state: ``lora.<name>`` and ``head.<name>`` float32 arrays."""
        parts = {f"lora.{k}": v for k, v in self.fed.lora.items()}
        parts.update({f"head.{k}": v for k, v in self.fed.head.items()})
        return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in parts.items()})

    def _take(self, arrays: ArrayRecord) -> None:
        """Make the strategy's aggregate the global state (float32, the workload's names)."""

        def get(prefix: str, names: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {
                k: torch.from_numpy(np.array(arrays[prefix + k].numpy(), dtype=np.float32, copy=True))
                for k in names
            }

        self.fed.lora, self.fed.head = get("lora.", self.fed.lora), get("head.", self.fed.head)

    def run_round(self, r: int, capture: bool) -> dict[str, Any]:
        if capture:
            raise ConfigError("this driver cannot capture updates: raw updates never reach the server")
        t0, fed, wl, cfg = time.perf_counter(), self.fed, self.fed.workload, self.settings.config
        timeout = self.settings.round_timeout
        self.nodes.refresh(self.grid, timeout)
        client_of = {n: p for p, n in self.nodes.by_partition.items()}
        grid: Any = self.grid  # a flwr Grid, or the tests' stand-in with the same two methods
        msgs = list(self.strategy.configure_train(r, self.global_arrays(), ConfigRecord(), grid))
        replies = list(self.grid.send_and_receive(msgs, timeout=timeout)) if msgs else []
        arrays, metrics = self.strategy.aggregate_train(r, replies)
        if arrays is not None:
            self._take(arrays)
        rb = self.strategy.history[-1]

        def cid(node: int) -> int:
            return client_of.get(node, -1)  # -1: a node that never answered the partition query

        sent = sorted(cid(m.metadata.dst_node_id) for m in msgs)
        errors = {rep.metadata.src_node_id: rep.error.reason for rep in replies if rep.has_error()}
        dropped = self.nodes.take_refused()  # claims of partitions that belong to another node
        dropped += [{"client": cid(n), "reason": f"client error: {why}"} for n, why in errors.items()]
        dropped += [{"client": cid(n), "reason": why} for n, why in rb.dropped.items()]
        answered = {rep.metadata.src_node_id for rep in replies}
        dropped += [
            {"client": cid(m.metadata.dst_node_id), "reason": f"no reply within {timeout:g} s"}
            for m in msgs
            if m.metadata.dst_node_id not in answered
        ]
        used = [n for n in rb.uplink if n not in rb.dropped]
        traffic = fed.ledger.record(
            r, {cid(n): rb.uplink[n] for n in rb.uplink}, {}, {cid(n): b for n, b in rb.downlink.items()}
        )
        evaluate = r % cfg.fl.eval_every == 0 or r == cfg.fl.rounds
        ev = wl.evaluate(dict(fed.lora), dict(fed.head)) if evaluate else None
        loss = None if metrics is None else metrics.get("train-loss")
        row = {
            "round": r,
            "strategy": row_strategy(self.strategy),
            "clients": sent,
            **traffic.row_columns(fed.rows[-1] if fed.rows else None, wl.lora_spec.numel, len(used)),
            "train_loss": float(loss) if isinstance(loss, int | float) else None,
            **eval_columns(ev, wl.metric_name),
            "aggregated": arrays is not None,
            "num_dropped": len(dropped),
            "dropped": sorted(dropped, key=lambda d: int(d["client"])),
            "replied": sorted(cid(n) for n in used),
            "fedsqueeze": rb.metrics(),
            "wall_s": time.perf_counter() - t0,
            "warnings": [],
        }
        fed.rows.append(row)
        log.info("round %d/%d (%s): %d replies, uplink %d B, %s %s", r, cfg.fl.rounds, row["strategy"],
                 len(used), traffic.uplink_bytes, wl.metric_name, row["eval_metric"])  # fmt: skip
        return row

    def state_dict(self) -> dict[str, Any]:
        flower = {"workload": self.settings.workload, "strategy": row_strategy(self.strategy)}
        return {**self.fed.state_dict(), "flower": flower}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        raise ConfigError(
            f"--resume: a job run with the stock Flower strategy {row_strategy(self.strategy)} does not "
            "resume (the strategy's own state is not in the checkpoint); start it again"
        )


def row_strategy(strategy: Compressed) -> str:
    return type(strategy.strategy).__name__

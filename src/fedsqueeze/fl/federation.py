"""The federation core: the server's side of one round, shared by every driver.

Shaped like Flower's ``Strategy``: :meth:`Federation.configure_round` says what each sampled client receives
(a :class:`RoundPlan`), the driver delivers it and collects the clients' :class:`~.client.ClientReply`-s by
its own means, and :meth:`Federation.finish_round` screens, aggregates, applies server momentum, records the
ledger, runs the :class:`~.health.RunHealth` checks and returns the ``metrics.jsonl`` row. Two drivers exist:
the local loop (:func:`fedsqueeze.fl.run`, clients in-process) and the Flower ServerApp
(:mod:`fedsqueeze.flower.server_app`, clients behind ``grid.send_and_receive``); both write their summary
with :func:`.summary.write_run_outputs`.

The one difference between drivers is a capability, :attr:`Federation.raw_updates`: whether the driver sees
each client's raw update (in-process clients do; under Flower raw updates never leave the clients). Without
them the row's ``rel_error`` and ``mean_update_norm`` are ``None`` and updates cannot be captured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..aggregation import check_memory
from ..codecs import Codec, get, with_rate
from ..config import RunConfig
from ..errors import ConfigError, UsageError
from ..seeding import derive_seed, sample_clients
from ..spec import UpdateSpec
from .client import ClientReply, relative_error
from .health import RunHealth, log_warnings
from .ledger import TrafficLedger
from .network import sim_columns
from .report import eval_columns
from .robust import ReplyPart, screen_and_aggregate
from .server import (
    Downlink,
    ServerMomentum,
    apply_update,
    catch_up_mode,
    check_uplink,
    downlink_codec,
    weighted_mean,
)
from .workload import Workload

__all__ = ["Federation", "RoundPlan", "check_same_config", "trains_head"]

log = logging.getLogger(__name__)
_EMPTY = UpdateSpec(())  # the spec a fixed head's (empty) frames are screened against


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """What the sampled clients of round ``round`` receive.

    Attributes
    ----------
    round
        The round number (from 1).
    clients
        The sampled client ids, ascending.
    lora, head
        The global tensors every sampled client starts from (decoded from the counted downlink bytes).
    downlink_bytes
        The downlink bytes charged to each sampled client.
    seed
        ``fl.seed``; :meth:`train_seed` / :meth:`encode_seed` derive each client's seeds from it.
    downlink_seed
        The seed of this round's downlink frames.
    train_head
        Whether the clients train (and send) the head this round (``model.head``).
    references
        Per client, the reference a predictive uplink codec codes its update against (the decoded last
        broadcast delta frame it received), or ``None``.
    starts
        Per client whose start is not ``lora`` (a re-encoded catch-up frame, ``fl.downlink_catch_up``), the
        LoRA it starts from; :meth:`lora_of` gives any client's.
    """

    round: int
    clients: list[int]
    lora: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    downlink_bytes: dict[int, int]
    seed: int
    downlink_seed: int
    train_head: bool = True
    references: dict[int, torch.Tensor | None] = dataclasses.field(default_factory=dict)
    starts: dict[int, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)

    def lora_of(self, client: int) -> dict[str, torch.Tensor]:
        """The LoRA ``client`` starts from this round (decoded from the bytes it was charged)."""
        return self.starts.get(client, self.lora)

    def train_seed(self, client: int) -> int:
        """The seed of ``client``'s local training this round."""
        return derive_seed(self.seed, self.round, client, "train")

    def encode_seed(self, client: int) -> int:
        """The seed of ``client``'s codec this round."""
        return derive_seed(self.seed, self.round, client, "encode")


class Federation:
    """The server's whole state and its round; :meth:`state_dict` is the server part of the checkpoint.

    Parameters
    ----------
    config
        The run config.
    workload
        The model + data (the server only evaluates and uses the tensor specs).
    codec
        The uplink codec when it is not ``config.codec.build()`` (e.g. with a model path set by a phase of
        the run); only its ``options()`` are recorded (``codec_options`` of the summary).
    raw_updates
        Whether the driver passes each reply's ``raw_update`` (the capability that fills ``rel_error`` and
        ``mean_update_norm`` and allows captures); ``False`` for drivers whose clients keep them.
    logger
        Where dropped replies and health warnings are logged (default: this module's logger).
    """

    def __init__(
        self,
        config: RunConfig,
        workload: Workload,
        *,
        codec: Any = None,
        raw_updates: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config, self.workload, self.raw_updates = config, workload, raw_updates
        self.log = logger or log
        self.n = workload.num_clients()
        if config.fl.clients_per_round > self.n:
            raise ConfigError(
                f"fl.clients_per_round ({config.fl.clients_per_round}) exceeds {self.n} clients"
            )
        # median / trimmed_mean hold every decoded reply: refuse them now, not after a round of training
        check_memory(
            config.fl.aggregation,
            config.fl.clients_per_round,
            workload.lora_spec.numel + workload.head_spec.numel,
            config.fl.aggregation_memory_mb,
        )
        self.lora, self.head = workload.initial_params()
        self.momentum = ServerMomentum(config.fl.server_momentum)
        uplink = codec if codec is not None else config.codec.build()
        self.uplink = uplink
        # a codec that cannot code this LoRA fails now, by name: at each rate of a schedule (which replaces
        # the codec's own rate in every round), else at its own
        for rate in sorted(set(config.fl.uplink_rates)):
            try:
                check_uplink(at_rate(uplink, rate), workload.lora_spec)
            except ConfigError as exc:
                raise ConfigError(f"fl.uplink_rates: at {rate:g} bits/param, {exc}") from None
        if not config.fl.uplink_rates:
            check_uplink(uplink, workload.lora_spec)
        self.codec_options = uplink.options()
        down = downlink_codec(config, workload.lora_spec, self.log)
        self.downlink = Downlink(
            down,
            workload.lora_spec,
            workload.head_spec,
            self.lora,
            self.n,
            self.head,
            window=config.fl.downlink_window,
            catch_up=catch_up_mode(config, workload.lora_spec, self.n, self.log, compressed=down is not None),
            rate_by_staleness=config.fl.downlink_catch_up_rate == "by_staleness",
        )
        self.ledger = TrafficLedger()
        self.rows: list[dict[str, Any]] = []
        self.health = RunHealth(error_feedback=config.fl.error_feedback)
        self.captures: dict[str, torch.Tensor] = {}
        self._t0: float | None = None

    @property
    def done(self) -> int:
        """Rounds finished so far."""
        return len(self.rows)

    @property
    def min_replies(self) -> int:
        """Valid replies a round needs to change the model (``fl.min_replies``, ``None`` meaning 1)."""
        return self.config.fl.min_replies or 1

    # -- the round ---------------------------------------------------------------------------------------
    def configure_round(self, r: int) -> RoundPlan:
        """Sample round ``r``'s clients (seeded) and broadcast the global state to them (counted)."""
        self._t0 = time.perf_counter()
        seed = self.config.fl.seed
        clients = sample_clients(seed, r, self.n, self.config.fl.clients_per_round)
        dseed = derive_seed(seed, r, -1, "downlink")
        lora0, head0, down = self.downlink.broadcast(r, self.lora, self.head, clients, seed=dseed)
        refs = {c: self.downlink.reference(c) for c in clients}
        starts = {c: s for c in clients if (s := self.downlink.start(c)) is not None}
        return RoundPlan(r, clients, lora0, head0, down, seed, dseed, self.trains_head(r), refs, starts)

    def uplink_codec(self, r: int) -> Codec:
        """Round ``r``'s uplink codec: the run's, at the rate ``fl.uplink_rates`` gives round ``r``."""
        rate = self.config.uplink_rate(r)
        return self.uplink if rate is None else at_rate(self.uplink, rate)

    def trains_head(self, r: int) -> bool:
        """Whether round ``r``'s clients train the head (see :func:`trains_head`)."""
        return trains_head(self.config, self.workload, r)

    def finish_round(
        self,
        plan: RoundPlan,
        replies: Iterable[ClientReply],
        *,
        dropped: Sequence[Mapping[str, Any]] = (),
        reached: Iterable[int] | None = None,
        capture: bool = False,
    ) -> dict[str, Any]:
        """Screen, aggregate and apply the round's replies; record the ledger; return the metrics row.

        Parameters
        ----------
        plan
            What :meth:`configure_round` returned for this round.
        replies
            The replies that arrived (any order; one per client).
        dropped
            Clients the driver dropped before the server saw a reply (``{"client", "reason"}``).
        reached
            The clients the downlink reached and is charged to (default: all sampled clients).
        capture
            Keep the raw updates in :attr:`captures` under ``r{round}/c{client}/{tensor}`` (needs
            :attr:`raw_updates`).
        """
        r, cfg, wl = plan.round, self.config, self.workload
        t0 = self._t0 if self._t0 is not None else time.perf_counter()
        if capture and not self.raw_updates:
            raise ConfigError("this driver cannot capture updates: raw updates never reach the server")
        by_client = {rep.client: rep for rep in replies}
        ok = sorted(by_client)  # ascending client order, whatever order the replies came in
        reps = [by_client[c] for c in ok]
        weights = [rep.num_examples for rep in reps]
        refs = [plan.references.get(rep.client) for rep in reps]
        kept_idx, mean_lora, dense, screened = self._aggregate(
            reps, weights, train_head=plan.train_head, references=refs
        )
        dropped = [dict(d) for d in dropped] + screened
        for d in dropped:
            self.log.warning("round %d: dropped the reply of client %s: %s", r, d["client"], d["reason"])
        charged = plan.clients if reached is None else list(reached)
        traffic = self.ledger.record(
            r,
            {rep.client: len(rep.lora_payload) for rep in reps},
            {rep.client: len(rep.head_payload) for rep in reps},
            {c: plan.downlink_bytes[c] for c in charged},
        )
        if capture:
            for rep in reps:
                for name, t in wl.lora_spec.unflatten(_raw_update(rep)).items():
                    self.captures[f"r{r}/c{rep.client}/{name}"] = t.to(torch.float32).clone()

        train_s = time.perf_counter() - t0
        evaluate = r % cfg.fl.eval_every == 0 or r == cfg.fl.rounds
        ev = wl.evaluate(dict(self.lora), dict(self.head)) if evaluate else None
        kept = [reps[i] for i in kept_idx]
        kw = [weights[i] for i in kept_idx]
        rels = [rep.rel_error for rep in kept if rep.rel_error is not None]
        row = {
            "round": r,
            "clients": plan.clients,
            "num_examples": [by_client[c].num_examples if c in by_client else None for c in plan.clients],
            **traffic.row_columns(self.rows[-1] if self.rows else None, wl.lora_spec.numel, len(reps)),
            "train_loss": sum(w * rep.train_loss for w, rep in zip(kw, kept, strict=True)) / sum(kw)
            if kept
            else None,
            **eval_columns(ev, wl.metric_name),
            # The aggregate's error needs the raw updates (driver capability ``raw_updates``).
            "rel_error": None if dense is None or mean_lora is None else relative_error(dense, mean_lora),
            "client_rel_error": sum(rels) / len(rels) if rels else None,
            "residual_norms": [rep.residual_norm for rep in reps],
            "mean_update_norm": None if dense is None else float(dense.norm()),
            "uplink_rate": cfg.uplink_rate(r),  # fl.uplink_rates' rate for this round (None: the codec's)
            **self.downlink.row_columns(),  # how far the clients' broadcast state is from θ_global
            "aggregated": mean_lora is not None,
            "num_dropped": len(dropped),
            "dropped": dropped,
            "replied": ok,
            "kept": [rep.client for rep in kept],
            "lora_sha256": [hashlib.sha256(rep.lora_payload).hexdigest() for rep in reps],
            "head_sha256": [hashlib.sha256(rep.head_payload).hexdigest() for rep in reps],
            "client_s": {str(rep.client): rep.seconds for rep in reps},
            "train_s": train_s,
            "wall_s": time.perf_counter() - t0,
            # simulated time over the clients' links ([network]): compute + transfers of the slowest reply
            **sim_columns(
                cfg.network,
                self.rows[-1] if self.rows else None,
                {rep.client: rep.seconds for rep in reps},
                traffic.downlink,
                {c: n + traffic.uplink_head.get(c, 0) for c, n in traffic.uplink_lora.items()},
            ),
        }
        row["warnings"] = self.health.observe(row)
        log_warnings(self.log, r, row["warnings"], self.health)
        self.rows.append(row)
        self._t0 = None
        return row

    def _aggregate(
        self,
        replies: list[ClientReply],
        weights: list[int],
        *,
        train_head: bool = True,
        references: Sequence[torch.Tensor | None] | None = None,
    ) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None, list[dict[str, Any]]]:
        """Screen the replies (:mod:`.robust`), aggregate the kept ones and apply the update.

        :func:`~.robust.screen_and_aggregate` decodes each reply, screens it and (``"mean"``) adds it to an
        ``O(d)`` running sum, so the server holds the frames plus ``O(d)``, not ``K`` decoded updates.

        Returns the kept indices, the aggregated LoRA update (``None`` when the round is skipped), the dense
        reference mean of the kept raw updates (``None`` when skipped or without raw updates) and the
        dropped records.
        """
        fl, wl = self.config.fl, self.workload
        head_spec = wl.head_spec if train_head else _EMPTY  # a fixed head: its frames must be empty
        result = screen_and_aggregate(
            [
                ReplyPart([rep.lora_payload for rep in replies], wl.lora_spec, references),
                ReplyPart([rep.head_payload for rep in replies], head_spec),
            ],
            weights,
            method=fl.aggregation,
            trim_fraction=fl.trim_fraction,
            norm_bound_factor=fl.norm_bound_factor,
            clients=[rep.client for rep in replies],
            min_replies=self.min_replies,
            memory_mb=fl.aggregation_memory_mb,
            workers=fl.decode_workers,
        )
        kept, dropped = result.kept, result.dropped
        if result.means is None:  # too few valid replies: the model stays as it is
            return kept, None, None, dropped
        kw = [weights[i] for i in kept]
        mean_lora, mean_head = result.means
        step_lora = self.momentum.step("lora", mean_lora)
        self.lora = apply_update(self.lora, step_lora, wl.lora_spec, fl.server_lr)
        if train_head:
            step_head = self.momentum.step("head", mean_head)
            self.head = apply_update(self.head, step_head, wl.head_spec, fl.server_lr)
        dense = weighted_mean([_raw_update(replies[i]) for i in kept], kw) if self.raw_updates else None
        return kept, mean_lora, dense, dropped

    # -- checkpoint --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The server's state (the driver adds its clients' under ``"clients"`` when it keeps them)."""
        return {
            "format": 1,
            "round": self.done,
            "config": self.config.to_dict(),
            "lora_spec": self.workload.lora_spec.to_json(),
            "head_spec": self.workload.head_spec.to_json(),
            "lora": self.lora,
            "head": self.head,
            "downlink": self.downlink.state_dict(),
            "momentum": self.momentum.state_dict(),
            "ledger": self.ledger.to_dict(),
            "rows": self.rows,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the same config, except that ``fl.rounds`` may differ)."""
        if state.get("format") != 1:
            raise ConfigError("checkpoint has an unknown format; start a new run")
        if state["lora_spec"] != self.workload.lora_spec.to_json() or state["head_spec"] != (
            self.workload.head_spec.to_json()
        ):
            raise ConfigError("checkpoint was made with another model/adapter (its tensor specs differ)")
        check_same_config(state["config"], self.config.to_dict())
        self.lora, self.head = dict(state["lora"]), dict(state["head"])
        self.downlink.load_state_dict(state["downlink"])
        if "momentum" in state:
            self.momentum.load_state_dict(state["momentum"])
        self.ledger = TrafficLedger.from_dict(state["ledger"])
        self.rows = list(state["rows"])
        # The health checks are a pure function of the rows: replay them (older checkpoints' rows get theirs).
        self.health = RunHealth(error_feedback=self.config.fl.error_feedback)
        for row in self.rows:
            row.setdefault("warnings", self.health.observe(row))
        torch.set_rng_state(state["torch_rng"])


def at_rate(codec: Codec, rate: float) -> Codec:
    """A fresh ``codec`` with its target rate set to ``rate`` bits per parameter."""
    return get(codec.name, **with_rate(codec.name, codec.options(), rate))


def _raw_update(rep: ClientReply) -> torch.Tensor:
    """The reply's raw update, which a driver with :attr:`Federation.raw_updates` must pass."""
    if rep.raw_update is None:
        raise UsageError(
            f"the reply of client {rep.client} has no raw_update, but the driver declares raw_updates"
        )
    return rep.raw_update


def trains_head(config: RunConfig, workload: Workload, r: int) -> bool:
    """Whether round ``r``'s clients train the head (``model.head``: every round, round 1 or never); the
    server and a Flower node both ask this."""
    return workload.head_spec.numel > 0 and config.model.trains_head(r)


def check_same_config(saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Raise :class:`~fedsqueeze.ConfigError` unless ``saved`` equals ``now`` up to ``fl.rounds``."""
    # fl.rounds may grow (continue a finished run further); anything else would change the trajectory.
    diffs = RunConfig.from_dict(now).differences(saved)
    if diffs:
        raise ConfigError(f"--resume with a different config ({', '.join(diffs)}); only fl.rounds may change")

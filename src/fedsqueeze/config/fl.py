"""``[fl]``: the federated schedule, screening and aggregation (:class:`FLConfig`)."""

from __future__ import annotations

import dataclasses

from ..aggregation import AGGREGATIONS  # the names of the one registry of aggregation rules
from ..errors import ConfigError
from .fields import POSITIVE, Range, setting, validate
from .sections import register_section

CATCH_UP = ("frames", "reencode")  # fl.downlink_catch_up; fedsqueeze.fl.server.Downlink implements them
CATCH_UP_RATES = ("fixed", "by_staleness")  # fl.downlink_catch_up_rate (re-encoded catch-up only)

__all__ = ["FLConfig"]


@dataclasses.dataclass(frozen=True)
class FLConfig:
    """The federated schedule.

    Parameters
    ----------
    rounds
        Number of server rounds.
    clients_per_round
        ``K`` clients sampled uniformly without replacement each round (seeded).
    server_lr
        Server learning rate: ``θ ← θ − server_lr · ū`` with ``ū`` the weighted mean update.
    server_momentum
        FedAvgM (Hsu et al. 2019): ``m ← β m + ū``, ``θ ← θ − server_lr · m``; 0 is plain FedAvg. Damps the
        client drift of label-skewed (Dirichlet) partitions.
    seed
        Run seed: sampling, local training and encoding seeds derive from it.
    error_feedback
        Keep a per-client residual of what the codec dropped and add it next time.
    eval_every
        Evaluate every this many rounds (and always after the last one).
    target_metric
        Optional target of the evaluation metric: a fraction in ``[0, 1]`` for accuracy or exact match
        (reached at or above it), or a held-out loss for a lower-is-better task (reached at or below it);
        the summary reports rounds and bytes to reach it. A number ``>= 0``.
    min_replies
        Minimum valid replies (after screening, see :mod:`fedsqueeze.fl.robust`) for a round to change the
        model; with fewer the round leaves the model unchanged. ``None``: at least one.
    norm_bound_factor
        Drop a reply whose update norm exceeds this many times the round's median norm (``0``/``None``:
        no bound). Undecodable and non-finite replies are always dropped.
    aggregation
        ``"mean"`` (sample-weighted FedAvg), ``"median"`` or ``"trimmed_mean"`` (coordinate-wise, robust).
    trim_fraction
        Fraction of clients trimmed at each end of every coordinate by ``"trimmed_mean"``, in ``[0, 0.5)``.
    aggregation_memory_mb
        Memory budget (MiB) of the robust rules: ``"median"`` and ``"trimmed_mean"`` hold every decoded
        update of the round at once, about 28 bytes per value (``O(K·d)``), and a run whose
        ``clients_per_round × d`` would need more stops with a one-line error instead of swapping.
        ``"mean"`` streams each reply into an ``O(d)`` sum and ignores it.
    decode_workers
        Threads that decode the round's replies in parallel (the result is the same for any count: the
        replies are summed in client order). Each thread holds one decoded reply.
    downlink_window
        With a compressed downlink: how many rounds of broadcast frames the server keeps so that a client
        that missed rounds can catch up frame by frame. A client whose copy is older (or lost) gets one
        dense resync instead. Server memory grows with this window, not with the number of clients.
    downlink_catch_up
        With a compressed downlink, how a client that missed rounds catches up: ``"frames"``, every frame it
        missed (it ends exactly on the broadcast state), or ``"reencode"``, one frame that codes the
        difference between the broadcast state and its copy (it ends near it, and the error is carried into
        its next catch-up). ``"reencode"`` sends one frame per sampled client instead of one per missed
        round, and keeps a copy of the LoRA per client on the server; where those copies could exceed
        2 GiB (clients × LoRA size × 4 bytes), the run catches up frame by frame instead and logs it.
    downlink_catch_up_rate
        With ``downlink_catch_up = "reencode"``, the rate of a re-encoded catch-up frame: ``"fixed"``, the
        downlink codec's own; ``"by_staleness"``, that rate plus ``log2`` of how much larger the gap it
        codes (``‖θ̃ − copy‖``) is than the round's broadcast step, in quarter bits, from +0 to +3 bits
        per parameter. A codec whose error halves per extra bit then leaves a client that missed rounds
        about as far from ``θ̃`` as one that missed none. Needs a downlink codec with a ``rate`` option
        (``wf_ecq``, ``topk``, ...).
    uplink_rates
        A rate schedule for the uplink codec, in bits per parameter: round ``i`` (from 1) codes its
        updates at the ``i``-th rate, every round after the list at its last one; empty (the default): the
        codec's own rate throughout. More bits early and fewer late is ``[2, 2, 1, 1, 0.5]``. Needs an
        uplink codec with a rate option (``wf_ecq``, ``topk``, ...). A stateful codec (``flm_topk``,
        ``powersgd``) starts its state afresh when the rate changes; error feedback carries over.
    """

    rounds: int = setting(12, range=Range(1))
    clients_per_round: int = setting(4, range=Range(1), allowed="1..data.num_clients")
    server_lr: float = setting(0.3, range=POSITIVE)
    server_momentum: float = setting(0.7, range=Range(0, 1))
    seed: int = setting(0, range=Range(0, 2**63, text="[0, 2**63)"))
    error_feedback: bool = True
    eval_every: int = setting(1, range=Range(1))
    target_metric: float | None = 0.8
    min_replies: int | None = setting(None, allowed="1..fl.clients_per_round")
    norm_bound_factor: float | None = setting(10.0, allowed="0 (off) or >= 1")
    aggregation: str = setting("mean", choices=AGGREGATIONS)
    trim_fraction: float = setting(0.1, range=Range(0, 0.5))
    aggregation_memory_mb: float = setting(8192.0, range=POSITIVE)
    decode_workers: int = setting(1, range=Range(1))
    downlink_window: int = setting(32, range=Range(1))
    downlink_catch_up: str = setting("reencode", choices=CATCH_UP)
    downlink_catch_up_rate: str = setting("fixed", choices=CATCH_UP_RATES)
    uplink_rates: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        validate(self, "fl")
        object.__setattr__(self, "uplink_rates", tuple(self.uplink_rates))
        bad = [r for r in self.uplink_rates if isinstance(r, bool) or not 0 < r < float("inf")]
        if bad:
            raise ConfigError(f"fl.uplink_rates holds rates > 0 in bits per parameter, got {bad[0]!r}")
        if self.target_metric is not None and not (
            isinstance(self.target_metric, int | float)
            and not isinstance(self.target_metric, bool)
            and 0 <= self.target_metric < float("inf")
        ):
            got = (
                f"{self.target_metric:g}"
                if isinstance(self.target_metric, float)
                else repr(self.target_metric)
            )
            raise ConfigError(
                f"fl.target_metric is a number >= 0 like the metric (e.g. 0.72 for 72% accuracy, or a "
                f"held-out loss), got {got}"
            )
        if self.min_replies is not None and not 1 <= self.min_replies <= self.clients_per_round:
            raise ConfigError(
                f"fl.min_replies must be in 1..fl.clients_per_round ({self.clients_per_round}), "
                f"got {self.min_replies}"
            )
        if self.norm_bound_factor is not None and not (
            self.norm_bound_factor == 0 or self.norm_bound_factor >= 1
        ):
            raise ConfigError(f"fl.norm_bound_factor must be 0 (off) or >= 1, got {self.norm_bound_factor}")


register_section("fl", FLConfig)

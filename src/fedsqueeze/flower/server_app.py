"""The Flower ``ServerApp`` of ``fedsqueeze flower ...``: the one driver over a Flower grid.

The outer loop (checkpoint after every round, resume, the phases before the rounds such as TGAP, metrics and
outputs) is :func:`fedsqueeze.fl.driver.drive`, the same as ``fedsqueeze run``'s. What differs is the
transport: each round calls the server strategy's ``configure_train``
(``Compressed(FederationStrategy(...), codec=None)``: the federation core as a Flower ``Strategy``, wrapped
like any strategy of the drop-in; it decodes the replies' frames itself), sends those
messages with ``grid.send_and_receive`` (waiting up to ``round-timeout`` seconds) and hands the replies to
its ``aggregate_train``. The outputs are those of ``fedsqueeze run``, except ``rel_error`` and
``mean_update_norm``, which need the raw updates that never leave the clients (``None`` here). With fewer
valid replies than ``fl.min_replies`` the model is left unchanged for that round.

The checkpoint is the federation's state plus the job id the nodes key their state by. Nodes with a state dir
keep a version of their state per round (:mod:`.client_app`), so a resumed job equals the uninterrupted one
bit for bit; a node without one (``durable = false`` in its ``query`` reply) starts from a zero residual and,
when the job resumed, gets the dense state the first time it is sampled.

Replies are untrusted: anything malformed is dropped with its reason in the row's ``dropped``
(:func:`~.job_strategy.read_reply`); it never stops the job."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import Strategy

from ..errors import ConfigError
from ..fl.driver import Outputs, Rounds, drive
from ..fl.federation import Federation
from ..fl.final import FINAL_PARAMS
from ..fl.hooks import RunContext
from ..fl.loop import simulate
from .env import apply_offline_env
from .job_strategy import FederationStrategy, GridLike
from .settings import FlowerSettings, check_job_out_dir, default_out_dir, make_workload, settings_from_context

__all__ = ["GridLike", "app", "run_rounds"]

log = logging.getLogger("fedsqueeze.flower")

app = ServerApp()


class _GridRounds:
    """The Flower transport of the driver (a :class:`~fedsqueeze.fl.driver.Rounds`): the strategy's
    ``configure_train`` → ``grid.send_and_receive`` → ``aggregate_train``, with the job's strategy wrapped
    in :class:`~.strategy.Compressed` (which hands it the replies' frames intact)."""

    def __init__(self, job: FederationStrategy, grid: GridLike, timeout: float) -> None:
        from .strategy import Compressed

        self.job, self.grid, self.timeout = job, grid, timeout
        self.strategy = Compressed(job, codec=None)

    @property
    def fed(self) -> Federation:
        return self.job.fed

    def run_round(self, r: int, capture: bool) -> dict[str, Any]:
        if capture:
            raise ConfigError("this driver cannot capture updates: raw updates never reach the server")
        grid: Any = self.grid  # a flwr Grid, or a test's fake with the same two methods
        msgs = list(self.strategy.configure_train(r, ArrayRecord(), ConfigRecord(), grid))
        answers = list(self.grid.send_and_receive(msgs, timeout=self.timeout)) if msgs else []
        self.strategy.aggregate_train(r, answers)
        assert self.job.last_row is not None, "aggregate_train records the round's row"
        return self.job.last_row

    def state_dict(self) -> dict[str, Any]:
        return self.job.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.job.load_state_dict(state)


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


def run_rounds(
    grid: GridLike,
    settings: FlowerSettings,
    out_dir: str | Path | None = None,
    *,
    strategy: Strategy | None = None,
) -> dict[str, Any]:
    """Run ``fl.rounds`` rounds over ``grid``; write ``metrics.jsonl`` / ``summary.json`` / the plot, and
    ``checkpoint/`` after every round.

    ``strategy``: a stock Flower strategy (``FedAdam``, a DP wrapper around ``FedAvg``, ...) to run the job
    with instead of fedsqueeze's own (:class:`~.job_strategy.FederationStrategy`); it is wrapped in
    :class:`~.strategy.Compressed` with the job's codecs, and the rows are those of
    :mod:`.stock_rounds` (such a job does not resume).

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

    def transport(ctx: RunContext) -> Rounds:
        if strategy is not None:
            from .stock_rounds import StrategyRounds, compressed_for

            return StrategyRounds(compressed_for(strategy, settings), settings, ctx, grid)
        return _GridRounds(FederationStrategy(settings, ctx), grid, settings.round_timeout)

    return drive(
        cfg, out, transport, workload=wl, simulate=simulate,
        resume=settings.resume, outputs=outputs, t_start=t_start, on_start=wait,
    )  # fmt: skip


FINAL = FINAL_PARAMS


def _flwr_version() -> str:
    from importlib import metadata

    return metadata.version("flwr")

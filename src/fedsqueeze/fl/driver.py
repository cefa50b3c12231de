"""The one outer loop of every run: checkpoint, resume, hooks, metrics and outputs, written once.

A run's rounds reach their clients through a *transport* (:class:`Rounds`): the in-process client steps of
``fedsqueeze run`` (:mod:`.loop`) or ``grid.send_and_receive`` of the Flower ServerApp
(:mod:`fedsqueeze.flower.server_app`). Everything around the rounds is here and the same for both:

1. refuse what cannot continue (``resume`` without the folder, a run in the folder without ``resume``);
2. run the phases before the rounds (:mod:`.hooks`, e.g. CG-FedLLM's TGAP pre-training), which may hand the
   rounds another workload and uplink codec;
3. build the transport on the :class:`~.federation.Federation` core and, on ``resume``, load its checkpoint;
4. per round: run it, append its row to ``metrics.jsonl``, save the checkpoint, call every hook's
   ``after_round``;
5. write the summary, the final model and the plot (:func:`.summary.write_run_outputs`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..config import RunConfig
from .checkpoint import append_jsonl, load_checkpoint, save_checkpoint, write_jsonl
from .federation import Federation
from .hooks import RunContext, RunHook, hooks_for
from .report import device_name
from .summary import write_run_outputs
from .workload import Workload

__all__ = ["Outputs", "Rounds", "check_job_out_dir", "drive", "play"]

log = logging.getLogger(__name__)


class Rounds(Protocol):
    """A transport: how a driver reaches the clients of one round.

    ``fed`` is the federation core; ``run_round`` configures the round, delivers it, collects the replies
    and returns :meth:`~.federation.Federation.finish_round`'s row. ``state_dict`` is the whole checkpoint
    (the core's state plus the transport's own part); ``load_state_dict`` refuses another transport's.
    """

    @property
    def fed(self) -> Federation: ...

    def run_round(self, r: int, capture: bool) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What a transport adds to the run's outputs: the summary's ``engine``, the plot's title suffix,
    driver-specific summary fields and package versions (:func:`.summary.write_run_outputs`)."""

    engine: str = "local"
    title_suffix: str = ""
    extra: Mapping[str, Any] | None = None
    versions: Mapping[str, str] | None = None


def check_job_out_dir(out: Path, resume: bool, markers: tuple[str, ...] = ("checkpoint",)) -> None:
    """Refuse ``resume`` without ``out``, and a run in ``out`` without ``resume``.

    Parameters
    ----------
    out
        The run's output folder.
    resume
        Whether the run continues the one in ``out``.
    markers
        Names in ``out`` that mark it as holding a run.

    Raises
    ------
    ConfigError
        With a one-line message that says how to go on.
    """
    from ..errors import ConfigError

    if resume and not out.is_dir():
        raise ConfigError(
            f"--resume: {out} does not exist, so there is no run to continue; drop --resume to start one"
        )
    if resume and not any(out.iterdir()):
        raise ConfigError(
            f"--resume: {out} is empty, so there is no run to continue; drop --resume to start one"
        )
    if not resume and any((out / name).exists() for name in markers):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")


def play(
    rounds: Rounds,
    last: int,
    *,
    out: Path | None = None,
    capture: Callable[[int], bool] = lambda r: False,
    hooks: list[RunHook] | tuple[RunHook, ...] = (),
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run rounds ``rounds.fed.done + 1 .. last``.

    With ``out`` every row is appended to ``out/metrics.jsonl`` and the checkpoint saved after each round
    (``None``: nothing is written, e.g. a phase's own rounds). ``capture(r)`` says whether round ``r`` keeps
    its raw updates; every hook's ``after_round`` and then ``on_row`` see each row.
    """
    for r in range(rounds.fed.done + 1, last + 1):
        row = rounds.run_round(r, capture(r))
        if out is not None:
            append_jsonl(out / "metrics.jsonl", row)
            save_checkpoint(out, rounds.state_dict())
        for hook in hooks:
            hook.after_round(rounds.fed, row)
        if on_row is not None:
            on_row(row)


NOT_LOADED = object()  # drive's ``checkpoint`` default: load it from ``out`` on resume


def drive(
    config: RunConfig,
    out: Path,
    transport: Callable[[RunContext], Rounds],
    *,
    workload: Workload,
    simulate: Callable[..., Federation],
    resume: bool = False,
    progress: bool = False,
    outputs: Outputs = Outputs(),
    t_start: float | None = None,
    capture: Callable[[int], bool] = lambda r: False,
    on_start: Callable[[Rounds], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: Mapping[str, Any] | object | None = NOT_LOADED,
) -> dict[str, Any]:
    """Run ``config`` to its last round through ``transport`` and write every output to ``out``.

    Parameters
    ----------
    config
        The resolved run config.
    out
        The run folder (checked with :func:`check_job_out_dir`).
    transport
        Builds the rounds from the run context, after the hooks' ``before_rounds`` (``ctx.workload``,
        ``ctx.codec`` and ``ctx.client_config`` are then final).
    workload
        The model + data of the run (a hook may replace it for the rounds).
    simulate
        In-process rounds for the hooks' own phases (:attr:`~.hooks.RunContext.simulate`).
    resume
        Continue from ``out/checkpoint`` (one without a checkpoint yet starts from round 1).
    progress
        Passed to the hooks (the transport shows its own progress).
    outputs
        The transport's part of the outputs.
    t_start
        ``time.perf_counter()`` when the invocation started (default: now).
    capture
        Whether round ``r`` keeps its raw updates.
    on_start
        Called with the transport before the first round of this invocation, after a checkpoint was loaded
        (e.g. to restore captures, start a progress bar or wait for the clients).
    on_row
        Called with every round's row, after the checkpoint (progress, log lines).
    checkpoint
        The checkpoint of ``out`` when the caller already loaded it (``None``: there is none), so that a
        damaged one is refused before the model is built; by default ``drive`` loads it on ``resume``.

    Returns
    -------
    dict
        The summary (also written to ``summary.json``).

    Raises
    ------
    ConfigError
        A folder that cannot be continued or started; a checkpoint of another config or transport, or past
        ``fl.rounds``.
    """
    from ..errors import ConfigError

    t0 = time.perf_counter() if t_start is None else t_start
    check_job_out_dir(out, resume)
    if checkpoint is NOT_LOADED:
        checkpoint = load_checkpoint(out) if resume else None
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else None
    if resume and ckpt is None:
        log.info("%s holds no checkpoint yet (stopped in its first round): starting from round 1", out)
    load_s = time.perf_counter() - t0  # model + data loading of this invocation
    ctx = RunContext(config, out, resume, progress, simulate, workload)
    hooks = hooks_for(config)
    for hook in hooks:
        hook.before_rounds(ctx)
    rounds = transport(ctx)
    fed = rounds.fed
    if ckpt is not None:
        rounds.load_state_dict(ckpt)
        if fed.done > config.fl.rounds:
            raise ConfigError(
                f"the checkpoint is at round {fed.done}, past fl.rounds = {config.fl.rounds}; resume without "
                f"CONFIG to continue with the run's own config, or --set fl.rounds={fed.done} or more"
            )
        log.info("resuming %s after round %d", out, fed.done)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "metrics.jsonl", fed.rows)  # on resume: drop rows after the checkpoint
    if on_start is not None:
        on_start(rounds)
    play(rounds, config.fl.rounds, out=out, capture=capture, hooks=hooks, on_row=on_row)
    title = f"{config.model.name} / {config.data.dataset} / {config.codec.name}{outputs.title_suffix}"
    return write_run_outputs(
        fed, out, engine=outputs.engine, t_start=t0, load_s=load_s, title=title, pre_traffic=ctx.pre_traffic,
        extra=outputs.extra, versions={"device": device_name(getattr(workload, "device", "cpu")),
                                       **(outputs.versions or {})},
    )  # fmt: skip

"""``fedsqueeze.fl.run``: the in-process transport of the one driver (:mod:`.driver`), which writes the
outputs and checkpoints and resumes.

One round: sample K of N clients (seeded) → download the global state (:class:`~.server.Downlink`, counted)
→ each client trains and sends ``C(u + e)`` plus a dense head frame (:func:`~.client.client_step`) → the
server decodes the bytes, takes the sample-weighted mean and applies ``θ ← θ − server_lr · ū``
(:mod:`~.server`). Every seed derives from ``fl.seed`` (:mod:`~.seeding`), so a run is a pure function of its
config, and a resumed run equals the uninterrupted one bit for bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .._extras import check
from ..codecs import ErrorFeedback
from ..config import RunConfig
from ..errors import ConfigError
from ..out_paths import check_out_dir
from ..safetensors_errors import reading_safetensors
from .checkpoint import load_checkpoint, save_captures
from .client import ClientReply, client_step
from .driver import check_job_out_dir, drive, play
from .federation import Federation
from .hooks import RunContext
from .report import Progress
from .workload import Workload

__all__ = ["build_workload", "default_out_dir", "parse_capture_rounds", "run", "simulate"]

CAPTURES = "captures.safetensors"
log = logging.getLogger(__name__)


def default_out_dir(config: RunConfig) -> Path:
    """``runs/<timestamp>-<codec>`` under the current directory."""
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{config.codec.name}"


def parse_capture_rounds(spec: str | Iterable[int] | None) -> frozenset[int] | str:
    """``"1,2,5"`` → ``{1, 2, 5}``; ``"all"`` → ``"all"``; ``None`` → no rounds."""
    if spec is None:
        return frozenset()
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return "all"
        try:
            rounds = frozenset(int(p) for p in spec.split(",") if p.strip())
        except ValueError:
            raise ConfigError(f"--capture-updates expects e.g. 1,2,5 or all, got {spec!r}") from None
    else:
        rounds = frozenset(int(r) for r in spec)
    if any(r < 1 for r in rounds):
        raise ConfigError(f"--capture-updates: rounds start at 1, got {sorted(rounds)}")
    return rounds


def build_workload(config: RunConfig) -> Workload:
    """The workload of ``config``: the in-code toy for ``model.name = "toy"``, else the real model and data.

    What ``fedsqueeze run`` builds; the study runner and the Flower apps build theirs with it too.
    """
    if config.model.name == "toy":  # tiny synthetic workload (tests, crash/determinism checks)
        from .toy import ToyWorkload

        return ToyWorkload(
            config.data.num_clients, rank=config.model.lora_r, alpha=config.data.alpha, seed=config.fl.seed
        )
    # Imported here: the real workload pulls in transformers, the loop itself must not.
    from ..models.workload import build_workload as build_model_workload

    return build_model_workload(config.model, config.data, seed=config.fl.seed)


class _Federation(Federation):
    """The local driver's transport (a :class:`~.driver.Rounds`): the core (:class:`~.federation.Federation`)
    plus its in-process clients' error-feedback states; ``state_dict`` is the checkpoint."""

    def __init__(
        self, config: RunConfig, workload: Workload, codec: Any = None, captures: Path | None = None
    ) -> None:
        # ``codec``: the uplink codec when it is not ``config.codec.build()`` (a phase of the run, e.g. TGAP,
        # sets the trained model's path, not the user's config, which stays what the checkpoint compares).
        codec = codec if codec is not None else config.codec.build()
        super().__init__(config, workload, codec=codec, raw_updates=True, logger=log)
        self.efs = [ErrorFeedback(codec, enabled=config.fl.error_feedback) for _ in range(self.n)]
        self.on_client: Any = None  # r -> per-client progress callback (see run_round)
        self.captures_path = captures  # where captured rounds go (before the round's row is written)

    @property
    def fed(self) -> Federation:
        """The federation core (itself: the local transport is a :class:`~.federation.Federation`)."""
        return self

    def run_round(self, r: int, capture: bool) -> dict[str, Any]:
        """One round with the clients in-process; ``self.on_client(r)``, when set, gives the
        ``(i, k, client, seconds)`` callback called after each of the round's ``k`` clients (progress)."""
        on_client = self.on_client(r) if self.on_client is not None else None
        plan = self.configure_round(r)
        replies: list[ClientReply] = []
        codec = self.uplink_codec(r)  # fl.uplink_rates: this round's rate (else the run's codec, a no-op)
        for i, c in enumerate(plan.clients, 1):
            tc = time.perf_counter()
            self.efs[c].set_codec(codec)
            rep = client_step(
                self.workload, c, plan.lora_of(c), plan.head, self.config.train, self.efs[c],
                train_seed=plan.train_seed(c), encode_seed=plan.encode_seed(c), train_head=plan.train_head,
                reference=plan.references.get(c),
            )  # fmt: skip
            rep.seconds = took = time.perf_counter() - tc
            replies.append(rep)
            log.info("round %d: client %d (%d/%d) done in %.1f s", r, c, i, len(plan.clients), took)
            if on_client is not None:
                on_client(i, len(plan.clients), c, took)
        row = self.finish_round(plan, replies, capture=capture)
        if capture and self.captures_path is not None:
            save_captures(self.captures_path, self.captures)
        return row

    # -- checkpoint --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "clients": [ef.state_dict() for ef in self.efs]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "flower" in state:
            out = self.captures_path.parent if self.captures_path is not None else "this folder"
            raise ConfigError(
                f"{out} holds a Flower job's checkpoint; continue it with `fedsqueeze flower simulate "
                "--resume` (or `fedsqueeze flower run --resume`)"
            )
        super().load_state_dict(state)
        for ef, st in zip(self.efs, state["clients"], strict=True):
            ef.load_state_dict(st)


def simulate(config: RunConfig, workload: Workload, *, progress: bool = False) -> Federation:
    """Run every round of ``config`` with in-process clients, capturing each raw update; return the
    federation (its ``rows``, ``ledger`` and ``captures``). Writes nothing (phases of a run use it)."""
    fed = _Federation(config, workload)
    bar = Progress(config.fl.rounds, 0, enabled=progress)
    fed.on_client = bar.client_hook
    try:
        play(fed, config.fl.rounds, capture=lambda r: True, on_row=bar.update)
    finally:
        bar.close()
    return fed


def _load_captures(path: Path, upto: int) -> dict[str, torch.Tensor]:
    if not path.is_file():
        return {}
    from safetensors.torch import load_file

    with reading_safetensors(path, "delete it to resume without the captures of the earlier rounds"):
        tensors = load_file(str(path))
    return {k: v for k, v in tensors.items() if int(k.split("/", 1)[0][1:]) <= upto}


def run(
    config: RunConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    capture_rounds: str | Iterable[int] | None = None,
    workload: Workload | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run federated fine-tuning and write ``metrics.jsonl``, ``summary.json``, the plot and the final model
    (``final_params.safetensors``, ``final_adapter/`` in PEFT's format: :mod:`~.final`) to ``out_dir``.

    Parameters
    ----------
    config
        The resolved run config.
    out_dir
        Output folder (default ``runs/<timestamp>-<codec>``); a checkpoint is written there after every round.
    resume
        Continue from ``out_dir/checkpoint`` (the same config, except that ``fl.rounds`` may grow); the
        result equals the uninterrupted run bit for bit. A missing ``out_dir`` is an error; one without a
        checkpoint yet (a run stopped in its first round) starts fresh. A damaged checkpoint (checked
        against its SHA-256) is an error that says how to go on.
    capture_rounds
        Rounds whose raw client updates (before error feedback and compression) go to
        ``out_dir/captures.safetensors`` under ``r{round}/c{client}/{tensor}``: ``"1,2,5"``, ``"all"``
        or ints.
    workload
        The model + data (default: ``fedsqueeze.models.workload.build_workload`` from the config).
    progress
        Show a progress bar on stderr.

    Notes
    -----
    With ``config.tgap.enabled`` the TGAP phase (:mod:`fedsqueeze.cg_fedllm.tgap_phase`, a
    :class:`~.hooks.RunHook`) runs first on each client's ``tgap.fraction`` share, writes ``out_dir/tgap/``
    and the rounds then run on the rest with the trained autoencoder; the summary's ``tgap_traffic`` and
    totals count its bytes (see :func:`~.report.include_tgap`). On ``resume`` a finished TGAP phase of the
    same run is reused.

    Every round is checked by :class:`~.health.RunHealth` (reconstruction error at 1 or more, error-feedback
    residuals growing geometrically): a row's ``warnings`` lists that round's, logged at WARNING when a code
    starts firing, and the summary's ``warnings`` lists each code once with the rounds it held in.

    Returns
    -------
    dict
        The summary (also written to ``summary.json``).
    """
    t_start = time.perf_counter()
    out = check_out_dir(out_dir, "out_dir") if out_dir is not None else default_out_dir(config)
    captures = parse_capture_rounds(capture_rounds)
    check("matplotlib", "plots", "the accuracy plot of a run")  # now, not after the last round
    if progress:
        check("rich", "cli", "the progress bar")
    past = sorted(r for r in captures if r > config.fl.rounds) if isinstance(captures, frozenset) else []
    if past:
        raise ConfigError(
            f"--capture-updates: round(s) {', '.join(map(str, past))} are past the last round "
            f"(fl.rounds = {config.fl.rounds}); capture rounds 1..{config.fl.rounds} or 'all'"
        )
    check_job_out_dir(out, resume)  # before the workload is built: a refusal should be quick
    ckpt = load_checkpoint(out) if resume else None  # so is a damaged checkpoint's
    wl = workload if workload is not None else build_workload(config)
    bar = Progress(config.fl.rounds, 0, enabled=False)

    def transport(ctx: RunContext) -> _Federation:
        fed = _Federation(config, ctx.workload, ctx.codec, captures=out / CAPTURES)
        fed.on_client = lambda r: bar.client_hook(r)
        return fed

    def start(rounds: Any) -> None:
        nonlocal bar
        rounds.fed.captures = _load_captures(out / CAPTURES, rounds.fed.done) if resume else {}
        bar = Progress(config.fl.rounds, rounds.fed.done, enabled=progress)

    try:
        return drive(
            config, out, transport, workload=wl, simulate=simulate, resume=resume, progress=progress,
            t_start=t_start, on_start=start, on_row=lambda row: bar.update(row),
            capture=lambda r: captures == "all" or (isinstance(captures, frozenset) and r in captures),
            checkpoint=ckpt,
        )  # fmt: skip
    finally:
        bar.close()

"""``fedsqueeze.fl.run``: the local federated round loop, with outputs, checkpoints and resume.

One round: sample K of N clients (seeded) → download the global state (:class:`~.server.Downlink`, counted)
→ each client trains and sends ``C(u + e)`` plus a dense head frame (:func:`~.client.client_step`) → the
server decodes the bytes, takes the sample-weighted mean and applies ``θ ← θ − server_lr · ū``
(:mod:`~.server`). Every seed derives from ``fl.seed`` (:mod:`~.seeding`), so a run is a pure function of its
config, and a resumed run equals the uninterrupted one bit for bit.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .._extras import check
from ..codecs import ErrorFeedback
from ..errors import ConfigError
from ..out_paths import check_out_dir
from ..safetensors_errors import reading_safetensors
from .checkpoint import (
    append_jsonl,
    load_checkpoint,
    save_captures,
    save_checkpoint,
    write_json,
    write_jsonl,
)
from .client import ClientReply, client_step, relative_error
from .config import RunConfig
from .final import save_final
from .health import RunHealth, log_warnings
from .ledger import TrafficLedger
from .report import (
    Progress,
    eval_columns,
    include_tgap,
    package_versions,
    plot_metric_vs_uplink,
    summarize,
    traffic_totals,
)
from .robust import aggregate, merge_screens, screen_replies
from .seeding import derive_seed, sample_clients
from .server import Downlink, ServerMomentum, apply_update, weighted_mean
from .workload import Workload

__all__ = ["default_out_dir", "parse_capture_rounds", "run"]

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


def _build_workload(config: RunConfig) -> Workload:
    if config.model.name == "toy":  # tiny synthetic workload (tests, crash/determinism checks)
        from .toy import ToyWorkload

        return ToyWorkload(
            config.data.num_clients, rank=config.model.lora_r, alpha=config.data.alpha, seed=config.fl.seed
        )
    # Imported here: the real workload pulls in transformers, the loop itself must not.
    from ..models.workload import build_workload

    return build_workload(config.model, config.data, seed=config.fl.seed)


class _Federation:
    """The server's whole state; ``state_dict`` is the checkpoint."""

    def __init__(self, config: RunConfig, workload: Workload, codec: Any = None) -> None:
        # ``codec``: the uplink codec when it is not ``config.codec.build()`` (the TGAP-trained model's path
        # is set by the run, not by the user's config, which stays what the checkpoint compares).
        self.config, self.workload = config, workload
        self.n = workload.num_clients()
        if config.fl.clients_per_round > self.n:
            raise ConfigError(
                f"fl.clients_per_round ({config.fl.clients_per_round}) exceeds {self.n} clients"
            )
        self.lora, self.head = workload.initial_params()
        self.momentum = ServerMomentum(config.fl.server_momentum)
        codec = codec if codec is not None else config.codec.build()
        self.codec_options = codec.options()
        self.efs = [ErrorFeedback(codec, enabled=config.fl.error_feedback) for _ in range(self.n)]
        self.downlink = Downlink(
            config.downlink.build(), workload.lora_spec, workload.head_spec, self.lora, self.n
        )
        self.ledger = TrafficLedger()
        self.rows: list[dict[str, Any]] = []
        self.health = RunHealth(error_feedback=config.fl.error_feedback)
        self.captures: dict[str, torch.Tensor] = {}
        self.on_client: Any = None  # r -> per-client progress callback (see run_round)

    @property
    def done(self) -> int:
        return len(self.rows)

    def run_round(self, r: int, capture: bool) -> dict[str, Any]:
        """One round; ``self.on_client(r)``, when set, gives the ``(i, k, client, seconds)`` callback called
        after each of the round's ``k`` clients (progress)."""
        cfg, wl = self.config, self.workload
        on_client = self.on_client(r) if self.on_client is not None else None
        t0 = time.perf_counter()
        seed = cfg.fl.seed
        clients = sample_clients(seed, r, self.n, cfg.fl.clients_per_round)
        lora0, head0, down = self.downlink.broadcast(
            r, self.lora, self.head, clients, seed=derive_seed(seed, r, -1, "downlink")
        )
        replies: list[ClientReply] = []
        for i, c in enumerate(clients, 1):
            tc = time.perf_counter()
            replies.append(
                client_step(
                    wl, c, lora0, head0, cfg.train, self.efs[c],
                    train_seed=derive_seed(seed, r, c, "train"),
                    encode_seed=derive_seed(seed, r, c, "encode"),
                )
            )  # fmt: skip
            took = time.perf_counter() - tc
            log.info("round %d: client %d (%d/%d) done in %.1f s", r, c, i, len(clients), took)
            if on_client is not None:
                on_client(i, len(clients), c, took)
        weights = [rep.num_examples for rep in replies]
        kept, mean_lora, dense, dropped = self._aggregate(replies, weights)
        traffic = self.ledger.record(
            r,
            {rep.client: len(rep.lora_payload) for rep in replies},
            {rep.client: len(rep.head_payload) for rep in replies},
            down,
        )
        if capture:
            for rep in replies:
                for name, t in wl.lora_spec.unflatten(rep.raw_update).items():
                    self.captures[f"r{r}/c{rep.client}/{name}"] = t.to(torch.float32).clone()

        train_s = time.perf_counter() - t0
        evaluate = r % cfg.fl.eval_every == 0 or r == cfg.fl.rounds
        ev = wl.evaluate(dict(self.lora), dict(self.head)) if evaluate else None
        kept_replies = [replies[i] for i in kept]
        kept_w = [weights[i] for i in kept]
        rels = [rep.rel_error for rep in kept_replies if rep.rel_error is not None]
        row = {
            "round": r,
            "clients": clients,
            "num_examples": weights,
            **traffic.row_columns(self.rows[-1] if self.rows else None, wl.lora_spec.numel, len(replies)),
            "train_loss": sum(w * rep.train_loss for w, rep in zip(kept_w, kept_replies, strict=True))
            / sum(kept_w)
            if kept
            else None,
            **eval_columns(ev, wl.metric_name),
            "rel_error": None if dense is None else relative_error(dense, mean_lora),
            "client_rel_error": sum(rels) / len(rels) if rels else None,
            "residual_norms": [rep.residual_norm for rep in replies],
            "mean_update_norm": None if dense is None else float(dense.norm()),
            "aggregated": dense is not None,
            "num_dropped": len(dropped),
            "dropped": dropped,
            "lora_sha256": [hashlib.sha256(rep.lora_payload).hexdigest() for rep in replies],
            "head_sha256": [hashlib.sha256(rep.head_payload).hexdigest() for rep in replies],
            "train_s": train_s,
            "wall_s": time.perf_counter() - t0,
        }
        row["warnings"] = self.health.observe(row)
        log_warnings(log, r, row["warnings"], self.health)
        self.rows.append(row)
        return row

    def _aggregate(
        self, replies: list[ClientReply], weights: list[int]
    ) -> tuple[list[int], torch.Tensor, torch.Tensor | None, list[dict[str, Any]]]:
        """Screen the replies (:mod:`.robust`), aggregate the kept ones and apply the update.

        Returns the kept indices, the aggregated LoRA update (zeros when the round is skipped), the dense
        reference mean of the kept raw updates (``None`` when skipped) and the dropped records.
        """
        fl, wl = self.config.fl, self.workload
        clients = [rep.client for rep in replies]
        screens = [
            screen_replies(
                [getattr(rep, part) for rep in replies], weights, spec,
                norm_bound_factor=fl.norm_bound_factor, clients=clients,
            )
            for part, spec in (("lora_payload", wl.lora_spec), ("head_payload", wl.head_spec))
        ]  # fmt: skip
        kept, (lora_vecs, head_vecs), dropped = merge_screens(len(replies), screens, clients)
        for d in dropped:
            log.warning("dropped the reply of client %s: %s", d["client"], d["reason"])
        if len(kept) < (fl.min_replies or 1):  # too few valid replies: the model stays as it is
            return kept, torch.zeros(wl.lora_spec.numel, dtype=torch.float64), None, dropped
        kw = [weights[i] for i in kept]
        mean_lora = aggregate(lora_vecs, kw, fl.aggregation, fl.trim_fraction)
        mean_head = aggregate(head_vecs, kw, fl.aggregation, fl.trim_fraction)
        step_lora, step_head = self.momentum.step("lora", mean_lora), self.momentum.step("head", mean_head)
        self.lora = apply_update(self.lora, step_lora, wl.lora_spec, fl.server_lr)
        self.head = apply_update(self.head, step_head, wl.head_spec, fl.server_lr)
        dense = weighted_mean([replies[i].raw_update for i in kept], kw)
        return kept, mean_lora, dense, dropped

    # -- checkpoint --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "round": self.done,
            "config": self.config.to_dict(),
            "lora_spec": self.workload.lora_spec.to_json(),
            "head_spec": self.workload.head_spec.to_json(),
            "lora": self.lora,
            "head": self.head,
            "clients": [ef.state_dict() for ef in self.efs],
            "downlink": self.downlink.state_dict(),
            "momentum": self.momentum.state_dict(),
            "ledger": self.ledger.to_dict(),
            "rows": self.rows,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != 1:
            raise ConfigError("checkpoint has an unknown format; start a new run")
        if state["lora_spec"] != self.workload.lora_spec.to_json() or state["head_spec"] != (
            self.workload.head_spec.to_json()
        ):
            raise ConfigError("checkpoint was made with another model/adapter (its tensor specs differ)")
        _check_same_config(state["config"], self.config.to_dict())
        self.lora, self.head = dict(state["lora"]), dict(state["head"])
        for ef, st in zip(self.efs, state["clients"], strict=True):
            ef.load_state_dict(st)
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


def _check_same_config(saved: dict[str, Any], now: dict[str, Any]) -> None:
    # fl.rounds may grow (continue a finished run further); anything else would change the trajectory.
    # Checkpoints from before the [tgap] section existed had it implicitly off (the defaults).
    saved = {"tgap": RunConfig().to_dict()["tgap"], **saved}
    diffs = [
        f"{sec}.{key}"
        for sec in sorted(set(saved) | set(now))
        for key in sorted(set(saved.get(sec, {})) | set(now.get(sec, {})))
        if (sec, key) != ("fl", "rounds") and saved.get(sec, {}).get(key) != now.get(sec, {}).get(key)
    ]
    if diffs:
        raise ConfigError(f"--resume with a different config ({', '.join(diffs)}); only fl.rounds may change")


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

    With ``config.tgap.enabled`` the TGAP phase (:mod:`fedsqueeze.learned.tgap_phase`) runs first on each
    client's ``tgap.fraction`` share, writes ``out_dir/tgap/`` and the rounds then run on the rest with the
    trained autoencoder; the summary's ``tgap_traffic`` and totals count its bytes (see
    :func:`~.report.include_tgap`). On ``resume`` a finished TGAP phase of the same run is reused.

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
    if resume and not out.is_dir():
        raise ConfigError(
            f"--resume: {out} does not exist, so there is no run to continue; drop --resume to start one"
        )
    ckpt = load_checkpoint(out) if resume else None
    if resume and ckpt is None:
        log.info("%s holds no checkpoint yet (stopped in its first round): starting from round 1", out)
    if not resume and (out / "checkpoint").exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    wl = workload if workload is not None else _build_workload(config)
    load_s = time.perf_counter() - t_start  # model + data loading of this invocation
    tgap = None
    if config.tgap.enabled:  # CG-FedLLM: pre-train the autoencoder on the TGAP share, run FAF on the rest
        from ..learned.tgap_phase import faf_codec, run_tgap_phase

        tgap = run_tgap_phase(config, wl, out, resume=resume, progress=progress)
        wl = tgap.faf_workload
    fed = _Federation(config, wl, None if tgap is None else faf_codec(config, tgap.model_path))
    if ckpt is not None:
        fed.load_state_dict(ckpt)
        if fed.done > config.fl.rounds:
            raise ConfigError(
                f"the checkpoint is at round {fed.done}, past fl.rounds = {config.fl.rounds}; resume without "
                f"CONFIG to continue with the run's own config, or --set fl.rounds={fed.done} or more"
            )
        fed.captures = _load_captures(out / CAPTURES, fed.done)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "metrics.jsonl", fed.rows)  # on resume: drop rows after the checkpoint

    bar = Progress(config.fl.rounds, fed.done, enabled=progress)
    fed.on_client = bar.client_hook
    try:
        for r in range(fed.done + 1, config.fl.rounds + 1):
            capture = captures == "all" or (isinstance(captures, frozenset) and r in captures)
            row = fed.run_round(r, capture)
            if capture:
                save_captures(out / CAPTURES, fed.captures)
            append_jsonl(out / "metrics.jsonl", row)
            save_checkpoint(out, fed.state_dict())
            bar.update(row)
    finally:
        bar.close()

    summary = summarize(fed.rows, wl.metric_name, config.fl.target_metric)
    summary.update(
        {
            "codec": config.codec.name,
            "codec_options": fed.codec_options,  # with the codec's defaults (and a TGAP model) filled in
            "downlink_options": config.downlink.build().options(),
            "downlink_protocol": fed.downlink.protocol,
            "seed": config.fl.seed,
            "lora_numel": wl.lora_spec.numel,
            "head_numel": wl.head_spec.numel,
            "num_clients": fed.n,
            "workload": dict(getattr(wl, "info", {}) or {}),
            "config": config.to_dict(),
            "versions": package_versions(),
            "out_dir": str(out),
            "warnings": fed.health.summary(),
            "load_s": load_s,
        }
    )
    include_tgap(summary, None if tgap is None else tgap.traffic)
    summary.update(
        traffic_totals(
            fed.ledger,
            wl.lora_spec.numel,
            wl.head_spec.numel,
            summary["total_uplink_bytes"],
            summary["total_downlink_bytes"],
        )
    )
    save_final(out, fed.lora, fed.head, wl)  # final_params.safetensors (+ final_adapter/, PEFT's format)
    summary["elapsed_s"] = time.perf_counter() - t_start  # this invocation, model loading included
    write_json(out / "summary.json", summary)
    title = f"{config.model.name} / {config.data.dataset} / {config.codec.name}"
    offset = 0 if tgap is None else int(tgap.traffic["uplink_bytes"])
    plot = out / "accuracy_vs_uplink.png"
    plot_metric_vs_uplink(fed.rows, plot, title=title, offset_bytes=offset, target=config.fl.target_metric)
    return summary

"""The TGAP phase of ``fedsqueeze run`` (``[tgap] enabled = true``): split, collect, pre-train, count.

1. Split every client's examples (seeded, disjoint) into the TGAP share ``tgap.fraction`` and the rest
   (:mod:`.split`); the main (FAF) rounds get the rest.
2. Collect the temporal ensemble of update snapshots on the TGAP share:
   - ``federated``: ``tgap.rounds`` FedAvg rounds of the engine with the identity uplink and no error feedback
     (seed streams derived apart from the main rounds'); every sampled client's update is a snapshot. Uplink
     (LoRA + head frames) and global-model downloads are counted from the engine's ledger.
   - ``local``: every client trains alone from the initial model for ``tgap.rounds`` local rounds and uploads
     each round's update once as an identity frame (counted). The initial model is not counted: it is what
     the first round of any federated run downloads anyway, and it is fixed by the seed.
3. Pre-train the autoencoder (:func:`.tgap.tgap_pretrain`), save it to ``OUT/tgap/ae.safetensors``.
4. Count the one-time encoder download of every client as downlink.

Everything lands in ``OUT/tgap/``: ``captures.safetensors`` (the snapshots, the format
``fedsqueeze bench cg`` reads), ``ae.safetensors`` + ``ae.json``, ``metrics.jsonl``
(federated collection rounds) and ``tgap.json`` (the traffic, the training log and the run config).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import CodecConfig, RunConfig, TGAPConfig
from ..errors import ConfigError
from ..fl.checkpoint import save_captures, write_json, write_jsonl
from ..fl.client import encode_dense
from ..fl.console import size
from ..fl.federation import Federation
from ..fl.hooks import RunContext, RunHook
from ..fl.report import StepProgress
from ..seeding import derive_seed
from .autoencoder import AEConfig
from .split import split_workload
from .store import load, save
from .tgap import load_captures, tgap_pretrain, tgap_traffic

__all__ = ["TGAPHook", "TGAPResult", "ae_config", "faf_codec", "run_tgap_phase"]

FOLDER = "tgap"
MODEL = "ae.safetensors"
INFO = "tgap.json"
CAPTURES = "captures.safetensors"
MODEL_PATH_KEY = "tgap-model-path"  # the train-config keys a Flower client rebuilds the FAF codec from
FINGERPRINT_KEY = "tgap-model-fingerprint"
_MASK63 = (1 << 63) - 1


@dataclasses.dataclass(frozen=True)
class TGAPResult:
    """What the main rounds need from the TGAP phase.

    ``traffic`` is the ``tgap_traffic`` entry of ``summary.json``; ``faf_workload`` is the workload restricted
    to each client's FAF share.
    """

    model_path: Path
    fingerprint: str
    traffic: dict[str, Any]
    faf_workload: Any
    reused: bool


def ae_config(variant: str, depth: int) -> AEConfig:
    """The paper's autoencoder or the sound one (per-tensor RMS normalisation, linear head)."""
    if variant == "paper":
        return AEConfig(depth=depth)
    if variant == "sound":
        return AEConfig(depth=depth, normalize="tensor_rms", relu_ends=False, tanh_head=False)
    raise ConfigError(f"tgap variant must be paper or sound, got {variant!r}")


def faf_codec(config: RunConfig, model_path: str | Path) -> Any:
    """The main rounds' uplink codec: ``config.codec`` with ``model_path`` set to the TGAP model."""
    return CodecConfig(config.codec.name, {**config.codec.options, "model_path": str(model_path)}).build()


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _phase_config(config: RunConfig) -> RunConfig:
    """The federated collection run: identity uplink, no error feedback, ``tgap.rounds`` rounds, own seeds."""
    tg = config.tgap
    fl = dataclasses.replace(
        config.fl,
        rounds=tg.rounds,
        error_feedback=False,
        target_metric=None,
        eval_every=tg.rounds,  # evaluate once, after the last collection round
        seed=derive_seed(config.fl.seed, 0, -1, "tgap") & _MASK63,
    )
    return dataclasses.replace(config, fl=fl, codec=CodecConfig("identity"), tgap=TGAPConfig())


def _collect_federated(
    config: RunConfig, pre: Any, folder: Path, progress: bool, simulate: Callable[..., Federation]
) -> dict[str, Any]:
    fed = simulate(_phase_config(config), pre, progress=progress)  # the engine's own rounds
    write_jsonl(folder / "metrics.jsonl", fed.rows)
    _save_tensors(folder / CAPTURES, fed.captures)
    lora_frames = [n for rec in fed.ledger.rounds for n in rec.uplink_lora.values()]
    head_frames = [n for rec in fed.ledger.rounds for n in rec.uplink_head.values()]
    last = fed.rows[-1]
    return {
        "snapshot_frames": lora_frames,
        "head_bytes": sum(head_frames),
        "uplink_bytes": fed.ledger.total_uplink,
        "model_download_bytes": fed.ledger.total_downlink,
        "collection_metric": last["eval_metric"],
    }


def _collect_local(
    config: RunConfig, pre: Any, folder: Path, progress: bool, simulate: Callable[..., Federation]
) -> dict[str, Any]:
    spec = pre.lora_spec
    tensors: dict[str, torch.Tensor] = {}
    frames: list[int] = []
    seed = derive_seed(config.fl.seed, 0, -1, "tgap") & _MASK63
    for c in range(pre.num_clients()):
        lora, head = pre.initial_params()
        for t in range(1, config.tgap.rounds + 1):
            new_lora, new_head, _ = pre.train_client(
                c, lora, head, config.train, seed=derive_seed(seed, t, c, "train") & _MASK63
            )
            u = spec.flatten(lora) - spec.flatten(new_lora)
            frames.append(len(encode_dense(u, spec, seed=derive_seed(seed, t, c, "encode"))))
            for name, tensor in spec.unflatten(u).items():
                tensors[f"r{t}/c{c}/{name}"] = tensor.to(torch.float32).clone()
            lora, head = new_lora, new_head
        _say(progress, f"TGAP local collection: client {c + 1}/{pre.num_clients()}")
    _save_tensors(folder / CAPTURES, tensors)
    return {
        "snapshot_frames": frames,
        "head_bytes": 0,
        "uplink_bytes": sum(frames),
        "model_download_bytes": 0,
        "collection_metric": None,
    }


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    if not tensors:
        raise ConfigError("TGAP collected no snapshots")
    save_captures(path, tensors)


def _same_run(saved: dict[str, Any], config: RunConfig) -> bool:
    """Equal run configs up to ``fl.rounds`` (it only lengthens the main phase; TGAP does not use it)."""
    return not config.differences(saved)


def _reuse(folder: Path, config: RunConfig) -> dict[str, Any] | None:
    """``tgap.json`` of an earlier TGAP phase of this same run whose model is intact, else ``None``."""
    info_path, model_path = folder / INFO, folder / MODEL
    if not info_path.is_file() or not model_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not _same_run(info.get("config", {}), config):
        return None
    try:
        model = load(model_path)  # checks the weights against the sidecar's fingerprint
    except ConfigError:  # damaged or replaced: train again
        return None
    if model.fingerprint().hex() != info.get("traffic", {}).get("fingerprint"):
        return None
    return info


def run_tgap_phase(
    config: RunConfig,
    workload: Any,
    out: Path,
    *,
    simulate: Callable[..., Federation],
    resume: bool = False,
    progress: bool = False,
) -> TGAPResult:
    """Run the TGAP phase for ``config`` (``config.tgap.enabled``) and return the model and the traffic.

    ``simulate`` runs the federated collection rounds (:attr:`fedsqueeze.fl.hooks.RunContext.simulate`). On
    ``resume``, a finished TGAP phase of the same run (``OUT/tgap/tgap.json`` with an intact model) is
    reused instead of being run again; its recorded traffic still counts.
    """
    tg = config.tgap
    pre, rest, split_info = split_workload(workload, tg.fraction, config.fl.seed)
    folder = out / FOLDER
    model_path = folder / MODEL
    previous = _reuse(folder, config) if resume else None
    if previous is not None:
        _say(progress, f"TGAP: reusing {model_path} ({previous['traffic']['fingerprint']})")
        return TGAPResult(model_path, previous["traffic"]["fingerprint"], previous["traffic"], rest, True)

    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    collect = _collect_federated if tg.collection == "federated" else _collect_local
    _say(progress, f"TGAP: {tg.collection} collection, {tg.rounds} rounds, {tg.fraction:.0%} of each client")
    col = collect(config, pre, folder, progress, simulate)
    caps = load_captures(folder / CAPTURES, spec=pre.lora_spec)
    variant = config.tgap_variant
    # tgap.seed 0 (the default) keeps the seed every run had before the key existed
    pcfg = dataclasses.replace(tg, seed=derive_seed(config.fl.seed, tg.seed, -1, "tgap-pretrain") & _MASK63)
    _say(progress, f"TGAP: pre-training the {variant} autoencoder on {len(caps)} snapshots, {tg.steps} steps")
    steps = StepProgress("TGAP pre-training", tg.steps, enabled=progress)
    try:
        model, log = tgap_pretrain(
            caps, ae=ae_config(variant, tg.depth), config=pcfg, device=tg.device, progress=steps.update
        )
    finally:
        steps.close()
    log = {k: v for k, v in log.items() if k != "spec"}
    fp = save(model, model_path, info={**log, "variant": variant, "collection": tg.collection})
    counted = tgap_traffic(
        snapshot_frames=col["uplink_bytes"],
        encoder_bytes=model.encoder_bytes(),
        num_clients=workload.num_clients(),
        downlink_bytes=col["model_download_bytes"],
    )
    traffic = {
        "uplink_bytes": counted["tgap_uplink_bytes"],
        "downlink_bytes": counted["tgap_downlink_bytes"],
        "snapshots": len(caps),
        "steps": tg.steps,
        "wall_s": time.perf_counter() - t0,
        "collection": tg.collection,
        "rounds": tg.rounds,
        "snapshot_bytes": sum(col["snapshot_frames"]),
        "head_bytes": col["head_bytes"],
        "model_download_bytes": col["model_download_bytes"],
        "encoder_bytes": model.encoder_bytes(),
        "encoder_download_bytes": counted["encoder_download_bytes"],
        "num_clients": workload.num_clients(),
        "variant": variant,
        "fingerprint": fp,
        "model_path": str(model_path),
        "collection_metric": col["collection_metric"],
        "loss_first": log["loss_first"],
        "loss_last": log["loss_last"],
        "train_rel_error": log["train_rel_error"],
        "split": split_info,
    }
    write_json(folder / INFO, {"traffic": traffic, "pretrain": log, "config": config.to_dict()})
    _say(
        progress,
        f"TGAP: {len(caps)} snapshots, loss {log['loss_first']:.4g} -> {log['loss_last']:.4g}, "
        f"up {size(traffic['uplink_bytes'])}, down {size(traffic['downlink_bytes'])}, "
        f"fingerprint {fp}",
    )
    return TGAPResult(model_path, fp, traffic, rest, False)


class TGAPHook(RunHook):
    """The TGAP phase as a hook of the run (registered as the ``tgap`` phase in :mod:`fedsqueeze.fl.hooks`).

    Before the rounds it runs (or, on resume, reuses) :func:`run_tgap_phase`, then hands the main rounds each
    client's FAF share, the uplink codec with the trained model and the phase's traffic (``tgap_traffic``).
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.result: TGAPResult | None = None

    def before_rounds(self, ctx: RunContext) -> None:
        self.result = run_tgap_phase(
            ctx.config, ctx.workload, ctx.out, simulate=ctx.simulate, resume=ctx.resume, progress=ctx.progress
        )
        ctx.workload = self.result.faf_workload
        ctx.codec = faf_codec(ctx.config, self.result.model_path)
        ctx.pre_traffic = self.result.traffic
        # A Flower client reads the model from this path (a simulation or a shared file system; the
        # encoder download is counted in ``tgap_traffic``) and checks it is this phase's.
        ctx.client_config[MODEL_PATH_KEY] = str(self.result.model_path)
        ctx.client_config[FINGERPRINT_KEY] = self.result.fingerprint

    def for_client(self, workload: Any, sent: Mapping[str, Any]) -> tuple[Any, Any]:
        """The FAF share of this client's data (the same seeded split as the server's) and the uplink codec
        with the model the phase trained (:class:`~fedsqueeze.ConfigError` when it cannot be read or is not
        the phase's)."""
        path, fingerprint = sent.get(MODEL_PATH_KEY), sent.get(FINGERPRINT_KEY)
        if not isinstance(path, str) or not isinstance(fingerprint, str):
            raise ConfigError("tgap.enabled: the train message names no TGAP model; is the server older?")
        model = load(Path(path))
        if model.fingerprint().hex() != fingerprint:
            raise ConfigError(f"tgap: the model at {path} is not the one the server trained (fingerprint)")
        _, rest, _ = split_workload(workload, self.config.tgap.fraction, self.config.fl.seed)
        return rest, faf_codec(self.config, path)

"""Pre-train the CG-FedLLM autoencoder (TGAP) on captured client updates and save it.

Writes OUT/ae.safetensors and its fingerprint sidecar OUT/ae.json (OUT is a folder, as for every command):
  fedsqueeze run smoke --set codec.name=identity --capture-updates all --out runs/pre
  fedsqueeze tgap runs/pre/captures.safetensors --out runs/pre/tgap
  fedsqueeze run smoke --set codec.name=cg_fedllm --set codec.options.model_path=runs/pre/tgap/ae.safetensors
--variant paper (default) is the paper's autoencoder (no normalisation, ReLU ends, Tanh) for cg_fedllm;
--variant sound (per-tensor RMS normalisation, linear head) is meant for cg_fedllm_q.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

__all__ = ["MODEL", "add_arguments", "main", "model_path"]

MODEL = "ae.safetensors"  # the model's name inside --out (as in a run's OUT/tgap/)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cg_fedllm.tgap import TGAPConfig

    parser.add_argument("captures", help="captures.safetensors from `fedsqueeze run --capture-updates ...`")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder: the model goes to DIR/ae.safetensors (+ ae.json) (default runs/<time>-tgap); "
        "a path ending in .safetensors (deprecated) names the model file itself",
    )
    parser.add_argument("--variant", choices=("paper", "sound"), default="paper", help="autoencoder variant")
    parser.add_argument("--depth", type=int, default=6, help="stride-2 stages; latent = 1/2**depth")
    parser.add_argument(
        "--rounds", default=None, metavar="A-B", help="use only captured rounds A..B (default all)"
    )
    parser.add_argument("--steps", type=int, default=TGAPConfig.steps, help="Adam steps")
    parser.add_argument("--batch-size", type=int, default=TGAPConfig.batch_size, help="snapshots per step")
    parser.add_argument("--lr", type=float, default=TGAPConfig.lr, help="Adam learning rate (paper 2e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batches")
    parser.add_argument("--device", default="cpu", help="where to train: cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or step lines")


def main(args: argparse.Namespace) -> int:
    from ..cg_fedllm.autoencoder import AEConfig
    from ..cg_fedllm.store import save, sidecar_path
    from ..cg_fedllm.tgap import TGAPConfig, load_captures, tgap_pretrain
    from ..errors import ConfigError
    from ..fl.console import size
    from ..fl.report import StepProgress
    from ..out_paths import check_out_file

    path = model_path(args.out)
    check_out_file(path, "--out", example="ae.safetensors")
    check_out_file(sidecar_path(path), "--out (its .json sidecar)", example="ae.json")
    if args.steps < 1:
        raise ConfigError(
            f"--steps must be >= 1 (0 Adam steps would save an untrained autoencoder), got {args.steps}"
        )
    if args.rounds:
        try:
            a, _, b = args.rounds.partition("-")
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise ConfigError(f"--rounds expects A-B, got {args.rounds!r}") from None
    if args.variant == "paper":
        ae = AEConfig(depth=args.depth)
    else:
        ae = AEConfig(depth=args.depth, normalize="tensor_rms", relu_ends=False, tanh_head=False)
    cfg = TGAPConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    caps = load_captures(args.captures)
    if args.rounds:
        caps = caps.select([lo <= r <= hi for r in caps.rounds])
    if len(caps) == 0:
        raise ConfigError("no captured updates left to train on")
    bar = StepProgress("TGAP", cfg.steps, enabled=not args.no_progress)
    try:
        model, log = tgap_pretrain(caps, ae=ae, config=cfg, progress=bar.update, device=args.device)
    finally:
        bar.close()
    log.update(captures=str(args.captures), variant=args.variant)
    fp = save(model, path, info=log)
    rel = log["train_rel_error"]
    shown = "n/a (all-zero captures)" if rel is None else f"{rel:.4g}"
    print(
        f"TGAP: {log['num_snapshots']} snapshots, {cfg.steps} steps, loss {log['loss_first']:.4g} -> "
        f"{log['loss_last']:.4g}, train rel_error {shown}; fingerprint {fp}; "
        f"encoder {size(model.encoder_bytes())} -> {path}"
    )
    if rel is not None and not rel < 1:  # NaN too
        print(
            f"fedsqueeze tgap: warning: train rel_error {shown} is not below 1: the autoencoder reconstructs "
            "its own training updates worse than sending zeros would; train longer (--steps), change --lr, "
            "or try --variant sound",
            file=sys.stderr,
        )
    return 0


def model_path(out: str | None) -> Path:
    """Where ``--out`` puts the model: ``OUT/ae.safetensors`` (a deprecated ``*.safetensors``: that file)."""
    if out is None:
        return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-tgap" / MODEL
    if out.endswith(".safetensors"):
        print(
            f"fedsqueeze tgap: --out {out}: a file name is deprecated; give a folder (the model goes to "
            f"DIR/{MODEL})",
            file=sys.stderr,
        )
        return Path(out)
    return Path(out) / MODEL

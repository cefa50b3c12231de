"""Pre-train the CG-FedLLM autoencoder (TGAP) on captured client updates and save it.

  fedsqueeze run smoke --set codec.name=identity --capture-updates all --out runs/pre
  fedsqueeze tgap runs/pre/captures.safetensors --out runs/pre/ae.safetensors
  fedsqueeze run smoke --set codec.name=cg_fedllm --set codec.options.model_path=runs/pre/ae.safetensors
--variant paper (default) is the paper's autoencoder (no normalisation, ReLU ends, Tanh) for cg_fedllm;
--variant sound (per-tensor RMS normalisation, linear head) is meant for cg_fedllm_q.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .tgap import TGAPConfig

    parser.add_argument("captures", help="captures.safetensors from `fedsqueeze run --capture-updates ...`")
    parser.add_argument("--out", required=True, metavar="PATH.safetensors", help="where to save the model")
    parser.add_argument("--variant", choices=("paper", "sound"), default="paper")
    parser.add_argument("--depth", type=int, default=6, help="stride-2 stages; latent = 1/2**depth")
    parser.add_argument("--rounds", default=None, metavar="A-B", help="use only captured rounds A..B")
    parser.add_argument("--steps", type=int, default=TGAPConfig.steps, help="Adam steps")
    parser.add_argument("--batch-size", type=int, default=TGAPConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TGAPConfig.lr, help="Adam learning rate (paper 2e-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to train: cpu (default), cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..out_paths import check_out_file
    from .autoencoder import AEConfig
    from .store import save, sidecar_path
    from .tgap import TGAPConfig, load_captures, tgap_pretrain

    out = check_out_file(args.out, example="ae.safetensors")
    if out.suffix != ".safetensors":
        raise ConfigError(
            f"--out {out}: the autoencoder file must end in .safetensors, e.g. "
            f"{out.with_suffix('.safetensors')}"
        )
    check_out_file(sidecar_path(out), "--out (its .json sidecar)", example="ae.json")
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
    bar, hook = _progress(cfg.steps, enabled=not args.no_progress)
    try:
        model, log = tgap_pretrain(caps, ae=ae, config=cfg, progress=hook, device=args.device)
    finally:
        if bar is not None:
            bar.stop()
    log.update(captures=str(args.captures), variant=args.variant)
    fp = save(model, args.out, info=log)
    rel = log["train_rel_error"]
    shown = "n/a (all-zero captures)" if rel is None else f"{rel:.4f}"
    print(
        f"TGAP: {log['num_snapshots']} snapshots, {cfg.steps} steps, loss {log['loss_first']:.4g} -> "
        f"{log['loss_last']:.4g}, train rel_error {shown}; fingerprint {fp}; "
        f"encoder {model.encoder_bytes()} bytes -> {args.out}"
    )
    if rel is not None and not rel < 1:  # NaN too
        print(
            f"fedsqueeze tgap: warning: train rel_error {shown} is not below 1: the autoencoder reconstructs "
            "its own training updates worse than sending zeros would; train longer (--steps), change --lr, "
            "or try --variant sound",
            file=sys.stderr,
        )
    return 0


def _progress(total: int, *, enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    if not console.is_terminal:
        return None, None
    bar = Progress(
        TextColumn("TGAP"), MofNCompleteColumn(), BarColumn(), TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip
    task = bar.add_task("tgap", total=total, loss="")
    bar.start()
    return bar, lambda step, loss: bar.update(task, completed=step, loss=f"{loss:.4g}")

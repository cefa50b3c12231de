"""Evaluate CG-FedLLM on captured updates: its controls, and TopK/FLM-TopK at equal measured bits.

Trains TGAP on the earlier rounds of most clients and scores the held-out rounds and clients:
  fedsqueeze run --set codec.name=identity --capture-updates all --out runs/cap
  fedsqueeze bench cg runs/cap/captures.safetensors --json runs/cap/cg_eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cg_fedllm.tgap import TGAPConfig

    parser.add_argument("captures", help="captures.safetensors from `fedsqueeze run --capture-updates all`")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--steps", type=int, default=TGAPConfig.steps, help="TGAP Adam steps per model")
    parser.add_argument("--batch-size", type=int, default=TGAPConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TGAPConfig.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout-rounds", type=float, default=0.3, help="fraction of later rounds held out")
    parser.add_argument("--holdout-clients", type=float, default=0.2, help="fraction of clients held out")
    parser.add_argument("--device", default="cpu", help="where TGAP trains: cpu (default), cuda or cuda:N")


def main(args: argparse.Namespace) -> int:
    from ..cg_fedllm.evaluate import evaluate
    from ..cg_fedllm.tgap import TGAPConfig, load_captures

    caps = load_captures(args.captures)
    cfg = TGAPConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    res = evaluate(
        caps, tgap=cfg, holdout_rounds=args.holdout_rounds, holdout_clients=args.holdout_clients,
        log=lambda m: print(m, file=sys.stderr), device=args.device,
    )  # fmt: skip
    res["captures"] = str(args.captures)
    for split, rows in res["results"].items():
        print(f"\n{split}")
        for name, row in rows.items():
            if isinstance(row, dict):
                bpp = row.get("bits_per_param")
                shown = "" if bpp is None else f"{bpp:7.4f} bpp  "
                print(f"  {name:48s} {shown}rel_error {row['rel_error']:.4f}  cosine {row['cosine']:+.4f}")
            else:
                print(f"  {name:48s} {row}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0

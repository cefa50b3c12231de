"""Time local training steps of a run config with LoRA on every layer or on the top N layers only.

  fedsqueeze bench steps --set model.name=smollm2-135m --set model.classifier=verbalizer \
      --set model.max_length=64 --set train.batch_size=8 --lora-layers all,8,4 --no-cache-too
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from .run import add_config_arguments

__all__ = ["add_arguments", "main"]


def _placements(text: str) -> list[int | None]:
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            out.append(None)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise ConfigError(
                f"--lora-layers takes 'all' or positive integers, comma-separated; got {part!r}"
            )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--lora-layers", default="all,8", help="comma-separated: 'all' or a top-N layer count"
    )
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed pass")
    parser.add_argument(
        "--no-cache-too", action="store_true", help="also time each top-N placement without the layer cache"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write the rows as JSON")


def main(args: argparse.Namespace) -> int:
    from ..bench.steps import time_steps
    from ..config import load_config

    config = load_config(args.config, args.overrides)
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    rows = time_steps(
        config,
        _placements(args.lora_layers),
        steps=args.steps,
        cache=(True, False) if args.no_cache_too else (True,),
    )
    print(f"{'lora layers':>11}  {'cache':>5}  {'LoRA params':>11}  {'s/step':>7}  {'first pass s/step':>17}")
    for r in rows:
        top = "all" if r["lora_layers"] is None else f"top {r['lora_layers']}"
        cached = "yes" if r["cache"] else "no"
        print(
            f"{top:>11}  {cached:>5}  {r['lora_numel']:>11,}  {r['s_per_step']:>7.3f}  "
            f"{r['first_s_per_step']:>17.3f}"
        )
    b = rows[0] if rows else {}
    print(f"batch {b.get('batch_size')}, max_length {b.get('max_length')}, {b.get('threads')} torch threads")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0

"""``fedsqueeze bench intervals``: arguments and main; its help is :mod:`fedsqueeze.bench.intervals`."""

from __future__ import annotations

import argparse
import json

from ..bench import intervals
from ..out_paths import check_out_dir, check_out_file

__all__ = ["add_arguments", "main"]

__doc__ = intervals.__doc__  # the subcommand's help (the dispatcher reads it)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="blocks", help="gaussian, blocks, ... (default blocks)")
    parser.add_argument("--d", type=int, default=None, help="vector length of the source (default: its own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the codecs (default 0)")
    parser.add_argument("--density", type=float, default=0.02, help="paper budget density p (default 0.02)")
    parser.add_argument("--rate", type=float, default=None, help="budget in bits/param (overrides --density)")
    parser.add_argument("--s-min", type=int, default=4, help="smallest log2 L (default 4)")
    parser.add_argument("--s-max", type=int, default=None, help="largest log2 L (default ceil(log2 d))")
    parser.add_argument(
        "--out", default=intervals.DEFAULT_OUT, help=f"output folder (default {intervals.DEFAULT_OUT})"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="JSON rows (default OUT/intervals.json)")
    parser.add_argument("--plot", default=None, metavar="PATH", help="plot (default OUT/intervals.png)")


def main(args: argparse.Namespace) -> int:
    jpath = check_out_file(args.json, "--json") if args.json else check_out_dir(args.out) / "intervals.json"
    ppath = (
        check_out_file(args.plot, "--plot", example="intervals.png")
        if args.plot
        else check_out_dir(args.out) / "intervals.png"
    )
    rows = intervals.sweep(args.source, args.d, args.seed, args.density, args.rate, args.s_min, args.s_max)
    jpath.parent.mkdir(parents=True, exist_ok=True)
    jpath.write_text(json.dumps(rows, indent=1))
    budget = f"rate {args.rate}" if args.rate else f"p = {args.density}"
    intervals.plot(rows, ppath, f"{args.source}: error vs interval length at {budget}")
    for r in rows:
        tag = r.get("mode", "") + (" searched" if r.get("searched") else "")
        print(
            f"{r['codec']:9s} {tag:19s} s={r.get('s', '-')!s:>3} rel_error={r['rel_error']:.4f} "
            f"bits/param={r['bits_per_param']:.4f}"
        )
    print(f"wrote {jpath} and {ppath}")
    return 0

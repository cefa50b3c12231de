"""``fedsqueeze bench server``: arguments and main; its help is :mod:`fedsqueeze.bench.server`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..aggregation import AGGREGATIONS
from ..bench import server

__all__ = ["add_arguments", "main"]

__doc__ = server.__doc__  # the subcommand's help (the dispatcher reads it)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=100, metavar="K", help="client frames in the round")
    parser.add_argument("--d", type=int, default=server.DEFAULT_D, metavar="D", help="values per update")
    parser.add_argument(
        "--codec", default="wf_ecq", metavar="NAME", help="codec NAME or NAME:KEY=VALUE,... of the frames"
    )
    parser.add_argument(
        "--distinct", type=int, default=8, help="distinct updates encoded; other frames reuse their bodies"
    )
    parser.add_argument("--workers", type=int, default=1, help="decode threads (fl.decode_workers)")
    parser.add_argument(
        "--aggregation", choices=AGGREGATIONS, default="mean", help="aggregation rule (fl.aggregation)"
    )
    parser.add_argument(
        "--memory-mb",
        type=float,
        default=8192.0,
        help="budget of median / trimmed_mean in MiB (fl.aggregation_memory_mb)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the updates")
    parser.add_argument(
        "--hold-all",
        action="store_true",
        help="for comparison: the old path that keeps every decoded update, then aggregates",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the result as a JSON object")


def main(args: argparse.Namespace) -> int:
    row = server.measure_round(
        args.clients,
        args.d,
        args.codec,
        distinct=args.distinct,
        workers=args.workers,
        aggregation=args.aggregation,
        memory_mb=args.memory_mb,
        seed=args.seed,
        hold_all=args.hold_all,
    )
    mib = 2**20
    print(
        f"{row['codec']}: K = {row['clients']:,} clients, d = {row['d']:,}, {row['aggregation']}, "
        f"{row['workers']} decode thread(s), {row['path']}\n"
        f"  round (screen -> decode -> aggregate): {row['round_s']:.2f} s "
        f"({1e3 * row['s_per_client']:.1f} ms per client, {row['passes']} pass(es), "
        f"{row['kept']} kept, {row['dropped']} dropped)\n"
        f"  frames: {row['frame_bytes_total'] / mib:,.1f} MiB; peak RSS during the round: "
        f"{row['peak_rss_bytes'] / mib:,.1f} MiB (K*4*d = {row['decoded_fp32_bytes'] / mib:,.1f} MiB)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0

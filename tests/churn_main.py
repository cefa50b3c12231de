"""Flower under churn: fedsqueeze's Flower job on N real SuperNodes on loopback under a seeded chaos schedule.

Usage: ``python tests/churn_main.py --nodes 20 --rounds 10 --seed 0 --out DIR``.
SuperNodes are SIGKILLed and restarted mid-round, the ServerApp is SIGKILLed once and the job finished with
``--resume``; then the same job is replayed in-process with the recorded drops and the final adapters are
compared. Writes ``DIR/churn.json`` (kills, the ServerApp kill round, drops per round with reasons, time per
round, peak RSS per SuperNode, ``final_equal_to_replay``) and exits 1 unless the job finished, every drop has
a reason and the final adapter equals the replay's.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # `support` (run from anywhere)

from support.churn import DEFAULT_SET, run_churn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=20, help="SuperNodes = data partitions")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="the chaos schedule's seed")
    p.add_argument("--out", type=pathlib.Path, required=True, help="a new folder for the run")
    p.add_argument("--clients-per-round", type=int, default=6)
    p.add_argument("--round-timeout", type=float, default=45.0, help="seconds the server waits per round")
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help=f"config overrides on the smoke preset (default: {' '.join(DEFAULT_SET)})",
    )
    p.add_argument("--deadline", type=float, default=1800.0, help="give up after this many seconds")
    p.add_argument("--replay-only", action="store_true", help="replay the deployment already in --out again")
    args = p.parse_args(argv)
    if not args.replay_only and args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} is not empty")
    rep = run_churn(
        args.out,
        nodes=args.nodes,
        rounds=args.rounds,
        seed=args.seed,
        clients=args.clients_per_round,
        round_timeout=args.round_timeout,
        overrides=tuple(args.set) if args.set else DEFAULT_SET,
        deadline_s=args.deadline,
        replay_only=args.replay_only,
    )
    t, peak = rep["time_per_round_summary_s"], rep["memory"]["node_group_peak_rss_bytes"]
    print(
        json.dumps(
            {
                k: rep[k]
                for k in (
                    "nodes",
                    "rounds",
                    "seed",
                    "serverapp_kill_round",
                    "resumed",
                    "final_equal_to_replay",
                    "rows_equal_to_replay",
                )
            }
        )
    )
    print(
        f"kills: {len(rep['kills'])}, drops: {sum(len(d['dropped']) for d in rep['drops'])}, "
        f"time per round: median {t['median']:.1f} s, max {t['max']:.1f} s; "
        f"peak RSS per SuperNode (group): median {peak['median'] / 2**20:.0f} MiB, "
        f"max {peak['max'] / 2**20:.0f} MiB; report: {args.out / 'churn.json'}"
    )
    ok = rep["resumed"] and not rep["drops_without_reason"] and rep["final_equal_to_replay"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make fuzz`: a long decoder fuzz campaign (default 100,000 cases).

Usage: ``python fuzz_main.py [CASES] [--random-seed] [--seed N] [--time-limit S] [--save-failures DIR]``.
Keeps going after a failure, guards every case with a time limit (a hang is a failure), reports the slowest
case and exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from support.fuzz_support import run_campaign_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="?", type=int, default=100_000)
    p.add_argument("--random-seed", action="store_true", help="seed from the clock (printed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per case = a hang")
    p.add_argument("--save-failures", type=pathlib.Path, default=None, help="write failing frames here")
    args = p.parse_args(argv)
    seed = int(time.time()) if args.random_seed else args.seed
    t0 = time.perf_counter()
    rep = run_campaign_report(
        args.cases,
        seed=seed,
        time_limit=args.time_limit,
        progress=lambda i: print(f"\r{i}/{args.cases}", end="", flush=True),
    )
    wall = time.perf_counter() - t0
    print(f"\nseed {seed}: {args.cases} cases in {wall:.0f}s: {rep.counts}")
    s, case, codec = rep.slowest
    print(f"slowest case: #{case} ({codec}) {s * 1e3:.1f} ms")
    print("seconds per codec: " + ", ".join(f"{c} {t:.1f}" for c, t in sorted(rep.per_codec_seconds.items())))
    for i, codec, err, blob in rep.failures:
        print(f"FAIL case {i} [{codec}]: {err}")
        if args.save_failures:
            args.save_failures.mkdir(parents=True, exist_ok=True)
            (args.save_failures / f"case{i}_{codec}.bin").write_bytes(blob)
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())

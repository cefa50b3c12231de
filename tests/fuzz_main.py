"""`make fuzz`: a long decoder fuzz campaign (default 100,000 cases)."""

from __future__ import annotations

import sys
import time

from fuzz_support import run_campaign


def main() -> int:
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    t0 = time.perf_counter()
    counts = run_campaign(cases, seed=int(time.time()) if "--random-seed" in sys.argv else 0,
                          progress=lambda i: print(f"\r{i}/{cases}", end="", flush=True))
    print(f"\n{cases} cases in {time.perf_counter() - t0:.0f}s: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

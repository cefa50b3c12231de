"""The scalar / TCQ / auto table of docs/benchmarks.md, from a `bench rd` JSON of the three wf_ecq variants.

Usage: python docs/results/tcq_table.py docs/results/rd-tcq/rd.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VARIANTS = ("wf_ecq:quantizer=scalar", "wf_ecq:quantizer=tcq", "wf_ecq")


def main(path: str) -> None:
    rows = json.loads(Path(path).read_text())
    db = {(r["source"], r["codec"], r["target_rate"]): r["db_vs_waterfilling"] for r in rows}
    print("| source | rate | scalar | tcq | `auto` (default) |")
    print("|---|---|---|---|---|")
    for source, rate in sorted({(s, r) for s, _, r in db}, key=lambda k: (k[0] != "gaussian", k[0], k[1])):
        cells = [f"{db[(source, v, rate)]:+.2f}" for v in VARIANTS]
        print(f"| {source} | {rate:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])

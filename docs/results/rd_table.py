"""Render a `fedsqueeze bench rd` JSON file as the markdown tables in docs/benchmarks.md.

Usage: python docs/results/rd_table.py docs/results/rd/rd.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        rows = json.load(f)
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_source[r["source"]].append(r)
    for source, rs in by_source.items():
        print(
            f"\n**{source}** (d = {rs[0]['d']:,}): relative error D at measured bits/param, "
            "and dB from water-filling\n"
        )
        print("| codec | target R | measured R | D = ‖u−û‖²/‖u‖² | cosine | dB vs water-filling |")
        print("|---|---|---|---|---|---|")
        for r in sorted(rs, key=lambda r: (r["codec"], r["bits_per_param"])):
            target = "-" if r.get("target_rate") is None else f"{r['target_rate']:g}"
            cos = "-" if r.get("cosine") is None else f"{r['cosine']:.4f}"
            db = "-" if r.get("db_vs_waterfilling") is None else f"{r['db_vs_waterfilling']:+.2f}"
            measured = f"{r['bits_per_param']:.3f}"
            print(f"| {r['codec']} | {target} | {measured} | {r['rel_error']:.4g} | {cos} | {db} |")


if __name__ == "__main__":
    main(sys.argv[1])

"""Does a codec conclusion of one benchmark hold on another? Two studies' results, side by side.

For each codec family of the first study: its BD-rate against TopK (uplink bits, final metric; ``≤``/``≥``
for a one-sided bound, ``–`` where neither exists) and its seed-paired drop against dense fp32 (``identity``)
at 0.25 and 1 bit/param (mean over the seeds both columns finished; the seed count in brackets), on each
benchmark. Reads only the studies' public ``results.json``.

    python docs/results/transfer_table.py \
        docs/results/lora-bench/results.json minilm-rt-lora-adamw/iid \
        docs/results/smollm2-bench/results.json smollm2-rt-verbalizer/iid
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FAMILIES = ("topk", "flm_topk-even", "flm_topk-threshold", "fed_cvlc", "wf_ecq", "compeft", "signsgd", "qsgd",
            "powersgd", "blockwise8", "nf4")  # fmt: skip
RATES = (0.25, 1.0)


def _bd(results: dict[str, Any], task: str, part: str, family: str) -> str:
    for row in results["bd_rate"]:
        if (row["task"], row["partition"], row["codec"], row["reference"]) != (task, part, family, "topk"):
            continue
        if row["metric"] != "final" or row["rate_basis"] != "uplink":
            continue
        if row.get("bd_rate_percent") is not None:
            return f"{row['bd_rate_percent']:+.1f} %"
        if row.get("bound_percent") is not None:
            sign = "≤" if row.get("bound") == "at most" else "≥"
            return f"{sign} {row['bound_percent']:+.1f} %"
    return "–"


def _columns(results: dict[str, Any], task: str, part: str) -> dict[str, dict[str, Any]]:
    for group in results["groups"]:
        if (group["task"], group["partition"]) == (task, part):
            return {c["codec"]: c for c in group["codecs"]}
    raise SystemExit(f"no group {task}/{part} in the results")


def _drop(cols: dict[str, dict[str, Any]], family: str, rate: float) -> str:
    dense = cols.get("identity", {}).get("per_seed", {})
    col = cols.get(family) if family in ("signsgd", "blockwise8", "nf4") else cols.get(f"{family}@r{rate:g}")
    if family in ("signsgd", "blockwise8", "nf4") and rate != 1.0:
        return ""  # fixed-rate codecs: one column, shown under 1 bit/param
    if col is None:
        return "–"
    seeds = sorted(set(dense) & set(col.get("per_seed", {})))
    if not seeds:
        return "–"
    diffs = [dense[s]["final"] - col["per_seed"][s]["final"] for s in seeds]
    return f"{100 * sum(diffs) / len(diffs):.1f} ({len(seeds)})"


def table(a: tuple[Path, str], b: tuple[Path, str]) -> str:
    res = [json.loads(Path(p).read_text(encoding="utf-8")) for p, _ in (a, b)]
    ids = [tuple(t.split("/", 1)) for _, t in (a, b)]
    cols = [_columns(r, *i) for r, i in zip(res, ids, strict=True)]
    names = [t for _, t in (a, b)]
    head = ["codec"]
    for n in names:
        head += [f"BD-rate vs TopK: {n}"]
    for rate in RATES:
        for n in names:
            head += [f"drop @{rate:g}: {n}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fam in FAMILIES:
        row = [fam, *(_bd(r, *i, fam) for r, i in zip(res, ids, strict=True))]
        for rate in RATES:
            row += [_drop(c, fam, rate) for c in cols]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    print(table((Path(argv[0]), argv[1]), (Path(argv[2]), argv[3])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The same codec columns on several tasks of one study, seed-paired against its dense fp32 column.

One row per column, one table column per group (task/partition): the final metric of each seed that
finished, then the seed-paired difference against dense fp32 (``identity``) over the seeds both finished:
in points for a metric where higher is better (``−`` below dense), in the metric's own units for a loss
(``+`` above dense, i.e. worse). ``–``: not run on that group. The first row is dense itself::

    python docs/results/task_table.py docs/results/smollm2-bench/results.json \\
        smollm2-rt-verbalizer/iid smollm2-rt-verbalizer/dir0.5 \\
        smollm2-bbc-verbalizer/iid smollm2-gsm8k-sft/iid

Reads only ``results.json`` (``groups[].codecs[].per_seed``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

# The 0.25-bit uplinks the codec conclusions rest on, then the run default's codecs both ways (and with 2
# clients a round x 40 local steps), all over the dense fp32 broadcast except the last two.
COLUMNS = (
    "topk@r0.25",
    "flm_topk-threshold@r0.25",
    "fed_cvlc@r0.25",
    "compeft@r0.25",
    "wf_ecq@r0.25",
    "wf_ecq-down_wf_ecq2-reencode@r2",
    "wf_ecq-down_wf_ecq2-reencode-k2x40@r2",
)


def _group(results: dict[str, Any], name: str) -> dict[str, Any]:
    task, _, part = name.partition("/")
    for g in results["groups"]:
        if (g["task"], g["partition"]) == (task, part):
            return g
    raise SystemExit(f"no group {name} in the results")


def _cell(group: dict[str, Any], column: str) -> str:
    cols = {c["codec"]: c for c in group["codecs"]}
    col = cols.get(column, {}).get("per_seed", {})
    if not col:
        return "–"
    dense = cols.get("identity", {}).get("per_seed", {})
    finals = " / ".join(f"{col[s]['final']:.3f}" for s in sorted(col))
    if column == "identity":
        return f"{finals} ({len(col)})"
    seeds = sorted(set(dense) & set(col))
    if not seeds:
        return f"{finals}; no dense seed to pair"
    higher = group.get("metric_higher_is_better", True)
    scale = 100.0 if higher else 1.0  # points for a score, the metric's units for a loss
    d = [scale * (col[s]["final"] - dense[s]["final"]) for s in seeds]
    places = 1 if higher else 3
    delta = f"{statistics.mean(d):+.{places}f}"
    if len(d) > 1:
        delta += f" ± {statistics.stdev(d):.{places}f}"
    return f"{finals}: {delta} ({len(seeds)})"


def table(results: dict[str, Any], groups: list[str], columns: tuple[str, ...] = COLUMNS) -> str:
    gs = [_group(results, g) for g in groups]
    head = ["column", *(f"{g} ({x['metric_name']})" for g, x in zip(groups, gs, strict=True))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for column in ("identity", *columns):
        lines.append("| " + " | ".join([f"`{column}`", *(_cell(g, column) for g in gs)]) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: task_table.py RESULTS_JSON TASK/PARTITION [TASK/PARTITION ...]", file=sys.stderr)
        return 2
    print(table(json.loads(Path(argv[0]).read_text(encoding="utf-8")), argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

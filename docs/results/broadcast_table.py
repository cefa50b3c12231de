"""The accuracy a compressed broadcast costs, seed-paired, from a study's ``results.json``.

Each pair holds the uplink fixed and changes only the downlink: a column over the dense fp32 broadcast
(``a``) against the same uplink over a compressed one (``b``). For every seed both finished it prints the
final metric of each, the seed-paired difference ``b − a`` in points (mean ± std over the seeds, and n), and
each column's total MB::

    python docs/results/broadcast_table.py docs/results/lora-bench/results.json minilm-rt-lora-adamw/iid

With ``--catch-up`` the pairs hold both codecs fixed and change how a stale client catches up: every frame it
missed (``a``) against one re-encoded frame (``b``, ``fl.downlink_catch_up = "reencode"``).

Reads only ``results.json`` (``groups[].codecs[].per_seed`` and ``total_mb``); a pair with no common seed
is listed as not run, and a pair with a column the study does not define is left out.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# (dense-broadcast column, compressed-broadcast column): the uplink is the same within a pair.
PAIRS = (
    ("flm_topk-threshold@r0.25", "flm_topk-threshold-down_wf_ecq0.25"),
    ("flm_topk-threshold@r0.25", "flm_topk-threshold-down_wf_ecq1"),
    ("flm_topk-threshold@r0.25", "flm_topk-threshold-down_fp16"),
    ("wf_ecq@r0.25", "wf_ecq-down_wf_ecq1@r0.25"),
    ("wf_ecq@r1", "wf_ecq-down_wf_ecq1@r1"),
    ("wf_ecq@r1", "wf_ecq-down_wf_ecq2@r1"),
    ("wf_ecq@r2", "wf_ecq-down_wf_ecq2@r2"),
    # the run default's broadcast (wf_ecq at 2 bits/param, re-encoded catch-up) under the 0.25-bit uplinks
    ("topk@r0.25", "topk-down_wf_ecq2-reencode@r0.25"),
    ("flm_topk-threshold@r0.25", "flm_topk-threshold-down_wf_ecq2-reencode@r0.25"),
    ("fed_cvlc@r0.25", "fed_cvlc-down_wf_ecq2-reencode@r0.25"),
    ("compeft@r0.25", "compeft-down_wf_ecq2-reencode@r0.25"),
    ("wf_ecq@r0.25", "wf_ecq-down_wf_ecq2-reencode@r0.25"),
    ("wf_ecq@r2", "wf_ecq-down_wf_ecq2-reencode@r2"),
)


# (catch-up frame by frame, re-encoded catch-up): the uplink and the downlink codec are the same within a
# pair.
CATCH_UP_PAIRS = (
    ("wf_ecq-down_wf_ecq2@r1", "wf_ecq-down_wf_ecq2-reencode@r1"),
    ("wf_ecq-down_wf_ecq2@r2", "wf_ecq-down_wf_ecq2-reencode@r2"),
    ("wf_ecq-down_wf_ecq1@r1", "wf_ecq-down_wf_ecq1-reencode@r1"),
    ("wf_ecq-down_wf_ecq1@r1", "wf_ecq-down_wf_ecq1-reencode-stale@r1"),  # rate by staleness
)
HEADS = {
    False: ("uplink over dense broadcast (a)", "over compressed broadcast (b)"),
    True: ("catch-up frame by frame (a)", "re-encoded catch-up (b)"),
}


def table(results: dict, group: str, *, catch_up: bool = False) -> str:
    task, partition = group.split("/")
    g = next(x for x in results["groups"] if x["task"] == task and x["partition"] == partition)
    cols = {c["codec"]: c for c in g["codecs"]}
    head_a, head_b = HEADS[catch_up]
    lines = [
        f"| {head_a} | {head_b} | seeds | final a | final b | b − a (points) | total MB a | total MB b |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a, b in CATCH_UP_PAIRS if catch_up else PAIRS:
        ca, cb = cols.get(a), cols.get(b)
        if ca is None or cb is None:
            continue  # a column this study does not define
        seeds = sorted(set(ca["per_seed"]) & set(cb["per_seed"]))
        if not seeds:
            lines.append(f"| `{a}` | `{b}` | – | not run | | | | |")
            continue
        fa = [ca["per_seed"][s]["final"] for s in seeds]
        fb = [cb["per_seed"][s]["final"] for s in seeds]
        d = [100 * (y - x) for x, y in zip(fa, fb, strict=True)]
        delta = f"{d[0]:+.1f}" if len(d) == 1 else f"{statistics.mean(d):+.1f} ± {statistics.stdev(d):.1f}"
        lines.append(
            f"| `{a}` | `{b}` | {len(seeds)} ({', '.join(seeds)}) | "
            f"{' / '.join(f'{x:.3f}' for x in fa)} | {' / '.join(f'{y:.3f}' for y in fb)} | {delta} | "
            f"{ca['total_mb']['mean']:.2f} | {cb['total_mb']['mean']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    catch_up = "--catch-up" in argv
    argv = [a for a in argv if a != "--catch-up"]
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: broadcast_table.py RESULTS_JSON TASK/PARTITION [--catch-up]", file=sys.stderr)
        return 2
    print(table(json.loads(Path(argv[0]).read_text()), argv[1], catch_up=catch_up))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

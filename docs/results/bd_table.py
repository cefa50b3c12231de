"""The BD-rate table of docs/results.md: one row per codec family of one task × partition of ``bd_rate.json``.

Reads ``DIR/bd_rate.json`` (``fedsqueeze study ... --aggregate-only``; default DIR docs/results/lora-bench)
and prints, against the reference family REFERENCE, the BD-rate on uplink bits and on total bits for the
final and the best metric, the accuracy range each was computed over, and how many points (seed means) the
codec's front has. A row with no BD-rate says why in its last column; where the curves share no accuracy it
gives the one-sided bound instead (``≤ −49.3 %``: ahead of the reference's whole curve); ``(point)``: one side
is a single point, the rate ratio at its accuracy (as in the study's results.md).

    python docs/results/bd_table.py [DIR] TASK PARTITION [REFERENCE] [--all]   (REFERENCE: default topk)

Families without a finished cell are left out unless ``--all``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedsqueeze.study.aggregate import bd_text


def _range(row: dict | None) -> str:
    if row is None or row["accuracy_range"] is None:
        return "–"
    lo, hi = row["accuracy_range"]
    return f"{lo:.3f}" if abs(hi - lo) < 1e-9 else f"{lo:.3f}–{hi:.3f}"


def main(root: Path, task: str, partition: str, reference: str = "topk", *, every: bool = False) -> None:
    rows = json.loads((root / "bd_rate.json").read_text())
    cell: dict[tuple[str, str, str], dict] = {}
    codecs: list[str] = []
    for r in rows:
        if (r["task"], r["partition"], r["reference"]) != (task, partition, reference):
            continue
        cell[(r["codec"], r["metric"], r["rate_basis"])] = r
        if r["codec"] not in codecs:
            codecs.append(r["codec"])
    print(
        f"| codec (vs {reference}) | points | final, uplink | final, total | range (final) "
        "| best, uplink | best, total | range (best) | why none |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for c in codecs:
        fu, ft = cell.get((c, "final", "uplink")), cell.get((c, "final", "total"))
        bu, bt = cell.get((c, "best", "uplink")), cell.get((c, "best", "total"))
        points = (fu or ft or {}).get("points", 0)
        if not points and not every:
            continue
        why = next(
            (r.get("reason") for r in (fu, bu) if r and r["bd_rate_percent"] is None and r.get("reason")), ""
        )
        cols = [str(points), bd_text(fu), bd_text(ft), _range(fu), bd_text(bu), bd_text(bt), _range(bu), why]
        print(f"| {c} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    every = "--all" in sys.argv[1:]
    args = [a for a in sys.argv[1:] if a != "--all"]
    if args and not (Path(args[0]) / "bd_rate.json").is_file():
        args = [str(Path(__file__).parent / "lora-bench"), *args]
    if len(args) < 3:
        sys.exit("usage: python docs/results/bd_table.py [DIR] TASK PARTITION [REFERENCE]")
    main(Path(args[0]), args[1], args[2], *args[3:4], every=every)

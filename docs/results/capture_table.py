"""The real-capture table of docs/benchmarks.md: wf_ecq (default quantizer) / wf_ecq TCQ / FLM-TopK rel_error.

Usage: python docs/results/capture_table.py   (reads docs/results/rd-captures-default*.json)
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAPTURES = ("r1/c1", "r4/c0", "r8/c0", "r8/c11")
RATES = (0.25, 0.5, 1.0, 2.0)


def main() -> None:
    val: dict[tuple[str, str, float], float] = {}
    for name, label in (("rd-captures-default.json", None), ("rd-captures-default-tcq.json", "tcq")):
        for r in json.loads((HERE / name).read_text()):
            val[(r["source"].split("#")[1], label or r["codec"], r["target_rate"])] = r["rel_error"]
    print("| capture | 0.25 bpp wf_ecq / tcq / flm_topk | 0.5 | 1 | 2 |")
    print("|---|---|---|---|---|")
    for c in CAPTURES:
        cells = [" / ".join(f"{val[(c, k, r)]:.3f}" for k in ("wf_ecq", "tcq", "flm_topk")) for r in RATES]
        print(f"| {c} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

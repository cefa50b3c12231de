"""The default-run downlink table of docs/default-run.md.

    python docs/results/downlink-default/table.py [STUDY_OUT]

STUDY_OUT defaults to this folder (the cells' summary.json files as `fedsqueeze study downlink-default`
wrote them).
"""

import glob
import json
import sys
from pathlib import Path

LABELS = {"down_identity": "dense fp32", "down_wf_ecq0.25": "wf_ecq 0.25"}


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent)
    print(
        "| downlink | seed | final | best | round to 0.72 | uplink MB | downlink MB | total MB "
        "| × less than dense fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for f in sorted(glob.glob(f"{root}/minilm-rt/dir0.5/*/seed*/summary.json")):
        s = json.loads(Path(f).read_text())
        column, seed = Path(f).parts[-3], Path(f).parts[-2].removeprefix("seed")
        print(
            f"| {LABELS.get(column, column)} | {seed} | {s['final_metric']:.3f} | {s['best_metric']:.3f} "
            f"| {s['rounds_to_target']} | {s['total_uplink_bytes'] / 1e6:.3f} "
            f"| {s['total_downlink_bytes'] / 1e6:.3f} | {s['total_bytes'] / 1e6:.3f} "
            f"| {s['dense_fp32_ratio_total']:.1f} |"
        )


if __name__ == "__main__":
    main()

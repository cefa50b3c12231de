"""The lora-bench table of docs/results.md: every finished cell of `fedsqueeze study lora-bench`.

Reads ``DIR/<task>/<partition>/<column>/seed<k>/summary.json`` and ``metrics.jsonl`` (default DIR:
docs/results/lora-bench, the copy of runs/study/lora-bench kept in the repository) and prints one row per
cell: final and best accuracy, MB up / down / total, total bits per parameter per client-round, and the
LoRA B tensors' sum of magnitudes in the final adapter when the final parameters are there.

    python docs/results/lora_bench_table.py [DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: Path) -> None:
    print("| column | seed | final | best | up MB | down MB | total MB | total bits/param |")
    print("|---|---|---|---|---|---|---|---|")
    for f in sorted(root.glob("*/*/*/seed*/summary.json")):
        s = json.loads(f.read_text())
        col, seed = f.parent.parent.name, f.parent.name.removeprefix("seed")
        up, down = s["total_uplink_bytes"] / 1e6, s["total_downlink_bytes"] / 1e6
        bpp = s.get("total_bits_per_param")
        print(
            f"| {col} | {seed} | {s['final_metric']:.3f} | {s['best_metric']:.3f} | {up:.3f} | {down:.2f} | "
            f"{up + down:.2f} | {bpp:.3f} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "lora-bench")

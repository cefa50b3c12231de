"""The lora-bench tables of docs/results.md: every finished cell of `fedsqueeze study lora-bench`.

Reads ``DIR/<task>/<partition>/<column>/seed<k>/summary.json`` (default DIR: docs/results/lora-bench, the
copy of runs/study/lora-bench kept in the repository) and prints one row per cell: final and best accuracy,
MB up / down / total and total bits per parameter per client-round. Then one row per task × partition ×
column with the mean ± std over its seeds (sample std, n − 1), and the LoRA-frozen controls when they are
there (``docs/results/lora-gap/<partition>-frozenlora-seed<k>`` for the ``minilm-rt-lora`` task,
``<partition>-adamw-frozenlora-seed<k>`` for ``minilm-rt-lora-adamw``,
``docs/results/smollm2-gap/<partition>-frozenlora-seed<k>`` for ``smollm2-rt-verbalizer``). Last, the LoRA
gap seed by seed: dense fp32 (``identity``) minus the control of the same seed, final and best.

    python docs/results/lora_bench_table.py [DIR] [TASK] [--means]

TASK (optional) keeps that task's rows only. ``--means`` leaves out the per-cell table and adds the seed means
of the uplink, downlink and total MB to the mean ± std table (for grids with many cells).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

CONTROL = "LoRA frozen (control)"
#: each task's LoRA-frozen controls: (folder beside DIR, folder-name infix)
CONTROLS = {
    "minilm-rt-lora": ("lora-gap", "frozenlora-"),
    "minilm-rt-lora-adamw": ("lora-gap", "adamw-frozenlora-"),
    "smollm2-rt-verbalizer": ("smollm2-gap", "frozenlora-"),
}


def _ms(xs: list[float]) -> str:
    return f"{xs[0]:.3f}" if len(xs) == 1 else f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def main(root: Path, only: str | None = None, means: bool = False) -> None:
    head = (
        "| task | partition | column | seed | final | best | up MB | down MB | total MB | total bits/param |"
    )
    if not means:
        print(head)
        print("|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for f in sorted(root.glob("*/*/*/seed*/summary.json")):
        s = json.loads(f.read_text())
        task, part = f.parents[3].name, f.parents[2].name
        if only is not None and task != only:
            continue
        col, seed = f.parents[1].name, f.parent.name.removeprefix("seed")
        up, down = s["total_uplink_bytes"] / 1e6, s["total_downlink_bytes"] / 1e6
        bpp = s.get("total_bits_per_param")
        bpp_text = "–" if bpp is None else f"{bpp:.3f}"
        if not means:
            print(
                f"| {task} | {part} | {col} | {seed} | {s['final_metric']:.3f} | {s['best_metric']:.3f} "
                f"| {up:.3f} | {down:.2f} | {up + down:.2f} | {bpp_text} |"
            )
        groups[(task, part, col)].append(s)
    for task, (folder, infix) in CONTROLS.items():
        gap = root.parent / folder
        for part in sorted({p for t, p, _ in groups if t == task}):
            for f in sorted(gap.glob(f"{part}-{infix}seed*/summary.json")):
                groups[(task, part, CONTROL)].append(json.loads(f.read_text()))
    print()
    if means:
        print("| task | partition | column | seeds | final | best | up MB | down MB | total MB |")
        print("|---|---|---|---|---|---|---|---|---|")
    else:
        print("| task | partition | column | seeds | final | best |")
        print("|---|---|---|---|---|---|")
    for (task, part, col), runs in sorted(groups.items()):
        final = [r["final_metric"] for r in runs]
        best = [r["best_metric"] for r in runs]
        seeds = ", ".join(str(r["seed"]) for r in runs)
        row = f"| {task} | {part} | {col} | {seeds} | {_ms(final)} | {_ms(best)} |"
        if means:
            up = statistics.mean(r["total_uplink_bytes"] for r in runs) / 1e6
            down = statistics.mean(r["total_downlink_bytes"] for r in runs) / 1e6
            row += f" {up:.3f} | {down:.2f} | {up + down:.2f} |"
        print(row)
    print()
    print("| task | partition | seed | dense final − control | dense best − control |")
    print("|---|---|---|---|---|")
    for (task, part, col), runs in sorted(groups.items()):
        if col != CONTROL:
            continue
        dense = {r["seed"]: r for r in groups.get((task, part, "identity"), [])}
        for r in sorted(runs, key=lambda r: r["seed"]):
            if r["seed"] in dense:
                d = dense[r["seed"]]
                gap_final = 100 * (d["final_metric"] - r["final_metric"])
                gap_best = 100 * (d["best_metric"] - r["final_metric"])
                print(f"| {task} | {part} | {r['seed']} | {gap_final:+.1f} | {gap_best:+.1f} |")


if __name__ == "__main__":
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(
        Path(args[0]) if args else Path(__file__).parent / "lora-bench",
        args[1] if len(args) > 1 else None,
        means="--means" in flags,
    )

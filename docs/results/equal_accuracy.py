"""Accuracy against total traffic for every recorded column of each recorded benchmark task (the default
run's, lora-bench, and SmolLM2's), with the band within 1 point of dense fp32: where a configuration saves
bytes at dense accuracy.

It reads the packaged ``src/fedsqueeze/configs/references.json`` (``docs/results/references.py``) and writes
``docs/results/<study>/plots/equal_accuracy.png`` for each task::

    python docs/results/equal_accuracy.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedsqueeze.config import load_config
from fedsqueeze.fl.reference import load_references, reference_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_run import _paired

ROOT = Path(__file__).resolve().parents[2]

# columns named on the plot besides the default and the anchors
NOTED = {
    "wf_ecq-down_wf_ecq2@r2": "the default's codecs, catch-up frame by frame",
    "wf_ecq-down_wf_ecq1-reencode-r4x60@r1": "4 rounds × 60 steps, 1 bit/param both ways",
    "randk-down_randk0.25-reencode@r0.25": "randk both ways (seeded coordinates)",
    "wf_ecq-down_wf_ecq2-reencode-rank4@r2": "the default's protocol at LoRA rank 4",
}
# the peers' protocols as columns, and the default
ANCHORS = {
    "nf4-down_nf4": "NVFlare-style: nf4 both ways",
    "topk-down_topk2@r2": "FLASC-style: TopK both ways",
    "identity-ffa": "FFA-LoRA (dense, B only)",
}


def _kind(col: dict, default: dict) -> str:
    if col["label"] == "identity":
        return "dense"
    if col["label"] == default["label"]:
        return "default"
    if col["label"] in ANCHORS:
        return "anchor"
    if col["codec"]["name"] == "identity" and col["downlink"]["name"] == "identity":
        return "recipe"  # dense fp32 both ways with another recipe (rank, rounds): not a codec
    if col["downlink"]["name"] == "identity":
        return "uplink"  # a compressed uplink over the dense broadcast
    return "both"


STYLE = {
    "dense": {"color": "black", "marker": "s", "s": 70, "zorder": 5},
    "default": {"color": "tab:red", "marker": "*", "s": 180, "zorder": 6},
    "anchor": {"color": "tab:purple", "marker": "D", "s": 55, "zorder": 4},
    "uplink": {"color": "tab:gray", "marker": "o", "s": 22, "zorder": 2, "alpha": 0.6},
    "both": {"color": "tab:blue", "marker": "o", "s": 40, "zorder": 3},
    "recipe": {"facecolors": "none", "edgecolors": "black", "marker": "s", "s": 60, "zorder": 4},
}
NAMES = {
    "dense": "dense fp32 both ways",
    "default": "the default run",
    "anchor": "peers' protocols",
    "uplink": "compressed uplink, dense broadcast",
    "both": "compressed both ways",
    "recipe": "dense fp32 both ways, another recipe",
}


def plot(task: dict, default: dict, out: Path | None = None) -> Path:
    """``task``'s plot (a record of references.json) into ``out`` (default:
    ``docs/results/<study>/plots/equal_accuracy.png``); ``default``: the default run's column (its label
    marks the same protocol in any task)."""
    dense = next(c for c in task["columns"] if c["label"] == task["dense"])
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    d = dense["final_metric"]["mean"]
    ax.axhspan(d - 0.01, d + 0.01, color="tab:green", alpha=0.12, label="within 1 point of dense")
    seen: set[str] = set()
    for col in sorted(task["columns"], key=lambda c: c["total_mb"]):
        kind = _kind(col, default)
        m = col["final_metric"]
        ax.errorbar(col["total_mb"], m["mean"], yerr=m["std"] if m["n"] > 1 else None, fmt="none",
                    ecolor=STYLE[kind].get("color", "black"), alpha=0.5, zorder=1)  # fmt: skip
        ax.scatter(col["total_mb"], m["mean"], label=None if kind in seen else NAMES[kind], **STYLE[kind])
        seen.add(kind)
        seeds, _, _ = _paired(col, dense)
        if kind in ("default", "anchor") or col["label"] in NOTED:
            text = "default" if kind == "default" else ANCHORS.get(col["label"]) or NOTED[col["label"]]
            below = kind == "default" or col["label"] in NOTED
            ax.annotate(f"{text} ({len(seeds)}s)", (col["total_mb"], m["mean"]), fontsize=7,
                        xytext=(4, -10 if below else 4), textcoords="offset points")  # fmt: skip
    target = dense["total_mb"] / 100
    ax.axvline(target, color="tab:green", ls="--", lw=1, label=f"100× less than dense ({target:.2f} MB)")
    ax.set_xscale("log")
    ax.set_xlabel("total MB per run, uplink + downlink (log scale)")
    ax.set_ylabel(f"final {task['metric_name']} (mean ± std over seeds)")
    ax.set_title(
        f"{task['study']} {task['task']} / {task['partition']}: accuracy against total traffic", fontsize=10
    )
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = out or ROOT / "docs" / "results" / task["study"] / "plots" / "equal_accuracy.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ref = reference_for(load_config())
    if ref is None or ref["same_config"] is None:
        raise SystemExit("the default config is not a recorded column of a benchmark task (references.json)")
    for task in load_references():
        print(f"wrote {plot(task, ref['same_config']).relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()

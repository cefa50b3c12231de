"""Per task × partition: held-out metric against cumulative uplink MB (log x), a seed-mean line per codec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require

__all__ = ["mean_curve", "plot_groups"]


def mean_curve(curves: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Seed mean of ``[round, cum_uplink_bytes, metric]`` curves over the evaluations all seeds share.

    Seeds of one cell share the schedule, so their evaluations fall on the same rounds; the x of a point is
    the mean cumulative uplink (it differs between seeds only for variable-rate codecs). Returns MB, metric.
    """
    curves = [c for c in curves if c]
    if not curves:
        return None
    common = sorted(set.intersection(*({int(p[0]) for p in c} for c in curves)))
    if not common:
        return None
    by_round = [{int(p[0]): p for p in c} for c in curves]
    mb = np.array([np.mean([b[r][1] for b in by_round]) / 1e6 for r in common])
    metric = np.array([np.mean([b[r][2] for b in by_round]) for r in common])
    return mb, metric


def plot_groups(results: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write ``<task>__<partition>.png`` for every group of ``results`` (see :func:`.aggregate.aggregate`)."""
    require("matplotlib", "plots", "the study plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .._plotstyle import REFERENCE_GREY, series_style

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for g in results["groups"]:
        fig = Figure(figsize=(7, 4.5), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        others = 0
        for c in g["codecs"]:
            cells = [
                r
                for r in results["cells"]
                if r["task"] == g["task"] and r["partition"] == g["partition"] and r["codec"] == c["codec"]
                and r["status"] == "done"
            ]  # fmt: skip
            mc = mean_curve([r["curve"] for r in cells])
            if mc is None:
                continue
            if c["codec"] == g["baseline"]:  # the traffic baseline: black, dashed
                style = {"color": "black", "ls": "--", "marker": "o"}
            else:  # colour + line style + marker: 13 codecs stay apart
                style, others = series_style(others), others + 1
            ax.plot(*mc, ms=3.5, lw=1.3, label=f"{c['codec']} (n={len(cells)})", **style)
        if g["target"] is not None:
            ax.axhline(g["target"], color=REFERENCE_GREY, lw=0.8, ls=":", label=f"target {g['target']:.3f}")
        ax.set_xscale("log")
        ax.set_xlabel("cumulative uplink (MB, payload bytes, all clients)")
        ax.set_ylabel(f"held-out {g['metric_name'] or 'metric'} (seed mean)")
        ax.set_title(f"{g['task']} / {g['partition']}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if ax.get_lines():
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        path = folder / f"{g['task']}__{g['partition']}.png"
        fig.savefig(path)
        written.append(path)
    return written

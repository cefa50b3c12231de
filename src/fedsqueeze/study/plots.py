"""The study's plots, per task × partition (matplotlib's Agg canvas; no global backend change).

- ``<task>__<partition>.png``: the held-out metric against cumulative uplink MB (left) and cumulative uplink +
  downlink MB (right), log x, a seed-mean line per codec column.
- ``<task>__<partition>__rate.png``: accuracy–rate curves, every family (``[[codecs]]`` entry) on it: x the
  measured total bits per parameter (uplink + downlink per trained parameter per client-round, seed mean; log
  axis), y the final metric (left) and the best metric (right), seed mean with seed-std error bars. A swept
  family is a line through its rates, an unswept one a single marker.
- ``<task>__<partition>__rate_uplink.png``: the same against the LoRA uplink bits per parameter (what a
  codec's ``rate`` targets).

A group whose metric is lower-is-better (``metric_higher_is_better`` false, e.g. a held-out loss) says
"(lower is better)" on its y axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require

__all__ = ["RATE_PLOTS", "mean_curve", "metric_label", "plot_groups", "plot_rate_curves", "rate_figure"]


def metric_label(group: dict[str, Any], text: str) -> str:
    """A y-axis label: ``text``, plus ``" (lower is better)"`` for a lower-is-better group (results.json
    groups without ``metric_higher_is_better`` are higher-is-better)."""
    return text if group.get("metric_higher_is_better", True) else f"{text} (lower is better)"


def mean_curve(curves: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Seed mean of ``[round, cum_bytes, metric]`` curves over the evaluations all seeds share.

    Seeds of one cell share the schedule, so their evaluations fall on the same rounds; the x of a point is
    the mean cumulative bytes (it differs between seeds only for variable-rate codecs). Returns MB, metric.
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


def _figure(ncols: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * ncols + 2.2, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _style(label: str, baseline: str, others: int) -> tuple[dict[str, Any], int]:
    from .._plotstyle import series_style

    if label == baseline:  # the traffic baseline: black, dashed
        return {"color": "black", "ls": "--", "marker": "o"}, others
    return series_style(others), others + 1  # colour + line style + marker: many codecs stay apart


def plot_groups(results: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write ``<task>__<partition>.png`` for every group of ``results`` (see :func:`.aggregate.aggregate`)."""
    require("matplotlib", "plots", "the study plots")
    from .._plotstyle import REFERENCE_GREY

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for g in results["groups"]:
        fig, axes = _figure(2)
        panels = (("curve", "cumulative uplink (MB)"), ("curve_total", "cumulative uplink + downlink (MB)"))
        for ax, (key, xlabel) in zip(axes, panels, strict=True):
            others = 0
            for c in g["codecs"]:
                cells = [
                    r
                    for r in results["cells"]
                    if (r["task"], r["partition"], r["codec"]) == (g["task"], g["partition"], c["codec"])
                    and r["status"] == "done"
                ]
                mc = mean_curve([r.get(key) or [] for r in cells])
                if mc is None:
                    continue
                style, others = _style(c["codec"], g["baseline"], others)
                ax.plot(*mc, ms=3.5, lw=1.3, label=f"{c['codec']} (n={len(cells)})", **style)
            if g["target"] is not None:
                ax.axhline(
                    g["target"], color=REFERENCE_GREY, lw=0.8, ls=":", label=f"target {g['target']:.3f}"
                )
            ax.set_xscale("log")
            ax.set_xlabel(f"{xlabel}, payload bytes, all clients")
            ax.set_ylabel(metric_label(g, f"held-out {g['metric_name'] or 'metric'} (seed mean)"))
            ax.grid(alpha=0.3, which="both")
        fig.suptitle(f"{g['task']} / {g['partition']}", fontsize=10)
        if axes[-1].get_lines():
            axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        path = folder / f"{g['task']}__{g['partition']}.png"
        fig.savefig(path)
        written.append(path)
    return written


RATE_PLOTS = (
    ("rate", "total_bits_per_param", "total bits/param (uplink + downlink, per client-round)"),
    ("rate_uplink", "uplink_bits_per_param", "uplink bits/param (LoRA frames)"),
)


def rate_figure(group: dict[str, Any], xkey: str = "total_bits_per_param", xlabel: str = "bits/param") -> Any:
    """The accuracy–rate figure of one group (``results["groups"][i]``): final (left) and best (right)
    metric against ``xkey`` of its families' points (see :func:`.aggregate.family_curves`)."""
    require("matplotlib", "plots", "the study plots")
    g = group
    base_family = next((c["family"] for c in g["codecs"] if c["codec"] == g["baseline"]), "")
    fig, axes = _figure(2)
    for ax, metric in zip(axes, ("final", "best"), strict=True):
        others = 0
        for fam in g["families"]:
            pts = sorted(
                (p for p in fam["points"] if p[xkey] is not None and p[metric] is not None),
                key=lambda p: p[xkey],
            )
            if not pts:
                continue
            style, others = _style(fam["family"], base_family, others)
            yerr = [p[f"{metric}_std"] or 0.0 for p in pts]
            ax.errorbar(
                [p[xkey] for p in pts], [p[metric] for p in pts], yerr=yerr, capsize=2.5, ms=4, lw=1.3,
                label=f"{fam['family']} ({len(pts)} pt)", **style,
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_label(g, f"{metric} {g['metric_name'] or 'metric'} (seed mean ± std)"))
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"{g['task']} / {g['partition']}: accuracy against rate", fontsize=10)
    if axes[-1].get_lines():
        axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def plot_rate_curves(results: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write the accuracy–rate curves of every group: ``<task>__<partition>__rate.png`` (x: total bits per
    parameter) and ``..__rate_uplink.png`` (x: uplink bits per parameter); see the module docstring."""
    require("matplotlib", "plots", "the study plots")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for g in results["groups"]:
        for suffix, xkey, xlabel in RATE_PLOTS:
            path = folder / f"{g['task']}__{g['partition']}__{suffix}.png"
            rate_figure(g, xkey, xlabel).savefig(path)
            written.append(path)
    return written

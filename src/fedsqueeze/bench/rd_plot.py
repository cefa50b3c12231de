"""Plot of the rate–distortion benchmark: log D against R per source, with the three reference curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._extras import require
from .._plotstyle import series_style

if TYPE_CHECKING:
    from matplotlib.artist import Artist

__all__ = ["plot_rd"]

# The references are grey and dashed in three ways, no markers; codecs get colours (never grey) and markers.
_REF_STYLE: dict[str, dict[str, Any]] = {
    "gaussian": dict(
        color="0.25",
        ls="--",
        lw=1.4,
        label="Gaussian 2^(−2R): target for any source of this variance, not a wall",
    ),
    "waterfilling": dict(
        color="0.45", ls="-.", lw=1.8, label="reverse water-filling over per-tensor variances"
    ),
    "slb": dict(color="0.6", ls=":", lw=1.8, label="memoryless lower bound (Shannon, N/σ²·2^(−2R))"),
}


def plot_rd(
    rows: Sequence[dict], refs: Mapping[str, object], path: str | Path, *, max_rate: float = 2.0
) -> Path:
    """Write a figure with one panel per source: every codec's points and the reference curves.

    Points beyond ``1.15 * max_rate`` (dense fp16/fp32 codecs) are listed in the panel instead of drawn, so
    the interesting low-rate region keeps its scale.
    """
    matplotlib = require("matplotlib", "plots", "the rate-distortion plot (or pass --no-plot)")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(refs)
    n = max(1, len(sources))
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.8 * nrows), squeeze=False)
    xmax = 1.15 * max_rate
    # colours only for codecs with a point on the plot; (colour, marker) pairs stay distinct past ten codecs
    codecs = sorted({r["codec"] for r in rows if r["bits_per_param"] <= xmax})
    codecs += sorted({r["codec"] for r in rows} - set(codecs))
    styles = {c: series_style(i) for i, c in enumerate(codecs)}
    grid = np.linspace(0.0, xmax, 200)
    handles: dict[str, Artist] = {}
    for ax, src in zip(axes.flat, sources, strict=False):
        ref = refs[src]
        for key, style in _REF_STYLE.items():
            (h,) = ax.plot(grid, getattr(ref, key)(grid), **style)
            handles.setdefault(style["label"], h)
        off = []
        for c in codecs:
            pts = sorted(
                (r["bits_per_param"], r["rel_error"]) for r in rows if r["source"] == src and r["codec"] == c
            )
            shown = [(x, y) for x, y in pts if x <= xmax and y > 0]
            off += [f"{c}: {x:.3g} bpp, D={y:.2g}" for x, y in pts if (x, y) not in shown]
            if shown:
                xs, ys = zip(*shown, strict=True)
                style = {**styles[c], "ls": styles[c]["ls"] if len(xs) > 1 else "none"}
                (h,) = ax.plot(xs, ys, ms=5, label=c, **style)
                handles.setdefault(c, h)
        ax.set_yscale("log")
        ax.set_xlim(0, xmax)
        ax.set_xlabel("rate R (bits per parameter, measured from payload bytes)")
        ax.set_ylabel("relative error D = ‖u−û‖²/‖u‖²")
        ax.set_title(f"source: {src}")
        ax.grid(True, which="both", alpha=0.3)
        if off:
            ax.text(
                0.02,
                0.02,
                "off-plot:\n" + "\n".join(off),
                transform=ax.transAxes,
                ha="left",
                va="bottom",
                fontsize=7,
                bbox=dict(boxstyle="round", fc="white", alpha=0.8),
            )
    for ax in list(axes.flat)[len(sources) :]:
        ax.set_visible(False)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8, frameon=False)
    legend_rows = math.ceil(len(handles) / 3)
    fig.tight_layout(rect=(0, min(0.45, 0.045 * legend_rows / nrows + 0.02), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path

"""Line styles that keep many series apart on one plot: colour, line style and marker together.

Colours come from matplotlib's ``tab10`` without its grey, which is left to reference curves and guide
lines; past nine series the colours repeat with another line style and marker, so no two series share
all three.
"""

from __future__ import annotations

__all__ = ["REFERENCE_GREY", "series_style"]

#: tab10 without tab:gray (index 7): blue, orange, green, red, purple, brown, pink, olive, cyan.
COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
)  # fmt: skip
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "D", "^", "v", "<", ">", "P", "X", "*")  # 10 markers, coprime with the 9 colours
REFERENCE_GREY = "0.45"


def series_style(i: int) -> dict[str, str]:
    """Matplotlib ``plot`` keywords of series ``i`` (``color``, ``ls``, ``marker``); distinct for every
    ``i`` below ``9 * 4``."""
    n = len(COLORS)
    return {
        "color": COLORS[i % n],
        "ls": LINESTYLES[(i // n) % len(LINESTYLES)],
        "marker": MARKERS[i % len(MARKERS)],
    }

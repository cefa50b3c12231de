"""How numbers read on the console: metrics, sizes, durations, and the per-round and final lines of a run.

``fedsqueeze run`` and the ``fedsqueeze flower`` commands print the same lines through :func:`round_line`
and :func:`result_line` (:func:`final_line` with what goes around it). Metrics show 4 significant digits,
sizes 3 in decimal units chosen by size (B, kB, MB, GB), durations in s / min / h; counts agree with their
noun ("1 round", "3 rounds").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["duration", "final_line", "metric", "plural", "result_line", "round_line", "size"]


def metric(value: float | None, digits: int = 4) -> str:
    """``0.515625`` → ``0.5156``; ``0.44999998807907104`` → ``0.45``; ``None`` → ``n/a``."""
    if value is None or not math.isfinite(value):
        return "n/a" if value is None else str(value)
    return f"{value:.{digits}g}"


def size(nbytes: float) -> str:
    """Bytes in decimal units with 3 significant digits: ``812 B``, ``1.23 kB``, ``147 kB``, ``1.16 MB``."""
    n = float(nbytes)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{_sig3(n / scale)} {unit}"
    return f"{int(n)} B"


def _sig3(x: float) -> str:
    text = f"{x:.3g}"
    return text if "e" not in text else f"{x:.0f}"  # 999.6 kB rounds to "1e+03": show 1000


def duration(seconds: float) -> str:
    """``0.84 s``, ``12.3 s``, ``5 min 32 s``, ``1 h 02 min``."""
    s = float(seconds)
    if s < 10:
        return f"{s:.2g} s" if s < 1 else f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        m, sec = divmod(round(s), 60)
        return f"{m} min {sec:02d} s"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m:02d} min"


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 round``, ``3 rounds``, ``0 rounds``."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


def round_line(row: Mapping[str, Any], total: int) -> str:
    """One ``metrics.jsonl`` row as a line, traffic cumulative, total first:
    ``round 3/11  accuracy 0.7361  total 3.27 MB (up 321 kB, down 2.95 MB)  12 s``."""
    value = row.get("eval_metric")
    shown = f"{row.get('eval_metric_name', 'metric')} {metric(value)}" if value is not None else "(no eval)"
    return (
        f"round {row['round']}/{total}  {shown}  "
        f"total {size(row['cum_uplink_bytes'] + row['cum_downlink_bytes'])} "
        f"(up {size(row['cum_uplink_bytes'])}, down {size(row['cum_downlink_bytes'])})  "
        f"{duration(row.get('wall_s', 0.0))}"
    )


def final_line(summary: Mapping[str, Any], *, engine: str = "", elapsed_s: float | None = None) -> str:
    """The last line of a run: rounds, final and best metric, target, traffic, time, output folder.

    The time is ``elapsed_s`` (or the summary's ``elapsed_s``): the whole command, model loading included,
    with the loading itself (``load_s``) in brackets; else the rounds' own ``wall_s``.
    """
    name = summary.get("metric_name", "metric")
    parts = [
        plural(int(summary["rounds"]), "round") + (f" on {engine}" if engine else ""),
        f"final {name} {metric(summary.get('final_metric'))}",
    ]
    if summary.get("best_metric") is not None:
        parts.append(f"best {metric(summary['best_metric'])} (round {summary.get('best_round')})")
    if summary.get("target_metric") is not None:
        hit = summary.get("rounds_to_target")
        parts.append(
            f"target {metric(summary['target_metric'])} "
            + ("not reached" if hit is None else f"reached in round {hit}")
        )
    up, down = summary.get("total_uplink_bytes", 0), summary.get("total_downlink_bytes", 0)
    ratio = summary.get("dense_fp32_ratio_total")
    saving = f", {ratio:.1f}x less than dense fp32" if ratio else ""
    parts.append(f"total {size(up + down)} (uplink {size(up)}, downlink {size(down)}{saving})")
    elapsed = elapsed_s if elapsed_s is not None else summary.get("elapsed_s")
    load = summary.get("load_s")
    if elapsed is not None:
        parts.append(duration(elapsed) + (f" (model load {duration(load)})" if load is not None else ""))
    else:
        parts.append(duration(summary.get("wall_s", 0.0)))
    return ", ".join(parts) + f" -> {summary.get('out_dir', '')}"


def result_line(summary: Mapping[str, Any], *, engine: str = "", elapsed_s: float | None = None) -> str:
    """What a finished run prints: :func:`final_line` plus the health warnings it finished with, preceded by a
    line on the recorded benchmark task its config runs, if any (:func:`~.reference.reference_line`)."""
    from .health import describe
    from .reference import reference_line

    warned = describe(summary.get("warnings") or [])
    line = final_line(summary, engine=engine, elapsed_s=elapsed_s)
    recorded = reference_line(summary)
    return (
        (f"{recorded}\n" if recorded else "")
        + line
        + (f"; finished with {warned} (see summary.json)" if warned else "")
    )

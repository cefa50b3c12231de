"""The statistics of a study group: seed means, the target and what reaches it, rate curves, the seed-spread
screens and the BD-rate rows (:mod:`.aggregate` has the definitions). Part of :mod:`.aggregate`."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

from .grid import StudyGrid

__all__ = [
    "BASES",
    "BD_METHOD",
    "METRICS",
    "bd_rows",
    "codec_spread",
    "family_curves",
    "group_stats",
    "paired_differences",
    "reach_target",
    "seed_differences",
]

_EPS = 1e-12  # a run "reaches" a target that is a seed mean of floats it equals up to rounding
METRICS = ("final", "best")  # the metrics of the rate curves and BD-rates: final_metric, best_metric
BASES = {"total": "total_bits_per_param", "uplink": "uplink_bits_per_param"}  # rate basis -> x field
BD_METHOD = "pchip"


def reach_target(
    curve: Sequence[Sequence[float]], target: float, *, higher_is_better: bool = True
) -> tuple[int, float] | tuple[None, None]:
    """``(round, x)`` of the first evaluation ``[round, x, metric]`` with metric >= target (metric <= target
    with ``higher_is_better=False``), else Nones (x: the cumulative bytes, or the simulated seconds, of the
    curve)."""
    sign = 1.0 if higher_is_better else -1.0
    for rnd, x, metric in curve:
        if sign * metric >= sign * target - _EPS:
            return int(rnd), x
    return None, None


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
    }


def _reduction(mine: float | None, base: float | None) -> float | None:
    return None if mine is None or not base else 1.0 - mine / base


def group_stats(grid: StudyGrid, task: str, part: str, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``results.json`` group: the per-column statistics of ``recs`` (the :func:`~.load.load_cell`
    records of one task × partition; adds the to-target fields to them in place), the target, the rate curves
    and the seed-spread screens."""
    done = [r for r in recs if r["status"] == "done"]
    codecs: dict[str, dict[str, Any]] = {}
    for col in grid.columns:
        mine = [r for r in recs if r["codec"] == col.label]
        ok = [r for r in mine if r["status"] == "done"]
        codecs[col.label] = {
            "codec": col.label,
            "family": col.family,
            "rate": col.rate,
            "codec_name": col.name,
            "seeds_done": len(ok),
            "seeds_failed": sum(r["status"] == "failed" for r in mine),
            "seeds_missing": sum(r["status"] == "missing" for r in mine),
            "final_metric": _stats([r["final_metric"] for r in ok]),
            "best_metric": _stats([r["best_metric"] for r in ok]),
            "uplink_mb": _stats([r["total_uplink_bytes"] / 1e6 for r in ok]),
            "downlink_mb": _stats([r["total_downlink_bytes"] / 1e6 for r in ok]),
            "total_mb": _stats([r["total_bytes"] / 1e6 for r in ok]),
            "uplink_bits_per_param": _stats([r["uplink_bits_per_param"] for r in ok]),
            "total_bits_per_param": _stats([r["total_bits_per_param"] for r in ok]),
            "sim_time_s": _stats([r["sim_time_s"] for r in ok]),
            "per_seed": {int(r["seed"]): {"final": r["final_metric"], "best": r["best_metric"]} for r in ok},
        }
    higher = bool(done[0]["metric_higher_is_better"]) if done else True
    sign = 1.0 if higher else -1.0  # weakest: the lowest best for accuracy, the highest for a loss
    ranked = [c for c in codecs.values() if c["best_metric"]["mean"] is not None]
    weakest = min(ranked, key=lambda c: sign * c["best_metric"]["mean"], default=None)
    fixed = next(t.target for t in grid.tasks if t.name == task)
    target = fixed if fixed is not None else (None if weakest is None else weakest["best_metric"]["mean"])
    for c in codecs.values():
        hits: list[tuple[int, float, float, float | None]] = []  # (round, uplink, total, sim) of the reached
        for r in (r for r in done if r["codec"] == c["codec"]):
            rnd, up = (
                (None, None) if target is None else reach_target(r["curve"], target, higher_is_better=higher)
            )
            total = (
                None if target is None else reach_target(r["curve_total"], target, higher_is_better=higher)[1]
            )
            sim = (
                None
                if target is None or not r["curve_sim"]
                else reach_target(r["curve_sim"], target, higher_is_better=higher)[1]
            )
            r["rounds_to_target"], r["uplink_bytes_to_target"] = rnd, up
            r["total_bytes_to_target"] = total
            r["downlink_bytes_to_target"] = None if total is None or up is None else total - up
            r["sim_time_to_target_s"] = sim
            if rnd is not None and up is not None and total is not None:  # the total curve reaches it too
                hits.append((rnd, up, total, sim))
        reached = hits
        c["seeds_reached"] = len(reached)
        c["rounds_to_target"] = _stats([h[0] for h in reached])
        c["uplink_mb_to_target"] = _stats([h[1] / 1e6 for h in reached])
        c["downlink_mb_to_target"] = _stats([(h[2] - h[1]) / 1e6 for h in reached])
        c["mb_to_target_total"] = _stats([h[2] / 1e6 for h in reached])
        c["total_bytes_to_target"] = _stats([h[2] for h in reached])
        c["sim_time_to_target_s"] = _stats([h[3] for h in reached])
    base = codecs.get(grid.baseline, {})
    base_up = base.get("uplink_mb_to_target", {}).get("mean")
    base_total = base.get("mb_to_target_total", {}).get("mean")
    for c in codecs.values():
        c["traffic_reduction"] = _reduction(c["uplink_mb_to_target"]["mean"], base_up)
        c["traffic_reduction_uplink"] = c["traffic_reduction"]
        c["traffic_reduction_total"] = _reduction(c["mb_to_target_total"]["mean"], base_total)
    base_cells = [r for r in recs if r["codec"] == grid.baseline]
    group = {
        "task": task,
        "partition": part,
        "metric_name": done[0]["metric_name"] if done else None,
        "metric_higher_is_better": higher,
        "target": target,
        "target_source": "task.target" if fixed is not None else "weakest codec's best (seed mean)",
        "weakest": None if weakest is None else weakest["codec"],
        "baseline": grid.baseline,
        "baseline_downlink": base_cells[0]["config"]["downlink"]["name"] if base_cells else None,
        "codecs": list(codecs.values()),
    }
    group["families"] = family_curves(group)
    group["seed_differences"] = seed_differences(group)
    group["codec_spread"] = codec_spread(group)
    group["paired_differences"] = paired_differences(group)
    return group


def family_curves(group: dict[str, Any]) -> list[dict[str, Any]]:
    """Each family's rate curve: its columns' seed means, ordered by total bits per parameter.

    A point: ``codec`` (the column), ``rate``, ``seeds``, ``total_bits_per_param`` / ``uplink_bits_per_param``
    (seed means), ``final`` / ``best`` (seed means) and ``final_std`` / ``best_std``. Columns without a
    finished seed are left out.
    """
    fams: dict[str, dict[str, Any]] = {}
    for c in group["codecs"]:
        fam = fams.setdefault(
            c["family"], {"family": c["family"], "codec_name": c["codec_name"], "points": []}
        )
        if not c["seeds_done"]:
            continue
        fam["points"].append(
            {
                "codec": c["codec"],
                "rate": c["rate"],
                "seeds": c["seeds_done"],
                "total_bits_per_param": c["total_bits_per_param"]["mean"],
                "uplink_bits_per_param": c["uplink_bits_per_param"]["mean"],
                "final": c["final_metric"]["mean"],
                "final_std": c["final_metric"]["std"],
                "best": c["best_metric"]["mean"],
                "best_std": c["best_metric"]["std"],
            }
        )
    for fam in fams.values():
        fam["points"].sort(key=lambda p: (p["total_bits_per_param"] is None, p["total_bits_per_param"] or 0))
    return list(fams.values())


def seed_differences(group: dict[str, Any]) -> list[dict[str, Any]]:
    """Pairs of columns at the same rate whose mean final metrics differ by more than the seed spread.

    The pairs: columns that share a swept ``rate``, and the unswept columns among themselves. Each entry:
    ``a``, ``b``, ``rate``, ``delta`` (mean a − mean b), ``threshold`` (``2·sqrt(std_a²/n_a + std_b²/n_b)``)
    and ``exceeds`` (``|delta| > threshold``), ``None`` with a ``reason`` when a side has fewer than 2
    finished seeds. Pairs without a mean on both sides are left out.
    """
    by_rate: dict[float | None, list[dict[str, Any]]] = {}
    for c in group["codecs"]:
        if c["final_metric"]["mean"] is not None:
            by_rate.setdefault(c["rate"], []).append(c)
    out = []
    for rate, cols in by_rate.items():
        for a, b in itertools.combinations(cols, 2):
            sa, sb = a["final_metric"], b["final_metric"]
            entry: dict[str, Any] = {
                "a": a["codec"],
                "b": b["codec"],
                "rate": rate,
                "metric": "final",
                "mean_a": sa["mean"],
                "mean_b": sb["mean"],
                "std_a": sa["std"],
                "std_b": sb["std"],
                "n_a": sa["n"],
                "n_b": sb["n"],
                "delta": sa["mean"] - sb["mean"],
            }
            if sa["n"] < 2 or sb["n"] < 2:
                entry.update(threshold=None, exceeds=None, reason="fewer than 2 finished seeds on a side")
            else:
                thr = 2.0 * math.sqrt(sa["std"] ** 2 / sa["n"] + sb["std"] ** 2 / sb["n"])
                entry.update(threshold=thr, exceeds=abs(entry["delta"]) > thr, reason=None)
            out.append(entry)
    return out


def codec_spread(group: dict[str, Any]) -> list[dict[str, Any]]:
    """Per swept rate: how far apart the codecs at that rate are, against the seed spread.

    One entry per rate with finished columns: ``rate``, ``columns`` (labels with a seed mean), and for
    ``final`` and ``best``: ``lowest`` / ``highest`` (``[column, seed mean]``), ``spread`` (highest − lowest),
    ``seed_std`` (pooled: the root mean of the variances of the columns at that rate with 2 or more seeds;
    without one, the baseline column's std) with ``std_source`` (``"rate"``, ``"baseline"`` or ``None``) and
    ``separates`` (``spread > 2·seed_std``, ``None`` without a std or with fewer than 2 columns).
    """
    base = next((c for c in group["codecs"] if c["codec"] == group["baseline"]), None)
    rates = sorted({c["rate"] for c in group["codecs"] if c["rate"] is not None})
    out = []
    for rate in rates:
        cols = [c for c in group["codecs"] if c["rate"] == rate and c["final_metric"]["mean"] is not None]
        if not cols:
            continue
        entry: dict[str, Any] = {"rate": rate, "columns": [c["codec"] for c in cols]}
        for metric in ("final", "best"):
            key = f"{metric}_metric"
            lo = min(cols, key=lambda c: c[key]["mean"])
            hi = max(cols, key=lambda c: c[key]["mean"])
            variances = [c[key]["std"] ** 2 for c in cols if c[key]["std"] is not None]
            if variances:
                std, source = math.sqrt(statistics.fmean(variances)), "rate"
            elif base is not None and base[key]["std"] is not None:
                std, source = base[key]["std"], "baseline"
            else:
                std, source = None, None
            spread = hi[key]["mean"] - lo[key]["mean"]
            entry[metric] = {
                "lowest": [lo["codec"], lo[key]["mean"]],
                "highest": [hi["codec"], hi[key]["mean"]],
                "spread": spread,
                "seed_std": std,
                "std_source": source,
                "separates": None if std is None or len(cols) < 2 else spread > 2.0 * std,
            }
        out.append(entry)
    return out


def paired_differences(group: dict[str, Any]) -> list[dict[str, Any]]:
    """Seed-paired differences of the columns :func:`seed_differences` compares, for ``final`` and ``best``.

    Two columns run with the same seed share the client sampling, the data partition and the initial
    adapter and head, so much of the spread across seeds cancels in their per-seed difference
    ``d_s = a_s − b_s``. Each entry: ``a``, ``b``, ``rate``, ``metric``, ``seeds`` (the seeds both finished),
    ``n``, ``delta`` (mean of ``d_s``), ``std`` (of ``d_s``), ``threshold`` (``2·std/sqrt(n)``, about two
    standard errors of the mean difference) and ``exceeds`` (``|delta| > threshold``); ``threshold`` and
    ``exceeds`` are ``None`` with a ``reason`` below 2 shared seeds. Pairs without a shared seed are left out.
    """
    by_rate: dict[float | None, list[dict[str, Any]]] = {}
    for c in group["codecs"]:
        if c.get("per_seed"):
            by_rate.setdefault(c["rate"], []).append(c)
    out = []
    for rate, cols in by_rate.items():
        for a, b in itertools.combinations(cols, 2):
            seeds = sorted(set(a["per_seed"]) & set(b["per_seed"]))
            if not seeds:
                continue
            for metric in METRICS:
                diffs = [a["per_seed"][s][metric] - b["per_seed"][s][metric] for s in seeds]
                entry: dict[str, Any] = {
                    "a": a["codec"],
                    "b": b["codec"],
                    "rate": rate,
                    "metric": metric,
                    "seeds": seeds,
                    "n": len(seeds),
                    "differences": diffs,
                    "delta": statistics.fmean(diffs),
                    "std": statistics.stdev(diffs) if len(diffs) > 1 else None,
                }
                if len(diffs) < 2:
                    entry.update(threshold=None, exceeds=None, reason="fewer than 2 shared seeds")
                else:
                    thr = 2.0 * entry["std"] / math.sqrt(len(diffs))
                    entry.update(threshold=thr, exceeds=abs(entry["delta"]) > thr, reason=None)
                out.append(entry)
    return out


def bd_rows(grid: StudyGrid, groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``bd_rate.json``: every family against every reference family (see the module doc).

    Fields: ``task``, ``partition``, ``codec`` (the test family), ``reference``, ``bd_rate_percent``,
    ``accuracy_range`` (``[lo, hi]``), ``metric`` (``final``/``best``), ``metric_name``, ``rate_basis``
    (``total``/``uplink``), ``method``, ``mode`` (``curve``/``point``), ``points``, ``reference_points``,
    ``reason`` (why ``bd_rate_percent`` is ``None``), ``bound`` and ``bound_percent`` (a one-sided bound
    when the curves share no accuracy; :mod:`fedsqueeze.analysis.bd_rate`) and ``metric_higher_is_better``
    (the group's metric direction; a loss is negated inside the comparison).
    """
    from ..analysis.bd_rate import compare

    refs = grid.references()
    rows = []
    for g in groups:
        fams = {f["family"]: f for f in g["families"]}
        for ref, metric, basis in itertools.product(refs, METRICS, BASES):
            xkey = BASES[basis]

            def xy(fam: dict[str, Any], xkey: str = xkey, metric: str = metric) -> tuple[list, list]:
                pts = [p for p in fam["points"] if p[xkey] is not None and p[metric] is not None]
                return [p[xkey] for p in pts], [p[metric] for p in pts]

            if ref not in fams:
                continue
            rx, ry = xy(fams[ref])
            for name, fam in fams.items():
                if name == ref:
                    continue
                tx, ty = xy(fam)
                higher = g.get("metric_higher_is_better", True)
                res = compare(rx, ry, tx, ty, method=BD_METHOD, higher_is_better=higher).to_dict()
                rows.append(
                    {
                        "task": g["task"],
                        "partition": g["partition"],
                        "codec": name,
                        "reference": ref,
                        "bd_rate_percent": res.pop("bd_rate_percent"),
                        "accuracy_range": res.pop("accuracy_range"),
                        "metric": metric,
                        "metric_name": g["metric_name"],
                        "rate_basis": basis,
                        **res,
                    }
                )
    return rows

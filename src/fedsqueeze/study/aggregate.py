"""Aggregate a study's cell folders into ``results.{json,csv,md}`` and ``bd_rate.json``.

Per task × partition and codec column (one column per swept rate, see :mod:`.grid`): mean ± std over seeds
(``{"mean", "std", "n"}``; ``std`` needs 2 seeds) of the final and best metric, the uplink, downlink and total
(uplink + downlink) MB, the bits per parameter (``total_bits_per_param``: both directions per trained
parameter per client-round, the headline; ``uplink_bits_per_param``: the LoRA uplink frames per LoRA
parameter, the quantity a codec's ``rate`` targets) and the simulated time (``[network]``, see
:mod:`fedsqueeze.fl.network`).

**Target.** The target of a task × partition is the best metric the weakest column reaches (the lowest
seed-mean best metric), unless the task sets ``target`` (advisable with a rate sweep, whose lowest rate is
often the weakest column). For every run the rounds, cumulative uplink / downlink / total bytes and the
simulated time until the held-out metric first reaches the target are read from its ``metrics.jsonl``;
means are over the seeds that reach it. The traffic reductions are against the study's baseline column
(dense fp32 uplink; with the default identity downlink, dense fp32 both ways):
``traffic_reduction_total = 1 − total_bytes_to_target(codec) / total_bytes_to_target(baseline)`` is the
headline, ``traffic_reduction`` (its historical name) and ``traffic_reduction_uplink`` the same on the
uplink alone.

**Rate curves and BD-rate.** Each family (``[[codecs]]`` entry) is a curve of its columns' seed means:
x the bits per parameter (total, and uplink), y the final or best metric. ``bd_rate.json`` holds one row per
task × partition × metric (``final``/``best``) × rate basis (``total``/``uplink``) × reference family
(``study.bd_references``) × other family, from :func:`fedsqueeze.analysis.bd_rate.compare` (pchip; a
single-point family, e.g. a fixed-rate codec or dense fp32, compares by the rate ratio at its accuracy).

**Seed spread.** For each pair of columns at the same swept rate, and for each pair of unswept columns (each
at its own fixed or default rate), the difference of the mean final metrics is said to exceed the seed spread
when ``|Δmean| > 2·sqrt(std_a²/n_a + std_b²/n_b)``: about two standard errors of the difference. It needs at
least 2 finished seeds on both sides; with so few seeds it is a screen, not a significance test.
:func:`paired_differences` compares the same pairs seed by seed (columns run with one seed share its
sampling, partition and initial state), which cancels the part of the spread the seed itself causes.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..strict_json import finite_or_none
from .grid import Cell, StudyGrid
from .runner import ERROR_FILE, cpu_count, done_summary

__all__ = [
    "aggregate",
    "bd_rows",
    "bd_text",
    "codec_spread",
    "family_curves",
    "load_cell",
    "machine_info",
    "paired_differences",
    "reach_target",
    "seed_differences",
    "write_results",
]

_EPS = 1e-12  # a run "reaches" a target that is a seed mean of floats it equals up to rounding
METRICS = ("final", "best")  # the metrics of the rate curves and BD-rates: final_metric, best_metric
BASES = {"total": "total_bits_per_param", "uplink": "uplink_bits_per_param"}  # rate basis -> x field
BD_METHOD = "pchip"


def machine_info() -> dict[str, Any]:
    """Where the aggregation ran: platform, CPUs, torch version and GPU (if any)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        info["torch"], info["gpu"] = "absent", None
    return info


def _total_bits_per_param(summary: dict[str, Any], total_bytes: int) -> float | None:
    """The summary's ``total_bits_per_param``; for a summary written before it existed, from its transfer
    counts (a client-round taken as the larger of uploads and downloads)."""
    if summary.get("total_bits_per_param") is not None:
        return float(summary["total_bits_per_param"])
    params = (summary.get("lora_numel") or 0) + (summary.get("head_numel") or 0)
    client_rounds = max(summary.get("uploads") or 0, summary.get("downloads") or 0)
    return 8 * total_bytes / (client_rounds * params) if params and client_rounds else None


def load_cell(cell: Cell, root: str | Path) -> dict[str, Any]:
    """A cell's status (``done``/``failed``/``missing``), summary numbers and eval curves from its folder.

    ``curve``, ``curve_total`` and ``curve_sim`` are ``[round, x, metric]`` per evaluation with x the
    cumulative uplink bytes, uplink + downlink bytes and simulated seconds (``curve_sim`` is empty for rows
    without ``sim_time_s``).
    """
    out = cell.out_dir(root)
    rec: dict[str, Any] = {
        "id": cell.id,
        "task": cell.task,
        "partition": cell.partition,
        "codec": cell.codec,
        "family": cell.family or cell.codec,
        "rate": cell.rate,
        "codec_name": cell.config.codec.name,
        "seed": cell.seed,
        "dir": str(out),
        "config": cell.config.to_dict(),
    }
    summary = done_summary(cell, root)
    if summary is not None:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        bits = [r["lora_bits_per_param"] for r in rows if r.get("lora_bits_per_param") is not None]
        # A CG-FedLLM run with its TGAP phase spent traffic before round 1; the summary's totals include it,
        # the per-round cumulative bytes do not, so the curves start at that offset.
        tgap = summary.get("tgap_traffic") or {}
        offset, offset_down = int(tgap.get("uplink_bytes", 0)), int(tgap.get("downlink_bytes", 0))
        up = int(summary["total_uplink_bytes"])
        last_down = rows[-1].get("cum_downlink_bytes", 0) if rows else 0
        down = int(summary.get("total_downlink_bytes", offset_down + (last_down or 0)))
        evals = [r for r in rows if r.get("eval_metric") is not None]
        rec.update(
            status="done",
            metric_name=summary["metric_name"],
            final_metric=summary["final_metric"],
            best_metric=summary["best_metric"],
            total_uplink_bytes=up,
            total_downlink_bytes=down,
            total_bytes=up + down,
            pre_round_uplink_bytes=offset,
            pre_round_downlink_bytes=offset_down,
            uplink_bits_per_param=sum(bits) / len(bits) if bits else None,
            total_bits_per_param=_total_bits_per_param(summary, up + down),
            sim_time_s=summary.get("sim_time_s"),
            rounds=summary["rounds"],
            wall_s=summary["wall_s"],
            platform=summary.get("versions", {}).get("platform"),
            curve=[[r["round"], offset + r["cum_uplink_bytes"], r["eval_metric"]] for r in evals],
            curve_total=[
                [
                    r["round"],
                    offset + offset_down + r["cum_uplink_bytes"] + (r.get("cum_downlink_bytes") or 0),
                    r["eval_metric"],
                ]
                for r in evals
            ],
            curve_sim=[[r["round"], r["sim_time_s"], r["eval_metric"]] for r in evals]
            if all(r.get("sim_time_s") is not None for r in evals)
            else [],
        )
    elif (out / ERROR_FILE).is_file():
        lines = (out / ERROR_FILE).read_text(encoding="utf-8").strip().splitlines()
        rec.update(status="failed", error=lines[-1] if lines else "")
    else:  # not run, or its summary.json was made with another config (stale: rerun the study)
        rec.update(status="missing", stale=(out / "summary.json").is_file())
    return rec


def reach_target(curve: Sequence[Sequence[float]], target: float) -> tuple[int | None, int | None]:
    """``(round, x)`` of the first evaluation ``[round, x, metric]`` with metric >= target, else Nones (x:
    the cumulative bytes, or the simulated seconds, of the curve)."""
    for rnd, x, metric in curve:
        if metric >= target - _EPS:
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


def _group(grid: StudyGrid, task: str, part: str, recs: list[dict[str, Any]]) -> dict[str, Any]:
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
    ranked = [c for c in codecs.values() if c["best_metric"]["mean"] is not None]
    weakest = min(ranked, key=lambda c: c["best_metric"]["mean"], default=None)
    fixed = next(t.target for t in grid.tasks if t.name == task)
    target = fixed if fixed is not None else (None if weakest is None else weakest["best_metric"]["mean"])
    for c in codecs.values():
        hits = []
        for r in (r for r in done if r["codec"] == c["codec"]):
            rnd, up = (None, None) if target is None else reach_target(r["curve"], target)
            total = None if target is None else reach_target(r["curve_total"], target)[1]
            sim = None if target is None or not r["curve_sim"] else reach_target(r["curve_sim"], target)[1]
            r["rounds_to_target"], r["uplink_bytes_to_target"] = rnd, up
            r["total_bytes_to_target"] = total
            r["downlink_bytes_to_target"] = None if total is None else total - up
            r["sim_time_to_target_s"] = sim
            hits.append((rnd, up, total, sim))
        reached = [h for h in hits if h[0] is not None]
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
    when the curves share no accuracy; :mod:`fedsqueeze.analysis.bd_rate`).
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
                res = compare(rx, ry, tx, ty, method=BD_METHOD).to_dict()
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


def aggregate(grid: StudyGrid, root: str | Path, *, command: str = "") -> dict[str, Any]:
    """Everything ``results.json`` holds: per-group tables, curves, BD-rates, every cell's numbers, command
    and machine."""
    cells = grid.cells()
    recs = [load_cell(c, root) for c in cells]
    groups = [
        _group(grid, t.name, p.label, [r for r in recs if r["task"] == t.name and r["partition"] == p.label])
        for t in grid.tasks
        for p in grid.partitions
    ]
    return {
        "study": grid.name,
        "command": command,
        "machine": machine_info(),
        "run_platforms": sorted({r["platform"] for r in recs if r.get("platform")}),
        "baseline": grid.baseline,
        "seeds": list(grid.seeds),
        "rates": list(grid.rates),
        "bd_references": list(grid.references()),
        "status": {s: sum(r["status"] == s for r in recs) for s in ("done", "failed", "missing")},
        "groups": groups,
        "bd_rate": bd_rows(grid, groups),
        "cells": recs,
    }


# -- writing ------------------------------------------------------------------------------------------------
def _pm(stat: dict[str, Any], fmt: str = ".4f", scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "–"
    text = format(stat["mean"] * scale, fmt)
    return text if stat["std"] is None else f"{text} ± {format(stat['std'] * scale, fmt)}"


_CSV_STATS = (
    "final_metric",
    "best_metric",
    "uplink_mb",
    "downlink_mb",
    "total_mb",
    "uplink_bits_per_param",
    "total_bits_per_param",
    "sim_time_s",
)
_CSV_TARGET_STATS = (
    "rounds_to_target",
    "uplink_mb_to_target",
    "downlink_mb_to_target",
    "mb_to_target_total",
    "sim_time_to_target_s",
)


def _csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per task × partition × codec column (means and stds as separate columns)."""
    rows = []
    for g in results["groups"]:
        for c in g["codecs"]:
            row = {k: g[k] for k in ("task", "partition", "metric_name", "target")}
            row.update({k: c[k] for k in ("codec", "family", "rate", "codec_name")})
            row.update({k: c[k] for k in ("seeds_done", "seeds_failed", "seeds_missing")})
            for key in _CSV_STATS:
                row[f"{key}_mean"], row[f"{key}_std"] = c[key]["mean"], c[key]["std"]
            row["seeds_reached"] = c["seeds_reached"]
            for key in _CSV_TARGET_STATS:
                row[f"{key}_mean"], row[f"{key}_std"] = c[key]["mean"], c[key]["std"]
            for key in ("traffic_reduction", "traffic_reduction_total"):
                row[key] = c[key]
            rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def bd_text(row: Mapping[str, Any] | None) -> str:
    """One ``bd_rate.json`` row as table text: ``-79.5 %``, ``-51.5 % (point)``, a bound ``≤ -49.7 %`` /
    ``≥ +12.0 %`` where the curves share no accuracy, or ``–`` (no result, or no row)."""
    if row is None:
        return "–"
    v = row["bd_rate_percent"]
    if v is not None:
        return f"{v:+.1f} %" + (" (point)" if row["mode"] == "point" else "")
    if row.get("bound_percent") is not None:
        return f"{'≤' if row['bound'] == 'at most' else '≥'} {row['bound_percent']:+.1f} %"
    return "–"


def _bd_tables(results: dict[str, Any], g: dict[str, Any]) -> list[str]:
    mine = [
        r for r in results.get("bd_rate", []) if r["task"] == g["task"] and r["partition"] == g["partition"]
    ]
    out: list[str] = []
    combos = [(m, b) for b in BASES for m in METRICS]
    for ref in results.get("bd_references", []):
        rows = {(r["codec"], r["metric"], r["rate_basis"]): r for r in mine if r["reference"] == ref}
        names = list(dict.fromkeys(r["codec"] for r in mine if r["reference"] == ref))
        if not names:
            continue
        head = " | ".join(f"{m}, {b} bits" for m, b in combos)
        out += [
            "",
            f"BD-rate vs `{ref}` (negative: less rate for the same {g['metric_name'] or 'metric'}):",
            "",
        ]
        out += [f"| codec | {head} |", "|---|" + "---|" * len(combos)]
        for name in names:
            vals = [bd_text(rows.get((name, m, b))) for m, b in combos]
            out.append(f"| {name} | " + " | ".join(vals) + " |")
    if out:
        out += [
            "",
            "`–`: not computable (no overlap in accuracy, too few points, no finished cell); `bd_rate.json` "
            "gives the reason. `(point)`: one side is a single point, the rate ratio at its accuracy. "
            "`≤` / `≥`: the curves share no accuracy; the rate ratio at the edge bounds the BD-rate (the "
            "codec is ahead of the whole reference curve, or behind it).",
        ]
    return out


def _differences(g: dict[str, Any]) -> list[str]:
    hits = [d for d in g["seed_differences"] if d["exceeds"]]
    assessed = sum(d["exceeds"] is not None for d in g["seed_differences"])
    out = [
        "",
        f"Differences that exceed the seed spread (|Δ mean final| > 2·sqrt(std_a²/n_a + std_b²/n_b), pairs "
        f"at the same rate; {len(hits)} of the {assessed} pairs with 2 or more seeds on both sides):",
        "",
    ]
    if not hits:
        return [*out, "- none"]
    for d in sorted(hits, key=lambda d: -abs(d["delta"])):
        at = "unswept" if d["rate"] is None else f"rate {d['rate']:g}"
        out.append(
            f"- `{d['a']}` vs `{d['b']}` ({at}): Δ {d['delta']:+.4f} "
            f"({d['mean_a']:.4f} ± {d['std_a']:.4f} vs {d['mean_b']:.4f} ± {d['std_b']:.4f}, "
            f"n {d['n_a']}/{d['n_b']}; threshold {d['threshold']:.4f})"
        )
    return out


def _spread(g: dict[str, Any]) -> list[str]:
    rows = g.get("codec_spread", [])
    if not rows:
        return []
    out = [
        "",
        "Codec spread per rate (highest − lowest seed mean among the columns at the rate; seed std pooled "
        "over those columns with 2+ seeds, else the baseline's; separates: spread > 2 · seed std):",
        "",
        "| rate | columns | metric | lowest | highest | spread | seed std (from) | separates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        for metric in ("final", "best"):
            d = e[metric]
            std = "–" if d["seed_std"] is None else f"{d['seed_std']:.4f} ({d['std_source']})"
            sep = {None: "–", True: "yes", False: "no"}[d["separates"]]
            out.append(
                f"| {e['rate']:g} | {len(e['columns'])} | {metric} | {d['lowest'][0]} {d['lowest'][1]:.4f} "
                f"| {d['highest'][0]} {d['highest'][1]:.4f} | {d['spread']:.4f} | {std} | {sep} |"
            )
    return out


def _paired(g: dict[str, Any]) -> list[str]:
    pairs = [d for d in g.get("paired_differences", []) if d["exceeds"] is not None]
    if not pairs:
        return []
    out = [
        "",
        "Seed-paired differences (the same seeds on both sides share sampling, partition and initial state; "
        "Δ = mean of the per-seed differences a − b, threshold 2·std/sqrt(n); ✓ exceeds it):",
        "",
        "| a | b | rate | metric | seeds | Δ | std | threshold | exceeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in sorted(pairs, key=lambda d: (d["metric"], -abs(d["delta"]))):
        at = "–" if d["rate"] is None else f"{d['rate']:g}"
        out.append(
            f"| {d['a']} | {d['b']} | {at} | {d['metric']} | {d['n']} | {d['delta']:+.4f} | {d['std']:.4f} "
            f"| {d['threshold']:.4f} | {'✓' if d['exceeds'] else ''} |"
        )
    return out


def _markdown(results: dict[str, Any], grid: StudyGrid) -> str:
    m = results["machine"]
    st = results["status"]
    out = [
        f"# Study `{results['study']}`",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {m['platform']}, {m['cpus_usable']} usable CPUs ({m['cpu_count']} on the host), "
        f"torch {m['torch']}, GPU: {m['gpu'] or 'none'}  ",
        f"Runs made on: {', '.join(results['run_platforms']) or '–'}  ",
        f"Cells: {st['done']} done, {st['failed']} failed, {st['missing']} missing; seeds "
        f"{', '.join(map(str, results['seeds']))}. Values are mean ± std over the seeds that finished.",
        "",
        "Target = the best metric the weakest codec reaches (seed mean) unless the task fixes one; rounds, "
        "MB and simulated time to target are means over the seeds that reach it (`reached`). Traffic is "
        "uplink + downlink (`total`) unless a column says uplink or downlink; reduction = 1 − total MB to "
        f"target / total MB to target of `{results['baseline']}` (uplink reduction: the same on the uplink). "
        "bits/param: total = uplink + downlink bits per trained parameter per client-round; uplink = LoRA "
        "uplink bits per LoRA parameter (what a codec's `rate` targets). Time to target: simulated over the "
        "clients' links (`[network]`: compute + transfers, the slowest client per round).",
    ]
    for g in results["groups"]:
        target = "–" if g["target"] is None else f"{g['target']:.4f}"
        out += [
            "",
            f"## {g['task']} / {g['partition']}",
            "",
            f"Metric: {g['metric_name'] or '–'}; target {target} ({g['target_source']}; weakest: "
            f"{g['weakest'] or '–'}); baseline `{g['baseline']}` with downlink "
            f"`{g['baseline_downlink'] or '–'}`.",
            "",
            "| codec | seeds | rate | final | best | uplink MB | downlink MB | total MB | bits/param total "
            "| bits/param uplink | rounds to target | MB to target (total) | time to target (s) | reached "
            "| reduction (total) | reduction (uplink) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in g["codecs"]:
            n = len(results["seeds"])
            seeds = f"{c['seeds_done']}/{n}" + (f" ({c['seeds_failed']} failed)" if c["seeds_failed"] else "")
            rate = "–" if c["rate"] is None else f"{c['rate']:g}"
            out.append(
                f"| {c['codec']} | {seeds} | {rate} | {_pm(c['final_metric'])} | {_pm(c['best_metric'])} "
                f"| {_pm(c['uplink_mb'], '.3f')} | {_pm(c['downlink_mb'], '.3f')} "
                f"| {_pm(c['total_mb'], '.3f')} "
                f"| {_pm(c['total_bits_per_param'], '.3f')} | {_pm(c['uplink_bits_per_param'], '.3f')} "
                f"| {_pm(c['rounds_to_target'], '.1f')} | {_pm(c['mb_to_target_total'], '.3f')} "
                f"| {_pm(c['sim_time_to_target_s'], '.1f')} | {c['seeds_reached']}/{c['seeds_done']} "
                f"| {_pct(c['traffic_reduction_total'])} | {_pct(c['traffic_reduction'])} |"
            )
        out += _bd_tables(results, g)
        out += _differences(g)
        out += _spread(g)
        out += _paired(g)
        stem = f"{g['task']}__{g['partition']}"
        out += ["", f"![{g['task']} {g['partition']}](plots/{stem}.png)"]
        out += ["", f"![{g['task']} {g['partition']} rate curves](plots/{stem}__rate.png)"]
    failed = [r for r in results["cells"] if r["status"] == "failed"]
    if failed:
        out += ["", "## Failed cells", ""] + [f"- `{r['id']}`: {r['error']}" for r in failed]
    out += ["", "## Resolved configs", ""]
    out.append(
        "The first cell of each task; the other cells differ only in `data.partition`/`data.alpha`, "
        "`codec`, the seed keys " + ", ".join(f"`{k}`" for k in grid.seed_keys) + " and the codecs' `set`."
    )
    for t in grid.tasks:
        first = next(r for r in results["cells"] if r["task"] == t.name)
        out += ["", f"`{first['id']}`:", "", "```json", json.dumps(first["config"], indent=1), "```"]
    return "\n".join(out) + "\n"


def write_results(grid: StudyGrid, root: str | Path, *, command: str = "", plots: bool = True) -> dict:
    """Aggregate and write ``results.json``, ``results.csv``, ``results.md``, ``bd_rate.json`` and ``plots/``
    under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    results = finite_or_none(aggregate(grid, root, command=command))
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (root / "bd_rate.json").write_text(json.dumps(results["bd_rate"], indent=1) + "\n", encoding="utf-8")
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as fh:
        rows = _csv_rows(results)
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["task"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "results.md").write_text(_markdown(results, grid), encoding="utf-8")
    if plots:
        from .plots import plot_groups, plot_rate_curves

        plot_groups(results, root / "plots")
        plot_rate_curves(results, root / "plots")
    return results

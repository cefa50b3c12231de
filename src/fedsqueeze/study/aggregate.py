"""Aggregate a study's cell folders into ``results.json``, ``results.csv`` and ``results.md``.

Per task × partition and codec: mean ± std over seeds of the final and best metric, the total uplink MB and
the LoRA uplink bits per parameter. The target of a task × partition is the best metric the weakest codec
reaches (the codec with the lowest seed-mean best metric), unless the task sets ``target``. For every run the
rounds and cumulative uplink bytes until the held-out metric first reaches the target are read from its
``metrics.jsonl``; means are over the seeds that reach it. Traffic reduction is
``1 − bytes_to_target(codec) / bytes_to_target(baseline)`` with the study's baseline codec (dense fp32).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..strict_json import finite_or_none
from .grid import Cell, StudyGrid
from .runner import ERROR_FILE, cpu_count, done_summary

__all__ = ["aggregate", "load_cell", "machine_info", "reach_target", "write_results"]

_EPS = 1e-12  # a run "reaches" a target that is a seed mean of floats it equals up to rounding


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


def load_cell(cell: Cell, root: str | Path) -> dict[str, Any]:
    """A cell's status (``done``/``failed``/``missing``), summary numbers and eval curve from its folder."""
    out = cell.out_dir(root)
    rec: dict[str, Any] = {
        "id": cell.id,
        "task": cell.task,
        "partition": cell.partition,
        "codec": cell.codec,
        "seed": cell.seed,
        "dir": str(out),
        "config": cell.config.to_dict(),
    }
    summary = done_summary(cell, root)
    if summary is not None:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        bits = [r["lora_bits_per_param"] for r in rows if r.get("lora_bits_per_param") is not None]
        # A CG-FedLLM run with its TGAP phase spent uplink before round 1; the summary's totals include it,
        # the per-round cumulative bytes do not, so the curve starts at that offset.
        offset = int((summary.get("tgap_traffic") or {}).get("uplink_bytes", 0))
        rec.update(
            status="done",
            metric_name=summary["metric_name"],
            final_metric=summary["final_metric"],
            best_metric=summary["best_metric"],
            total_uplink_bytes=summary["total_uplink_bytes"],
            pre_round_uplink_bytes=offset,
            uplink_bits_per_param=sum(bits) / len(bits) if bits else None,
            rounds=summary["rounds"],
            wall_s=summary["wall_s"],
            platform=summary.get("versions", {}).get("platform"),
            curve=[
                [r["round"], offset + r["cum_uplink_bytes"], r["eval_metric"]]
                for r in rows
                if r.get("eval_metric") is not None
            ],
        )
    elif (out / ERROR_FILE).is_file():
        lines = (out / ERROR_FILE).read_text(encoding="utf-8").strip().splitlines()
        rec.update(status="failed", error=lines[-1] if lines else "")
    else:  # not run, or its summary.json was made with another config (stale: rerun the study)
        rec.update(status="missing", stale=(out / "summary.json").is_file())
    return rec


def reach_target(curve: Sequence[Sequence[float]], target: float) -> tuple[int | None, int | None]:
    """``(round, cumulative uplink bytes)`` of the first evaluation with metric >= target, else Nones."""
    for rnd, cum_bytes, metric in curve:
        if metric >= target - _EPS:
            return int(rnd), int(cum_bytes)
    return None, None


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
    }


def _group(grid: StudyGrid, task: str, part: str, recs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in recs if r["status"] == "done"]
    codecs: dict[str, dict[str, Any]] = {}
    for codec in (c.label for c in grid.codecs):
        mine = [r for r in recs if r["codec"] == codec]
        ok = [r for r in mine if r["status"] == "done"]
        codecs[codec] = {
            "codec": codec,
            "seeds_done": len(ok),
            "seeds_failed": sum(r["status"] == "failed" for r in mine),
            "seeds_missing": sum(r["status"] == "missing" for r in mine),
            "final_metric": _stats([r["final_metric"] for r in ok]),
            "best_metric": _stats([r["best_metric"] for r in ok]),
            "uplink_mb": _stats([r["total_uplink_bytes"] / 1e6 for r in ok]),
            "uplink_bits_per_param": _stats([r["uplink_bits_per_param"] for r in ok]),
        }
    ranked = [c for c in codecs.values() if c["best_metric"]["mean"] is not None]
    weakest = min(ranked, key=lambda c: c["best_metric"]["mean"], default=None)
    fixed = next(t.target for t in grid.tasks if t.name == task)
    target = fixed if fixed is not None else (None if weakest is None else weakest["best_metric"]["mean"])
    for c in codecs.values():
        hits = []
        for r in (r for r in done if r["codec"] == c["codec"]):
            rnd, nbytes = (None, None) if target is None else reach_target(r["curve"], target)
            r["rounds_to_target"], r["uplink_bytes_to_target"] = rnd, nbytes
            hits.append((rnd, nbytes))
        reached = [h for h in hits if h[0] is not None]
        c["seeds_reached"] = len(reached)
        c["rounds_to_target"] = _stats([h[0] for h in reached])
        c["uplink_mb_to_target"] = _stats([h[1] / 1e6 for h in reached])
    base = codecs.get(grid.baseline, {}).get("uplink_mb_to_target", {}).get("mean")
    for c in codecs.values():
        mine = c["uplink_mb_to_target"]["mean"]
        c["traffic_reduction"] = None if mine is None or not base else 1.0 - mine / base
    return {
        "task": task,
        "partition": part,
        "metric_name": done[0]["metric_name"] if done else None,
        "target": target,
        "target_source": "task.target" if fixed is not None else "weakest codec's best (seed mean)",
        "weakest": None if weakest is None else weakest["codec"],
        "baseline": grid.baseline,
        "codecs": list(codecs.values()),
    }


def aggregate(grid: StudyGrid, root: str | Path, *, command: str = "") -> dict[str, Any]:
    """Everything ``results.json`` holds: per-group tables, every cell's numbers, command and machine."""
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
        "status": {s: sum(r["status"] == s for r in recs) for s in ("done", "failed", "missing")},
        "groups": groups,
        "cells": recs,
    }


# -- writing ------------------------------------------------------------------------------------------------
def _pm(stat: dict[str, Any], fmt: str = ".4f", scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "–"
    text = format(stat["mean"] * scale, fmt)
    return text if stat["std"] is None else f"{text} ± {format(stat['std'] * scale, fmt)}"


def _csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per task × partition × codec (means and stds as separate columns)."""
    rows = []
    for g in results["groups"]:
        for c in g["codecs"]:
            row = {k: g[k] for k in ("task", "partition", "metric_name", "target")}
            row.update({k: c[k] for k in ("codec", "seeds_done", "seeds_failed", "seeds_missing")})
            for key in ("final_metric", "best_metric", "uplink_mb", "uplink_bits_per_param"):
                row[f"{key}_mean"], row[f"{key}_std"] = c[key]["mean"], c[key]["std"]
            row["seeds_reached"] = c["seeds_reached"]
            for key in ("rounds_to_target", "uplink_mb_to_target"):
                row[f"{key}_mean"], row[f"{key}_std"] = c[key]["mean"], c[key]["std"]
            row["traffic_reduction"] = c["traffic_reduction"]
            rows.append(row)
    return rows


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
        "Target = the best metric the weakest codec reaches (seed mean) unless the task fixes one; rounds "
        "and MB to target are means over the seeds that reach it (`reached`); reduction = 1 − MB to target "
        f"/ MB to target of `{results['baseline']}`.",
    ]
    for g in results["groups"]:
        target = "–" if g["target"] is None else f"{g['target']:.4f}"
        out += [
            "",
            f"## {g['task']} / {g['partition']}",
            "",
            f"Metric: {g['metric_name'] or '–'}; target {target} ({g['target_source']}; weakest: "
            f"{g['weakest'] or '–'}).",
            "",
            "| codec | seeds | final | best | uplink MB | bits/param | rounds to target | MB to target "
            "| reached | reduction |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in g["codecs"]:
            n = len(results["seeds"])
            seeds = f"{c['seeds_done']}/{n}" + (f" ({c['seeds_failed']} failed)" if c["seeds_failed"] else "")
            red = c["traffic_reduction"]
            out.append(
                f"| {c['codec']} | {seeds} | {_pm(c['final_metric'])} | {_pm(c['best_metric'])} "
                f"| {_pm(c['uplink_mb'], '.3f')} | {_pm(c['uplink_bits_per_param'], '.3f')} "
                f"| {_pm(c['rounds_to_target'], '.1f')} | {_pm(c['uplink_mb_to_target'], '.3f')} "
                f"| {c['seeds_reached']}/{c['seeds_done']} | {'–' if red is None else f'{100 * red:.1f} %'} |"
            )
        out += ["", f"![{g['task']} {g['partition']}](plots/{g['task']}__{g['partition']}.png)"]
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
    """Aggregate and write ``results.json``, ``results.csv``, ``results.md`` and ``plots/`` under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    results = finite_or_none(aggregate(grid, root, command=command))
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as fh:
        rows = _csv_rows(results)
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["task"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "results.md").write_text(_markdown(results, grid), encoding="utf-8")
    if plots:
        from .plots import plot_groups

        plot_groups(results, root / "plots")
    return results

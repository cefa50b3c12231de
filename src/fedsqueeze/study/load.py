"""Read a study's cell folders: each cell's status, summary numbers and eval curves (:func:`load_cell`), and
where the aggregation ran (:func:`machine_info`). Part of :mod:`.aggregate`."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from .grid import Cell
from .runner import ERROR_FILE, cpu_count, done_summary

__all__ = ["load_cell", "machine_info"]


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
            metric_higher_is_better=bool(summary.get("metric_higher_is_better", True)),
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
            # summaries older than this field were all made on a CPU
            device=summary.get("versions", {}).get("device", "cpu"),
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

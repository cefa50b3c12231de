"""Aggregate a study's cell folders into ``results.{json,csv,md}`` and ``bd_rate.json``.

Per task × partition and codec column (one column per swept rate, see :mod:`.grid`): mean ± std over seeds
(``{"mean", "std", "n"}``; ``std`` needs 2 seeds) of the final and best metric, the uplink, downlink and total
(uplink + downlink) MB, the bits per parameter (``total_bits_per_param``: both directions per trained
parameter per client-round, the headline; ``uplink_bits_per_param``: the LoRA uplink frames per LoRA
parameter, the quantity a codec's ``rate`` targets) and the simulated time (``[network]``, see
:mod:`fedsqueeze.fl.network`).

**Metric direction.** A run's ``summary.json`` says whether its metric is higher-is-better (accuracy) or
lower-is-better (a held-out loss) in ``metric_higher_is_better`` (absent: higher is better); a group takes it
from its finished cells and records it as ``metric_higher_is_better``. Every "best", "weakest", "reaches"
and BD-rate below follows that direction; the differences and spreads are plain ``a − b`` /
``highest − lowest`` of the metric values whatever the direction (for a loss a negative Δ favours ``a``).

**Target.** The target of a task × partition is the best metric the weakest column reaches (the worst
seed-mean best metric: the lowest for accuracy, the highest for a loss), unless the task sets ``target``
(advisable with a rate sweep, whose lowest rate is often the weakest column). For every run the rounds,
cumulative uplink / downlink / total bytes and the simulated time until the held-out metric first reaches
the target (``>=`` it, or ``<=`` it for a loss) are read from its ``metrics.jsonl``; means are over the
seeds that reach it. The traffic reductions are against the study's baseline column
(dense fp32 uplink; with the default identity downlink, dense fp32 both ways):
``traffic_reduction_total = 1 − total_bytes_to_target(codec) / total_bytes_to_target(baseline)`` is the
headline, ``traffic_reduction`` (its historical name) and ``traffic_reduction_uplink`` the same on the
uplink alone.

**Rate curves and BD-rate.** Each family (``[[codecs]]`` entry) is a curve of its columns' seed means:
x the bits per parameter (total, and uplink), y the final or best metric. ``bd_rate.json`` holds one row per
task × partition × metric (``final``/``best``) × rate basis (``total``/``uplink``) × reference family
(``study.bd_references``) × other family, from :func:`fedsqueeze.analysis.bd_rate.compare` (pchip; a
single-point family, e.g. a fixed-rate codec or dense fp32, compares by the rate ratio at its accuracy;
a lower-is-better metric is negated inside, and the row's ``metric_higher_is_better`` says which it was).

**Seed spread.** For each pair of columns at the same swept rate, and for each pair of unswept columns (each
at its own fixed or default rate), the difference of the mean final metrics is said to exceed the seed spread
when ``|Δmean| > 2·sqrt(std_a²/n_a + std_b²/n_b)``: about two standard errors of the difference. It needs at
least 2 finished seeds on both sides; with so few seeds it is a screen, not a significance test.
:func:`paired_differences` compares the same pairs seed by seed (columns run with one seed share its
sampling, partition and initial state), which cancels the part of the spread the seed itself causes.

**Modules.** This module is the entry point (:func:`aggregate`, :func:`write_results`) and re-exports the
names other code uses; the work is in :mod:`.load` (cell folders), :mod:`.stats` (the statistics above and
the BD-rate rows) and :mod:`.report` (``results.csv`` rows and ``results.md``). ``docs/study.md`` lists
the fields of ``results.json`` and ``bd_rate.json``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..strict_json import finite_or_none
from .grid import StudyGrid
from .load import load_cell, machine_info
from .report import bd_text, csv_rows, markdown
from .stats import (
    BASES,
    BD_METHOD,
    METRICS,
    bd_rows,
    codec_spread,
    family_curves,
    group_stats,
    paired_differences,
    reach_target,
    seed_differences,
)

__all__ = [
    "BASES",
    "BD_METHOD",
    "METRICS",
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


def aggregate(grid: StudyGrid, root: str | Path, *, command: str = "") -> dict[str, Any]:
    """Everything ``results.json`` holds: per-group tables, curves, BD-rates, every cell's numbers, command
    and machine."""
    cells = grid.cells()
    recs = [load_cell(c, root) for c in cells]
    groups = [
        group_stats(
            grid, t.name, p.label, [r for r in recs if r["task"] == t.name and r["partition"] == p.label]
        )
        for t in grid.tasks
        for p in grid.partitions
    ]
    return {
        "study": grid.name,
        "command": command,
        "machine": machine_info(),
        "run_platforms": sorted({r["platform"] for r in recs if r.get("platform")}),
        "run_devices": sorted({r["device"] for r in recs if r.get("device")}),
        "baseline": grid.baseline,
        "seeds": list(grid.seeds),
        "rates": list(grid.rates),
        "bd_references": list(grid.references()),
        "status": {s: sum(r["status"] == s for r in recs) for s in ("done", "failed", "missing")},
        "groups": groups,
        "bd_rate": bd_rows(grid, groups),
        "cells": recs,
    }


def write_results(grid: StudyGrid, root: str | Path, *, command: str = "", plots: bool = True) -> dict:
    """Aggregate and write ``results.json``, ``results.csv``, ``results.md``, ``bd_rate.json`` and ``plots/``
    under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    results = finite_or_none(aggregate(grid, root, command=command))
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (root / "bd_rate.json").write_text(json.dumps(results["bd_rate"], indent=1) + "\n", encoding="utf-8")
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as fh:
        rows = csv_rows(results)
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["task"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "results.md").write_text(markdown(results, grid), encoding="utf-8")
    if plots:
        from .plots import plot_groups, plot_rate_curves

        plot_groups(results, root / "plots")
        plot_rate_curves(results, root / "plots")
    return results

"""Run the cells of a study: one :func:`fedsqueeze.fl.loop.run` per cell, resumable, failures recorded.

A cell whose ``summary.json`` exists (made with the cell's config) is skipped; an interrupted one continues
from its checkpoint (the loop's ``resume``); a failing one leaves ``error.txt`` (the traceback) and the study
goes on. A finished cell's checkpoint is deleted unless asked to keep it. Cells that share a
model, data and seed (they differ only in codec) share one built workload, which saves the model load and
tokenisation per cell; the workload is a pure function of its inputs, so results are unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from .._extras import require
from .._host import cpu_count
from .grid import Cell

__all__ = ["CellResult", "cpu_count", "done_summary", "group_cells", "run_cell", "run_cells"]

ERROR_FILE = "error.txt"


@dataclasses.dataclass(frozen=True)
class CellResult:
    """What happened to one cell: ``status`` is ``done``, ``skipped`` (already done) or ``failed``."""

    id: str
    status: str
    wall_s: float = 0.0
    error: str | None = None
    metric: float | None = None


def _workload_key(cell: Cell) -> tuple[Any, ...]:
    cfg = cell.config
    return (cfg.model, cfg.data, cfg.fl.seed)


def group_cells(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells grouped by workload (model, data, seed), groups in first-seen order."""
    groups: dict[tuple[Any, ...], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(_workload_key(cell), []).append(cell)
    return list(groups.values())


def spread_groups(groups: Sequence[list[Cell]], jobs: int) -> list[list[Cell]]:
    """``groups`` split (largest first, in halves) until there are ``jobs`` of them or each is one cell.

    A group shares one workload build (seconds), so fewer groups than processes would leave processes idle for
    whole cells (minutes): ``--jobs 2`` over two cells of one seed runs them side by side, not one after the
    other in one process.
    """
    out = [list(g) for g in groups]
    while len(out) < jobs and any(len(g) > 1 for g in out):
        i = max(range(len(out)), key=lambda k: len(out[k]))
        half = (len(out[i]) + 1) // 2
        out[i : i + 1] = [out[i][:half], out[i][half:]]
    return out


class _WorkloadCache:
    """The last built workload (one at a time: a real model takes hundreds of MB)."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.workload: Any = None

    def get(self, cell: Cell) -> Any:
        key = _workload_key(cell)
        if key != self.key:
            from ..fl.loop import build_workload  # the loop's own builder: toy or the real models

            self.key, self.workload = None, None  # free the old one before loading the next
            self.workload = build_workload(cell.config)
            self.key = key
        return self.workload


def run_cell(
    cell: Cell,
    root: str | Path,
    *,
    cache: _WorkloadCache | None = None,
    keep_checkpoint: bool = False,
    progress: bool = False,
) -> CellResult:
    """Run one cell into ``cell.out_dir(root)`` unless it is done; never raises for a failing run.

    A cell is done when its ``summary.json`` exists and holds the cell's config (keys added to the config
    classes since are ignored). ``progress`` shows the run's per-round bar.
    """
    from ..fl.loop import run

    out = cell.out_dir(root)
    summary = done_summary(cell, root)
    if summary is not None:
        return CellResult(cell.id, "skipped", metric=summary.get("final_metric"))
    # no summary, or one made with another config (the study file changed): run the cell (again)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", ERROR_FILE):
        (out / stale).unlink(missing_ok=True)
    (out / "cell.json").write_text(
        json.dumps({"id": cell.id, "config": cell.config.to_dict()}, indent=2) + "\n", encoding="utf-8"
    )
    t0 = time.perf_counter()
    try:
        workload = (cache or _WorkloadCache()).get(cell)
        summary = run(cell.config, out, resume=True, workload=workload, progress=progress)
    except Exception:  # a failing cell is recorded, not fatal (KeyboardInterrupt still stops the study)
        text = traceback.format_exc()
        (out / ERROR_FILE).write_text(f"cell {cell.id}\n{text}", encoding="utf-8")
        last = text.strip().splitlines()[-1]
        return CellResult(cell.id, "failed", time.perf_counter() - t0, error=last)
    if not keep_checkpoint:  # the finished run is in metrics.jsonl/summary.json; the state is MBs per cell
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return CellResult(cell.id, "done", time.perf_counter() - t0, metric=summary.get("final_metric"))


def done_summary(cell: Cell, root: str | Path) -> dict[str, Any] | None:
    """The cell's ``summary.json`` if it exists and was made with the cell's config, else ``None``."""
    try:
        summary = json.loads((cell.out_dir(root) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    saved = summary.get("config", {})
    return summary if not cell.config.differences(saved, except_rounds=False) else None


class _Reporter:
    """One rich line per cell: ``cell k/N  id  status  elapsed``."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()
        self.console: Any = None
        if enabled:
            require("rich", "cli", "the study's progress lines")
            from rich.console import Console

            self.console = Console(file=sys.stderr, highlight=False)

    def line(self, k: int, res: CellResult) -> None:
        if not self.enabled:
            return
        style = {"done": "green", "skipped": "dim", "failed": "bold red"}[res.status]
        metric = "" if res.metric is None else f"  metric {res.metric:.4f}"
        err = f"  {res.error}" if res.error else ""
        total = time.perf_counter() - self.t0
        self.console.print(
            f"cell {k}/{self.total}  {res.id}  [{style}]{res.status}[/{style}]  {res.wall_s:.1f} s"
            f"{metric}{err}  (study {total / 60:.1f} min)",
            markup=True,
        )


def _run_group(cells: list[Cell], root: str, keep_checkpoint: bool, threads: int) -> list[CellResult]:
    """Worker-process entry: pin the thread count, then run a group of cells on one shared workload."""
    os.environ["FEDSQUEEZE_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    cache = _WorkloadCache()
    return [run_cell(c, root, cache=cache, keep_checkpoint=keep_checkpoint) for c in cells]


def run_cells(
    cells: Sequence[Cell],
    root: str | Path,
    *,
    jobs: int = 1,
    progress: bool = True,
    keep_checkpoint: bool = False,
) -> list[CellResult]:
    """Run ``cells`` (grouped by shared workload) in ``jobs`` processes; results in ``cells`` order.

    With ``jobs > 1`` each process uses ``cpus // jobs`` torch threads (``FEDSQUEEZE_THREADS`` if set is
    split the same way), so the processes do not oversubscribe the machine.
    """
    groups = spread_groups(group_cells(cells), jobs)  # unchanged for jobs <= 1
    order = {c.id: i for i, c in enumerate(c for g in groups for c in g)}
    report = _Reporter(len(cells), progress)
    results: dict[str, CellResult] = {}
    done = 0
    if jobs <= 1:
        _configure_threads()
        cache = _WorkloadCache()
        for group in groups:
            for cell in group:
                res = run_cell(cell, root, cache=cache, keep_checkpoint=keep_checkpoint, progress=progress)
                results[cell.id] = res
                done += 1
                report.line(done, res)
    else:
        total_threads = int(os.environ.get("FEDSQUEEZE_THREADS") or cpu_count())
        threads = max(1, total_threads // jobs)
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch thread pools
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run_group, g, str(root), keep_checkpoint, threads) for g in groups]
            for fut in as_completed(futures):
                for res in fut.result():
                    results[res.id] = res
                    done += 1
                    report.line(done, res)
    return sorted(results.values(), key=lambda r: order[r.id])


def _configure_threads() -> None:
    try:
        from ..models.workload import configure_threads
    except ImportError:  # the ML side is optional for the toy workload
        return
    configure_threads()

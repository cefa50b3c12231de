"""Run a reproduction study: a grid of runs (task × partition × codec × seed), then tables and plots.

CONFIG is a study TOML file or the name of a packaged grid (default: "default", the CPU-sized grid;
--full: "full", every task and codec, 3 seeds). Each cell goes to OUT/<task>/<partition>/<codec>/seed<k>/;
cells whose summary.json holds the cell's config are skipped (rerunning resumes; a changed cell reruns), a
failing cell leaves error.txt. Then OUT/results.{json,csv,md}, OUT/bd_rate.json and OUT/plots/ (accuracy
against traffic, accuracy-rate curves). `[study] rates = [...]` sweeps codecs over target rates.
  fedsqueeze study --dry-run                       # list the default grid's cells and a time estimate
  fedsqueeze study default --only 'minilm-rt/iid/*'
  fedsqueeze study --full --jobs 2 --out runs/study/full
  fedsqueeze study --aggregate-only                # rebuild the tables and plots from the cell folders
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "main", "resolve_study"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="study TOML file or packaged grid name")
    parser.add_argument("--full", action="store_true", help='the full grid (CONFIG "full")')
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/study/NAME)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="GLOB", help="only cells whose id matches; repeatable"
    )
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="cells in parallel processes")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and a time estimate")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild results from the folders")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep finished cells' checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress lines")


def resolve_study(name: str) -> Path:
    """A study file path from a path or the name of a packaged grid (see ``study_names``)."""
    from ..errors import ConfigError
    from ..study.grid import study_names, study_path

    if Path(name).is_file():
        return Path(name)
    if name in study_names():
        return study_path(name)
    raise ConfigError(f"study {name!r} not found (a file, or one of: {', '.join(study_names()) or 'none'})")


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..study.aggregate import write_results
    from ..study.grid import load_study
    from ..study.runner import done_summary, run_cells

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    if args.full and args.config is not None:
        raise ConfigError("give either CONFIG or --full, not both")
    given = "full" if args.full else args.config or "default"
    path = resolve_study(given)
    shown = str(path) if Path(given).is_file() else given  # a packaged grid by its name
    grid = load_study(path)
    root = Path(args.out) if args.out else grid.default_out()
    cells = grid.cells()
    if args.only:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.id, pat) for pat in args.only)]
        if not cells:
            raise ConfigError(f"--only {' '.join(args.only)} matches no cell of {path}")
    command = " ".join(
        ["fedsqueeze", "study", shlex.quote(shown), "--out", shlex.quote(str(root))]
        + [f"--only {shlex.quote(p)}" for p in args.only]
        + ([f"--jobs {args.jobs}"] if args.jobs > 1 else [])
    )
    if args.dry_run:
        _dry_run(grid, cells, root, filtered=bool(args.only))
        return 0
    if args.aggregate_only and not any(done_summary(c, root) is not None for c in cells):
        raise ConfigError(
            f"--aggregate-only: no finished cell of study {grid.name!r} in {root}; run the study first "
            "(drop --aggregate-only) or point --out at its folder"
        )
    if not args.aggregate_only:
        results = run_cells(
            cells, root, jobs=args.jobs, progress=not args.no_progress, keep_checkpoint=args.keep_checkpoints
        )
        failed = [r for r in results if r.status == "failed"]
        if failed:
            print(f"{len(failed)} cell(s) failed; see their error.txt:", file=sys.stderr)
            for r in failed:
                print(f"  {r.id}: {r.error}", file=sys.stderr)
    res = write_results(grid, root, command=command)
    st = res["status"]
    print(
        f"study {grid.name}: {st['done']} done, {st['failed']} failed, {st['missing']} missing -> "
        f"{root / 'results.md'}"
    )
    return 0


def _dry_run(grid: Any, cells: list[Any], root: Path, *, filtered: bool) -> None:
    """Print the cells, each with ``done`` or its estimated time, and the total.

    A task with finished cells in ``root`` is estimated from their measured mean wall time (the machine
    that ran them, as loaded as it was); a task without any from its nominal ``timing`` (an idle machine).
    """
    from ..study.runner import done_summary, group_cells

    summaries = {c.id: done_summary(c, root) for c in cells}
    measured: dict[str, list[float]] = {}
    for c in cells:
        wall = (summaries[c.id] or {}).get("wall_s")
        if isinstance(wall, int | float) and wall > 0:
            measured.setdefault(c.task, []).append(float(wall))
    width = max((len(c.id) for c in cells), default=0) + 2
    per_task: dict[str, float] = {}
    for group in group_cells(cells):  # the runner's order; a group loads its model once
        loaded = False
        for c in group:
            done = summaries[c.id] is not None
            if done:
                est = 0.0
            elif c.task in measured:
                est = sum(measured[c.task]) / len(measured[c.task])
            else:
                est = c.estimate_s(setup=not loaded)
            loaded = loaded or not done
            per_task[c.task] = per_task.get(c.task, 0.0) + est
            print(f"{c.id:{width}s}{'done' if done else f'~{est:6.0f} s'}")
    print(
        "cell ids are task/partition/column/seed; a column label 'name@rR' is that codec at a target rate of "
        "R bits per parameter, and '-down_X' marks a column whose downlink (broadcast) is X"
    )
    basis = ", ".join(
        f"{t}: mean of {len(measured[t])} finished cells" if t in measured else f"{t}: the task's timing"
        for t in per_task
    )
    print("per task: " + ", ".join(f"{t} {_fmt_s(s)}" for t, s in per_task.items()) + f" ({basis})")
    print(
        f"{len(cells)} cells ({len(grid.tasks)} tasks × {len(grid.partitions)} partitions × "
        f"{len(grid.columns)} codecs × {len(grid.seeds)} seeds{', filtered' if filtered else ''}); "
        f"estimated {_fmt_s(sum(per_task.values()))} left, one job -> {root}"
    )

"""``fedsqueeze bench rd``: arguments and main; its help is the docstring of :mod:`fedsqueeze.bench.rd`."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from ..bench import rd
from ..bench.sources import load_source
from ..out_paths import check_out_dir, check_out_file
from ..strict_json import finite_or_none

__all__ = ["add_arguments", "main"]

__doc__ = rd.__doc__  # the subcommand's help (the dispatcher reads it)


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v > 0 and math.isfinite(v)) for v in vals):
        raise argparse.ArgumentTypeError(f"rates must be positive bits/param, got {text!r}")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        metavar="NAME",
        help="gaussian, laplace, student-t, blocks, file:PATH[#r3/c7] (repeatable; default gaussian, blocks)",
    )
    parser.add_argument(
        "--codec",
        action="append",
        metavar="NAME",
        help="codec NAME or NAME:KEY=VALUE,... (repeatable; default: all registered except cg_fedllm*)",
    )
    parser.add_argument(
        "--rates",
        type=_floats,
        default=list(rd.DEFAULT_RATES),
        metavar="R,R,...",
        help="target bits/param for codecs with a rate knob (default 0.1,0.25,0.5,1,2)",
    )
    parser.add_argument(
        "--d",
        type=int,
        default=None,
        help="vector length of synthetic sources (default 2^20 i.i.d.; blocks 96 x 16,384)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the codecs (default 0)")
    parser.add_argument("--out", default=rd.DEFAULT_OUT, help=f"output folder (default {rd.DEFAULT_OUT})")
    parser.add_argument("--json", default=None, metavar="PATH", help="JSON rows (default OUT/rd.json)")
    parser.add_argument("--plot", default=None, metavar="PATH", help="plot (default OUT/rd.png)")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot")
    parser.add_argument(
        "--predictive",
        action="store_true",
        help="on captured updates (every --source file:CAPTURES, no #selector): measure each codec with and "
        "without predictive coding; the reference of an update of round r is the mean update captured in "
        "round r-1 (rounds >= 2 are measured); rows get predictive, round, client and db_gain_predictive "
        "(default codecs: wf_ecq, flm_topk, topk; no plot)",
    )
    parser.add_argument(
        "--predictor",
        default="auto",
        choices=("auto", "scalar", "rank", "rows", "columns"),
        help="with --predictive: the predictor option of fedsqueeze.Predictive (default auto)",
    )


def _check_codec(text: str, *, inner: bool = False) -> None:
    """Build ``text`` once so unknown names and bad options fail before the sweep; refuse the predictive
    wrapper (it needs a reference: ``--predictive`` wraps each codec itself)."""
    from ..errors import ConfigError

    codec = rd.make_codec(text, None)
    if getattr(codec, "uses_reference", False):
        raise ConfigError(
            f"--codec {text}: the predictive wrapper needs a reference; "
            + (
                "--predictive wraps each codec given itself, name the inner codec"
                if inner
                else "measure it with --predictive --source file:CAPTURES --codec INNER"
            )
        )


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 150))  # piped output: keep the table on one line per row
    if args.predictive:
        return _main_predictive(args, console)
    names = args.source or list(rd.DEFAULT_SOURCES)
    codecs = args.codec or rd.default_codecs()
    for c in codecs:
        _check_codec(c)  # unknown names and bad options fail now, with the list of codecs / a message
    out = Path(args.out)
    json_path = check_out_file(args.json, "--json") if args.json else check_out_dir(out) / "rd.json"
    plot_path = None
    if not args.no_plot:
        plot_path = (
            check_out_file(args.plot, "--plot", example="rd.png")
            if args.plot
            else check_out_dir(out) / "rd.png"
        )
    t_start = time.perf_counter()
    sources = [load_source(n, args.d, args.seed) for n in names]
    n_jobs = len(sources) * len(rd.sweep_jobs(codecs, args.rates))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("R-D sweep", total=n_jobs, last="")
        rows, notes, refs = rd.sweep(
            sources,
            codecs,
            args.rates,
            seed=args.seed,
            on_step=lambda label: bar.update(task, advance=1, last=label),
        )
    rd.print_table(rows, notes, console)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(finite_or_none(rows), indent=1, default=str) + "\n")
    console.print(f"wrote {len(rows)} rows to {json_path}")
    if plot_path is not None:
        from ..bench.rd_plot import plot_rd

        plot_rd(rows, refs, plot_path, max_rate=max(args.rates))
        console.print(f"wrote {plot_path}")
    console.print(f"bench rd finished in {time.perf_counter() - t_start:.1f} s")
    return 1 if any(n.startswith("ERROR") for n in notes) else 0


def _main_predictive(args: argparse.Namespace, console) -> int:
    """``--predictive``: every codec with and without prediction on every captured update of round >= 2."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..bench import rd_predictive
    from ..errors import ConfigError

    names = args.source or []
    if not names or any(not n.startswith("file:") or "#" in n for n in names):
        raise ConfigError(
            "--predictive measures captured updates: give --source file:CAPTURES (a whole file, no #selector)"
        )
    codecs = args.codec or list(rd_predictive.DEFAULT_CODECS)
    for c in codecs:
        _check_codec(c, inner=True)
    out = Path(args.out)
    json_path = check_out_file(args.json, "--json") if args.json else check_out_dir(out) / "rd.json"
    t_start = time.perf_counter()
    per_source: dict[str, list[dict]] = {}
    notes: list[str] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("R-D sweep, predictive", total=None, last="")
        for name in names:
            got, why = rd_predictive.predictive_sweep(
                name,
                codecs,
                args.rates,
                seed=args.seed,
                predictor=args.predictor,
                on_step=lambda label: bar.update(task, advance=1, last=label),
            )
            per_source[name] = got
            notes += why
    rows = [r for got in per_source.values() for r in got]
    for name, got in per_source.items():
        rd_predictive.print_summary(got, [], console, name)
    for n in notes:
        console.print(f"[yellow]note[/]: {n}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(finite_or_none(rows), indent=1, default=str) + "\n")
    console.print(f"wrote {len(rows)} rows to {json_path}")
    console.print(f"bench rd --predictive finished in {time.perf_counter() - t_start:.1f} s")
    return 0

"""``fedsqueeze bench speed``: arguments and main; its help is :mod:`fedsqueeze.bench.speed`."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..bench import speed

__all__ = ["add_arguments", "main"]

__doc__ = speed.__doc__  # the subcommand's help (the dispatcher reads it)


def _sizes(text: str) -> list[int]:
    """``--d``: one vector length or several, comma-separated (``1048576,8388608``)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--d",
        type=_sizes,
        default=[speed.DEFAULT_D],
        metavar="D[,D...]",
        help=f"vector length, or several comma-separated, each timed in turn (default {speed.DEFAULT_D:,})",
    )
    parser.add_argument(
        "--codec",
        action="append",
        metavar="NAME",
        help="codec NAME or NAME:KEY=VALUE,... to time (repeatable; default: all except cg_fedllm*)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per timing; the median is kept (default 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the vector and the codecs (default 0)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed per codec (default 600)"
    )
    parser.add_argument(
        "--memory",
        choices=("both", "alloc", "rss", "off"),
        default="both",
        help="memory figures: allocator-level (slow: traced run), resident set, both (default) or off",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write the rows as JSON to PATH")


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _codec_line(row: dict[str, Any], i: int, n: int, took: float, with_d: bool = False) -> str:
    """The line printed as soon as one codec is measured (the table follows at the end)."""
    from ..fl.console import duration

    head = f"[{i}/{n}] {row['codec']}" + (f" at d={row['d']:,}" if with_d else "")
    if "error" in row:
        return f"{head}: {row['error']}"
    refs = f"(enc+dec)/topk {_fmt(row.get('ratio'))}"
    if "ratio_floor" in row:
        refs += f", /floor {_fmt(row.get('ratio_floor'))}, /peer {_fmt(row.get('ratio_peer'))}"
    return (
        f"{head}: {row['bits_per_param']:.3f} bits/param, encode {row['encode_s']:.4f} s, decode "
        f"{row['decode_s']:.4f} s, {refs}; measured in {duration(took)}"
    )


def _run_child(name: str, args: argparse.Namespace, memory: str) -> dict[str, Any]:
    """One codec at ``args.d`` (a single length) in a fresh process."""
    cfg = json.dumps({"codec": name, "d": args.d, "repeat": args.repeat, "seed": args.seed, "memory": memory})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", speed.CHILD_COMMAND, cfg],
            capture_output=True,
            text=True,
            timeout=args.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"codec": name, "d": args.d, "error": f"timed out after {args.timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"codec": name, "d": args.d, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def _measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Times (+ allocator peaks) in one fresh process, the resident-set figure in another (one ``args.d``)."""
    row = _run_child(name, args, "alloc" if args.memory in ("both", "alloc") else "off")
    if args.memory in ("both", "rss") and "error" not in row:
        rss = _run_child(name, args, "rss")
        if "error" in rss:
            rss = {"rss_peak_bytes": None, "rss_peak_x": None, "rss_method": "failed: " + rss["error"]}
        row.update({k: v for k, v in rss.items() if k.startswith("rss_")})
    return row


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ..bench.rd import default_codecs, make_codec
    from ..errors import ConfigError
    from ..out_paths import check_out_file

    if min(args.d) < 1 or args.repeat < 1:
        raise ConfigError("--d and --repeat must be positive")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ConfigError(f"--timeout must be a positive number of seconds per codec, got {args.timeout:g}")
    if args.json:
        check_out_file(args.json, "--json")
    codecs = args.codec or default_codecs()
    for c in codecs:
        make_codec(c)  # unknown names and bad options fail before any subprocess starts
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    sizes = list(args.d)
    jobs = [(d, name) for d in sizes for name in codecs]
    many = len(sizes) > 1
    rows = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"timing {len(jobs)} codec runs", total=len(jobs))
        for i, (d, name) in enumerate(jobs, 1):
            bar.update(task, description=f"timing {name} ({i}/{len(jobs)}) at d={d:,}")
            t0 = time.perf_counter()
            rows.append(_measure(name, argparse.Namespace(**{**vars(args), "d": d})))
            line = _codec_line(rows[-1], i, len(jobs), time.perf_counter() - t0, with_d=many)
            console.print(line, highlight=False, markup=False, soft_wrap=True)
            bar.advance(task)
    dims = ", ".join(f"{d:,}" for d in sizes)
    table = Table(title=f"codec speed · d = {dims} · median of {args.repeat}", title_justify="left")
    for col in (
        "codec",
        "d",
        "bits/param",
        "encode s",
        "decode s",
        "ns/value",
        "topk s (k)",
        "(enc+dec)/topk",
        "/floor",
        "/peer",
        "enc peak ×",
        "dec peak ×",
        "RSS peak ×",
    ):
        table.add_column(col, justify="left" if col == "codec" else "right")

    def x(v: Any, flag: bool = True) -> str:
        return "-" if v is None else f"{v:.2f}" + ("" if flag else "*")

    peers: dict[str, str] = {}
    for r in rows:
        if "error" in r:
            table.add_row(r["codec"], f"{r['d']:,}", "[red]" + r["error"] + "[/]")
            continue
        if r.get("peer_note") and r["peer_note"] != speed.NO_PEER:
            peers.setdefault(r["codec"], r["peer_note"])
        table.add_row(
            r["codec"],
            f"{r['d']:,}",
            f"{r['bits_per_param']:.3f}",
            f"{r['encode_s']:.4f}",
            f"{r['decode_s']:.4f}",
            _fmt(r.get("ns_per_value"), ".1f"),
            f"{r['topk_s']:.4f} ({r['topk_k']:,})",
            f"{r['ratio']:.2f}",
            x(r.get("ratio_floor")),
            x(r.get("ratio_peer")),
            x(r.get("encode_peak_x"), r.get("peak_exact", True)),
            x(r.get("decode_peak_x"), r.get("peak_exact", True)),
            x(r.get("rss_peak_x")),
        )
    console.print(table)
    console.print(
        "/floor, /peer = (enc+dec) over a reference timed in the same process, interleaved with the codec's "
        "runs: floor = one memory pass over the update (out.copy_(u): one read, one write); peer = the "
        "practitioners' implementation of the same quantizer (quantize + dequantize, no framing), where "
        "installed (floor_s, peer_s in the JSON)."
    )
    for codec, note in peers.items():
        console.print(f"peer of {codec}: {note}", highlight=False, markup=False)
    console.print(
        "peak × = extra memory over the fp32 update (4·d bytes). enc/dec peak: bytes live in torch + numpy "
        "allocations during the call minus before (allocator level, exact; * = upper bound). RSS peak: "
        "resident-set high-water of one encode + decode, fresh process, big blocks mmapped (also sees kernel "
        "scratch outside the allocators)."
    )
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1, default=str) + "\n")
        console.print(f"wrote {path}")
    return 1 if any("error" in r for r in rows) else 0

"""Speed benchmark: encode/decode time and peak memory of each codec beside a torch.topk reference.

Each codec runs in a fresh Python subprocess (no allocator cache or earlier peak from another codec) on the
same i.i.d. Gaussian vector (``--d`` values, float32), on the engine's path: ``encode_with_spec`` of the flat
vector (what the client calls) and :func:`fedsqueeze.codecs.decode_flat` of the frame (what the server calls).
In that process it measures:

1. **Times** (``time.perf_counter``), the median of ``--repeat`` runs each: ``encode``, ``decode`` and one
   ``torch.topk(u.abs(), k)`` on the same vector, with ``k`` the codec's kept count when it reports one
   (``choose_k(d)``), else the count of non-zeros it decoded to, else ``floor(0.02 d)``.
   ``ratio = (encode + decode) / topk``: how many torch.topk calls the codec's round trip costs.
2. **Peak extra memory, allocator level** (``encode_peak_x``, ``decode_peak_x``, max: ``peak_extra_x``):
   the peak of bytes live in torch tensors + numpy arrays (+ Python objects) during one call, minus what was
   live before, over the update's 4·d bytes; torch's allocator timeline from ``torch.profiler`` memory
   events and numpy's from ``tracemalloc``, merged line by line (:mod:`fedsqueeze.bench.memory` documents the
   method and what it cannot see). Deterministic: the same code gives the same figure on any machine.
3. **Resident-set cross-check** (``rss_peak_x``), in a second fresh process: ``VmHWM − VmRSS`` over one
   encode + decode, after the high-water mark is reset (``/proc/self/clear_refs`` ← 5); glibc is told first
   thing (``mallopt``) to serve every block over 128 KiB by ``mmap``, so a freed block leaves the resident
   set at once and a new one is never carved from freed, still-resident heap. It also sees kernel scratch
   that bypasses the two allocators, and page-level effects (untouched ``calloc`` pages are not resident).
   Linux only; elsewhere it is ``None``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "child_main", "main", "measure_codec"]

DEFAULT_D = 8_388_608
_CHILD = "import sys; from fedsqueeze.bench.speed import child_main; child_main(sys.argv[1])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--d", type=int, default=DEFAULT_D, help=f"vector length (default {DEFAULT_D:,})")
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


# -- in the child process ---------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _mmap_big_blocks() -> bool:
    """Ask glibc to ``mmap`` every block over 128 KiB (freed ones then leave the resident set at once)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 17)) and bool(libc.mallopt(m_trim_threshold, 1 << 17))
    except (OSError, AttributeError):
        return False


def _kept(codec, spec) -> tuple[int, str]:
    """k from the codec's own ``choose_k(d)`` (the TopK family), else the 2 % default."""
    d = spec.numel
    choose_k = getattr(codec, "choose_k", None)
    if callable(choose_k):
        k = choose_k(d)
        if 0 < k <= d:
            return int(k), "codec"
    return max(1, math.floor(0.02 * d)), "default 2%"


def _rss_round_trip(codec, flat, spec, seed: int) -> dict[str, Any]:
    """Resident-set peak of one encode + decode (see the module docstring); fields are None off Linux."""
    import gc

    from ..codecs import decode_flat

    gc.collect()
    mmapped = _mmap_big_blocks()  # idempotent; the caller already did it first thing in a fresh process
    if not _reset_peak():
        return {"rss_peak_bytes": None, "rss_peak_x": None, "rss_method": "unavailable (no clear_refs)"}
    rss0 = (_status_kb("VmRSS") or 0) * 1024
    out = decode_flat(codec.fresh().encode_with_spec(flat, spec, seed=seed), spec)
    peak = (_status_kb("VmHWM") or 0) * 1024
    del out
    extra = max(0, peak - rss0)
    return {
        "rss_peak_bytes": extra,
        "rss_peak_x": extra / (4.0 * spec.numel),
        "rss_method": "VmHWM-VmRSS (clear_refs)" + (", mallopt mmap >128KiB" if mmapped else ""),
    }


def _alloc_peaks(codec, flat, spec, seed: int) -> dict[str, Any]:
    """Allocator-level peaks of encode and of decode, separately (:func:`.memory.measure_peak`)."""
    from ..codecs import decode_flat
    from .memory import measure_peak

    ref = 4 * spec.numel
    frame, enc = measure_peak(codec.fresh().encode_with_spec, flat, spec, seed=seed, ref_bytes=ref)
    out, dec = measure_peak(decode_flat, frame, spec, ref_bytes=ref)
    del out
    worst = max(enc, dec, key=lambda m: m.peak_bytes)
    return {
        "encode_peak_x": enc.peak_x,
        "decode_peak_x": dec.peak_x,
        "peak_extra_x": worst.peak_x,
        "peak_extra_bytes": worst.peak_bytes,
        "peak_exact": enc.exact and dec.exact,
        "encode_peak_where": enc.where,
        "decode_peak_where": dec.where,
        "memory_method": "allocator: torch.profiler memory events + tracemalloc, merged per line",
    }


def measure_codec(
    name: str, d: int, *, repeat: int = 3, seed: int = 0, memory: str = "alloc"
) -> dict[str, Any]:
    """Measure one codec in the current process.

    ``memory``: ``"alloc"`` (times, then the allocator-level peaks: tracing does not touch the times),
    ``"off"`` (times only), or ``"rss"``: only the resident-set figure, for a *fresh* process (it calls
    ``mallopt`` before anything else; glibc would otherwise serve big blocks from freed heap that is already
    resident, and the high-water mark would miss them).
    """
    import gc

    import torch

    from ..codecs import decode_flat
    from ..spec import UpdateSpec
    from .rd import make_codec
    from .sources import make_source

    if memory == "rss":
        _mmap_big_blocks()
    codec = make_codec(name)
    small = make_source("gaussian", 4096, seed + 1)  # warm-up: lazy imports and first-call costs
    sspec = UpdateSpec.from_tensors(small)
    decode_flat(codec.fresh().encode_with_spec(sspec.flatten(small), sspec, seed=seed), sspec)
    update = make_source("gaussian", d, seed)
    spec = UpdateSpec.from_tensors(update)
    flat = spec.flatten(update)
    del update
    gc.collect()
    if memory == "rss":
        return {"codec": name, "d": d, **_rss_round_trip(codec, flat, spec, seed)}

    enc, dec = [], []
    for _ in range(repeat):
        c = codec.fresh()
        t0 = time.perf_counter()
        blob = c.encode_with_spec(flat, spec, seed=seed)
        t1 = time.perf_counter()
        out = decode_flat(blob, spec)
        dec.append(time.perf_counter() - t1)
        enc.append(t1 - t0)
    # Entries actually sent, measured from the decoded vector: the fair k for the topk reference.
    nnz = int(torch.count_nonzero(out))
    del out
    k, k_from = _kept(codec, spec)
    if k_from != "codec" and 0 < nnz < spec.numel:
        k, k_from = nnz, "decoded nonzeros"
    tk = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.topk(flat.abs(), k)
        tk.append(time.perf_counter() - t0)
    e, dd, t = statistics.median(enc), statistics.median(dec), statistics.median(tk)
    row: dict[str, Any] = {
        "codec": name,
        "d": d,
        "payload_bytes": len(blob),
        "bits_per_param": 8.0 * len(blob) / d,
        "encode_s": e,
        "decode_s": dd,
        "topk_s": t,
        "topk_k": k,
        "topk_k_from": k_from,
        "ratio": (e + dd) / t if t > 0 else None,
        "repeat": repeat,
        "threads": torch.get_num_threads(),
        "options": codec.options(),
    }
    if memory == "alloc":
        row.update(_alloc_peaks(codec, flat, spec, seed))
    return row


def child_main(arg: str) -> None:
    """Entry point of the per-codec subprocess: one JSON row on the last line of stdout."""
    cfg = json.loads(arg)
    row = measure_codec(
        cfg["codec"], cfg["d"], repeat=cfg["repeat"], seed=cfg["seed"], memory=cfg.get("memory", "alloc")
    )
    print(json.dumps(row, default=str))


# -- in the parent -----------------------------------------------------------------------------------------


def _codec_line(row: dict[str, Any], i: int, n: int, took: float) -> str:
    """The line printed as soon as one codec is measured (the table follows at the end)."""
    from ..fl.console import duration

    head = f"[{i}/{n}] {row['codec']}"
    if "error" in row:
        return f"{head}: {row['error']}"
    ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}"
    return (
        f"{head}: {row['bits_per_param']:.3f} bits/param, encode {row['encode_s']:.4f} s, decode "
        f"{row['decode_s']:.4f} s, (enc+dec)/topk {ratio}; measured in {duration(took)}"
    )


def _run_child(name: str, args: argparse.Namespace, memory: str) -> dict[str, Any]:
    cfg = json.dumps({"codec": name, "d": args.d, "repeat": args.repeat, "seed": args.seed, "memory": memory})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, cfg],
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
    """Times (+ allocator peaks) in one fresh process, the resident-set figure in another."""
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

    from ..errors import ConfigError
    from ..out_paths import check_out_file
    from .rd import default_codecs, make_codec

    if args.d < 1 or args.repeat < 1:
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
        console = Console(width=max(console.width, 130))
    rows = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"timing {len(codecs)} codecs at d={args.d:,}", total=len(codecs))
        for i, name in enumerate(codecs, 1):
            bar.update(task, description=f"timing {name} ({i}/{len(codecs)}) at d={args.d:,}")
            t0 = time.perf_counter()
            rows.append(_measure(name, args))
            line = _codec_line(rows[-1], i, len(codecs), time.perf_counter() - t0)
            console.print(line, highlight=False, markup=False, soft_wrap=True)
            bar.advance(task)
    table = Table(title=f"codec speed · d = {args.d:,} · median of {args.repeat}", title_justify="left")
    for col in (
        "codec",
        "bits/param",
        "encode s",
        "decode s",
        "topk s (k)",
        "(enc+dec)/topk",
        "enc peak ×",
        "dec peak ×",
        "RSS peak ×",
    ):
        table.add_column(col, justify="left" if col == "codec" else "right")

    def x(v: Any, flag: bool = True) -> str:
        return "-" if v is None else f"{v:.2f}" + ("" if flag else "*")

    for r in rows:
        if "error" in r:
            table.add_row(r["codec"], "[red]" + r["error"] + "[/]")
            continue
        table.add_row(
            r["codec"],
            f"{r['bits_per_param']:.3f}",
            f"{r['encode_s']:.4f}",
            f"{r['decode_s']:.4f}",
            f"{r['topk_s']:.4f} ({r['topk_k']:,})",
            f"{r['ratio']:.2f}",
            x(r.get("encode_peak_x"), r.get("peak_exact", True)),
            x(r.get("decode_peak_x"), r.get("peak_exact", True)),
            x(r.get("rss_peak_x")),
        )
    console.print(table)
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
